"""Compatibility module: the guide recipes now live in
:mod:`implicit_transforms.plugins.pyro.guides` and the inverse transforms in
:mod:`implicit_transforms.plugins.pyro.transforms` (all re-exported by
:mod:`implicit_transforms.plugins.pyro`); this module only re-exports them so that existing
imports keep working."""

from implicit_transforms.plugins.pyro.guides import (
    DEFAULT_BLOCKS,
    RECIPE_ACTIVATION,
    AutoFlowStack,
    ConditionalElementwiseAffine,
    ElementwiseAffine,
    Explicit,
    conditional_flow_stack,
    flow_stack,
    recipe_options,
)
from implicit_transforms.plugins.pyro.transforms import (
    ConditionalInverseBlockTransformModule,
    InverseBlockTransformModule,
)

__all__ = [
    "DEFAULT_BLOCKS",
    "RECIPE_ACTIVATION",
    "AutoFlowStack",
    "ConditionalElementwiseAffine",
    "ConditionalInverseBlockTransformModule",
    "ElementwiseAffine",
    "Explicit",
    "InverseBlockTransformModule",
    "conditional_flow_stack",
    "flow_stack",
    "recipe_options",
]
