"""The assembly layer: every default (:mod:`.families`), every name
(:mod:`.registry`) and the spec a block is built from (:mod:`.spec`), in one place.

The factories, the nflows and Pyro adapters, ``image_flow`` and the command line all read
their defaults and names from here; a new family is one new entry in
:data:`~implicit_transforms.recipes.families.FAMILIES`.
"""

from typing import Any

from implicit_transforms.recipes.families import (
    ADJOINT_SOLVER,
    EVAL_SERIES,
    EXACT_LOGDET_MAX_DIM,
    EXACT_LOGDET_TRAIN_MAX_DIM,
    FACTORY_HIDDEN,
    FAMILIES,
    GUIDE_ACTIVATION,
    GUIDE_INIT_SCALE,
    GUIDE_MIXES,
    IMAGE_ACTIVATION,
    TRAINER_ACTIVATION,
    Family,
    GuideMix,
    helper_hidden,
    recipe_hidden,
    recipe_solver,
)
from implicit_transforms.recipes.registry import (
    LOGDETS,
    MODEL_PRESETS,
    MODELS,
    SOLVERS,
    component_spec,
    make_logdet,
    make_solver,
    solver_from_spec,
    solver_name,
)

__all__ = [
    "ADJOINT_SOLVER",
    "EVAL_SERIES",
    "EXACT_LOGDET_MAX_DIM",
    "EXACT_LOGDET_TRAIN_MAX_DIM",
    "FACTORY_HIDDEN",
    "FAMILIES",
    "GUIDE_ACTIVATION",
    "GUIDE_INIT_SCALE",
    "GUIDE_MIXES",
    "IMAGE_ACTIVATION",
    "LOGDETS",
    "MODELS",
    "MODEL_PRESETS",
    "SOLVERS",
    "TRAINER_ACTIVATION",
    "BlockSpec",
    "Family",
    "GuideMix",
    "component_spec",
    "helper_hidden",
    "make_logdet",
    "make_solver",
    "recipe_hidden",
    "recipe_solver",
    "solver_from_spec",
    "solver_name",
]


def __getattr__(name: str) -> Any:
    # The spec builds blocks, and the blocks read their defaults from this package: the spec
    # is imported on first use so that importing the defaults never imports the blocks.
    if name == "BlockSpec":
        from implicit_transforms.recipes.spec import BlockSpec

        return BlockSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
