"""Shared test registries: the solver zoo and every block configuration the property tests use.

One place to add a solver or a block so that every test module that runs "over all solvers"
or "over all blocks" picks it up; each entry has a readable id so that it fails on its own
line. The test modules take views of these registries (by tag), never copies.

``conftest.py`` puts this folder on ``sys.path``, so test modules import it as ``cases``
under any pytest import mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from implicit_transforms import InvertibleBlock, MonotoneBlock
from implicit_transforms.blocks import (
    impflow_block,
    iresnet_block,
    monotone_block,
    resflow_block,
)
from implicit_transforms.solvers import (
    Anderson,
    Broyden,
    FixedPoint,
    SolverConfig,
    anderson,
    broyden,
    fixed_point,
)

__all__ = [
    "BLOCKS",
    "CTX",
    "GRADIENT_CASES",
    "PROPERTY_CASES",
    "SECOND_DERIVATIVE_CASES",
    "SOLVERS",
    "SOLVER_OBJECTS",
    "BlockCase",
    "round_trip_bound",
    "tagged",
]

# -- the solver zoo ------------------------------------------------------------------------------
SOLVERS = {"fixed_point": fixed_point, "anderson": anderson, "broyden": broyden}
"""Every solver as a pure function ``solve(fn, z0, **options) -> SolverResult``."""

SOLVER_OBJECTS: dict[str, SolverConfig] = {
    "fixed_point": FixedPoint(max_iter=1000),
    "anderson": Anderson(),
    "broyden": Broyden(),
}
"""Every solver as a configured (frozen) solver object, as blocks and ``solve_implicit`` take
them; the plain iteration gets a budget for Lip close to 1."""

# -- blocks --------------------------------------------------------------------------------------
CTX = 2
"""Context features of the conditional cases."""


@dataclass(frozen=True)
class BlockCase:
    """One block configuration: how to build it, its event shape and its context size.

    ``tags`` say which test modules use it: ``property`` (``test_blocks.py``: every property
    test), ``gradients`` (``test_gradients.py``: float32 against float64 gradients through the
    solves), ``second-derivative`` (``test_gradients.py``: double backward).
    """

    factory: Callable[[], InvertibleBlock]
    event: tuple[int, ...]
    context: int | None = None
    tags: frozenset[str] = frozenset({"property"})


_P = frozenset({"property"})
_PD = frozenset({"property", "second-derivative"})
_G = frozenset({"gradients"})
_D = frozenset({"second-derivative"})

BLOCKS: dict[str, BlockCase] = {
    "iresnet-mlp": BlockCase(lambda: iresnet_block(3, [8]), (3,), tags=_P),
    "resflow-mlp": BlockCase(lambda: resflow_block(3, [8]), (3,), tags=_PD),
    "impflow-mlp": BlockCase(lambda: impflow_block(3, [8]), (3,), tags=_PD),
    "resflow-mlp-context": BlockCase(
        lambda: resflow_block(3, [8], context_features=CTX), (3,), CTX, tags=_P
    ),
    "impflow-mlp-context": BlockCase(
        lambda: impflow_block(3, [8], context_features=CTX), (3,), CTX, tags=_P
    ),
    "iresnet-cnn": BlockCase(lambda: iresnet_block((2, 3, 3), 4), (2, 3, 3), tags=_P),
    "resflow-cnn-context": BlockCase(
        lambda: resflow_block((2, 3, 3), 4, context_features=CTX), (2, 3, 3), CTX, tags=_P
    ),
    "impflow-cnn": BlockCase(lambda: impflow_block((2, 3, 3), 4), (2, 3, 3), tags=_P),
    "monotone-mlp": BlockCase(lambda: monotone_block(3, [8]), (3,), tags=_PD),
    "monotone-mlp-context": BlockCase(
        lambda: monotone_block(3, [8], context_features=CTX), (3,), CTX, tags=_P
    ),
    "monotone-cnn-context": BlockCase(
        lambda: monotone_block((2, 3, 3), 4, context_features=CTX), (2, 3, 3), CTX, tags=_P
    ),
    # wider networks at coeff 0.95, so that the adjoint solves of the gradient tests do work
    "resflow-mlp-32": BlockCase(lambda: resflow_block(4, [32], coeff=0.95), (4,), tags=_G),
    "impflow-mlp-32": BlockCase(lambda: impflow_block(4, [32], coeff=0.95), (4,), tags=_G),
    "monotone-mlp-32": BlockCase(lambda: monotone_block(4, [32], coeff=0.95), (4,), tags=_G),
    # the Russian-roulette estimator with its Neumann gradient (not exact: no double backward)
    "resflow-mlp-roulette": BlockCase(
        lambda: resflow_block(3, [8], n_exact_terms=2), (3,), tags=_D
    ),
    # i-DenseNet networks (concatenation weights, CLipSwish / CPila) and a CLipSwish MLP
    "resflow-densenet": BlockCase(
        lambda: resflow_block(3, [6, 6], network="densenet", activation="clipswish"), (3,), tags=_P
    ),
    "impflow-densenet": BlockCase(
        lambda: impflow_block(3, [6, 6], network="densenet", activation="cpila"), (3,), tags=_P
    ),
    "resflow-mlp-clipswish": BlockCase(
        lambda: resflow_block(3, [8], activation="clipswish"), (3,), tags=_P
    ),
    "impflow-densenet-cnn-context": BlockCase(
        lambda: impflow_block(
            (2, 3, 3), [3], network="densenet", activation="clipswish", context_features=CTX
        ),
        (2, 3, 3),
        CTX,
        tags=_P,
    ),
}
"""Every block configuration of the property tests, by readable id."""


def tagged(tag: str) -> dict[str, BlockCase]:
    """The cases of :data:`BLOCKS` carrying ``tag``, in registry order."""
    out = {name: case for name, case in BLOCKS.items() if tag in case.tags}
    if not out:
        raise ValueError(f"tag must be one used in BLOCKS, got {tag!r}")
    return out


PROPERTY_CASES = tagged("property")
"""The blocks every property test of ``test_blocks.py`` runs on."""

GRADIENT_CASES: dict[str, tuple[BlockCase, str]] = {
    "resflow-inverse": (BLOCKS["resflow-mlp-32"], "inverse"),
    "impflow-forward": (BLOCKS["impflow-mlp-32"], "forward"),
    "impflow-inverse": (BLOCKS["impflow-mlp-32"], "inverse"),
    "monotone-forward": (BLOCKS["monotone-mlp-32"], "forward"),
    "monotone-inverse": (BLOCKS["monotone-mlp-32"], "inverse"),
}
"""(block, direction) pairs whose gradients go through a solve (``test_gradients.py``)."""

SECOND_DERIVATIVE_CASES: dict[str, tuple[BlockCase, str]] = {
    "impflow-forward": (BLOCKS["impflow-mlp"], "forward"),
    "resflow-inverse": (BLOCKS["resflow-mlp"], "inverse"),
    "monotone-forward": (BLOCKS["monotone-mlp"], "forward"),
    "monotone-inverse": (BLOCKS["monotone-mlp"], "inverse"),
    "resflow-forward-neumann": (BLOCKS["resflow-mlp-roulette"], "forward"),
}
"""(block, direction) pairs whose graph is not exact: a second derivative must raise."""


def round_trip_bound(
    block: InvertibleBlock, x: torch.Tensor, y: torch.Tensor, tol: float, lip: float
) -> torch.Tensor:
    """Per-sample bound on ``||f^{-1}(f(x)) - x||`` when every solve stops at
    ``||F|| <= tol (1 + ||z||)`` and every network has ``Lip <= lip``.

    A residual or implicit block: ``tol (1 + ||x||) / (1 - lip)`` (the error of the last solve,
    ``||F|| / (1 - Lip)``). A :class:`~implicit_transforms.MonotoneBlock` solves for
    ``w = (x + y) / sqrt(2)`` in both directions and outputs ``sqrt(2) w`` minus its input, so
    each direction is off by ``sqrt(2) tol (1 + ||w||) / (1 - lip)``, and the inverse map
    (Lipschitz ``(1 + lip) / (1 - lip)``) carries the forward's error back.
    """
    x, y = x.detach().flatten(1), y.detach().flatten(1)
    if isinstance(block, MonotoneBlock):
        w_norm = ((x + y) / math.sqrt(2)).norm(dim=1)
        one_way = math.sqrt(2) * tol * (1 + w_norm) / (1 - lip)
        return one_way * (1 + (1 + lip) / (1 - lip))
    return tol * (1 + x.norm(dim=1)) / (1 - lip)
