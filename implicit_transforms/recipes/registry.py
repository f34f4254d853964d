r"""The one registry of names: what the strings of the command line and of saved
configurations mean, as components.

A name maps to a component class (solvers), a constructor (log-det estimators) or a model
preset of the trainer; :func:`make_solver` and :func:`make_logdet` build the components from a
name and its settings, and :func:`component_spec` writes a component back as its name and
fields, so a configuration round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from implicit_transforms.lipschitz.activations import ACTIVATIONS
from implicit_transforms.logdet import (
    ExactLogDet,
    Geometric,
    LogDetEstimator,
    PowerSeriesLogDet,
    RouletteLogDet,
)
from implicit_transforms.recipes.families import (
    FAMILIES,
    NETWORK,
    TRAINER_ACTIVATION,
    TRAINER_ZERO_INIT,
)
from implicit_transforms.solvers import Anderson, Broyden, FixedPoint, SolverConfig

__all__ = [
    "ACTIVATION_NAMES",
    "LOGDETS",
    "MODELS",
    "MODEL_PRESETS",
    "NETWORKS",
    "SOLVERS",
    "component_spec",
    "make_logdet",
    "make_solver",
    "solver_from_spec",
    "solver_name",
]

SOLVERS: dict[str, type[SolverConfig]] = {
    "broyden": Broyden,
    "anderson": Anderson,
    "fixed-point": FixedPoint,
}
"""Solver names and their configuration classes."""

LOGDETS = ("roulette", "power-series", "exact")
"""Names of the training log-det estimators (:func:`make_logdet`)."""

ACTIVATION_NAMES = tuple(ACTIVATIONS)
"""Names of the 1-Lipschitz activations."""

NETWORKS = ("mlp", "densenet")
"""Names of the residual networks' architectures (``network=`` of every block): the papers'
chains of spectral layers, or i-DenseNets (:mod:`implicit_transforms.lipschitz.densenet`)."""

MODELS = ("impflow", "resflow", "iresnet", "monotone", "rq-coupling", "rq-impflow")
"""The command line's vector models. Each is a block family, nflows' RQ spline coupling, or
the two alternating."""


def _preset(family: str, **extra: Any) -> dict[str, Any]:
    fam = FAMILIES[family]
    return {
        "coeff": fam.coeff,
        "activation": TRAINER_ACTIVATION,
        "solver": solver_name(fam.solver("raise")),
        "logdet": fam.series,
        "zero_init": TRAINER_ZERO_INIT[family],
        "network": NETWORK,
        **extra,
    }


def solver_name(solver: SolverConfig) -> str:
    """The registry name of a configured solver.

    Args:
        solver: a configured solver of :data:`SOLVERS`.

    Returns:
        Its name.

    Example:
        >>> solver_name(Broyden())
        'broyden'
    """
    for name, cls in SOLVERS.items():
        if type(solver) is cls:
            return name
    raise ValueError(f"no registry name for the solver {type(solver).__name__}")


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "impflow": _preset("impflow"),
    "resflow": _preset("resflow"),
    "iresnet": _preset("iresnet"),
    "monotone": _preset("monotone"),
    "rq-coupling": {},
    # nflows RQ coupling layers alternating with ImpFlow blocks (coupling first). Chosen by
    # measurement as the default model (benchmarks/README.md, "the trainer's defaults"): on the
    # checkerboard, 2 minutes of one CPU thread, the exact 2-D log-det and lr 2e-3 reach 5.05
    # bits where ImpFlow-4 alone reaches 5.35-5.39 and the roulette estimator at lr 1e-3 5.15.
    "rq-impflow": _preset("impflow", logdet="exact", lr=2e-3),
}
"""The command line's per-model settings for the fields left unset. Each is the family's table
entry (:data:`~implicit_transforms.recipes.families.FAMILIES`) with the trainer's activation
(:data:`~implicit_transforms.recipes.families.TRAINER_ACTIVATION`) and the blocks' default
network (:data:`~implicit_transforms.recipes.families.NETWORK`, ``--network``)."""


def make_solver(name: str, **fields: Any) -> SolverConfig:
    """The solver ``name`` configured with ``fields`` (unset ones keep their defaults).

    Args:
        name: one of :data:`SOLVERS`.
        **fields: the solver's configuration fields (``None`` values are left unset).

    Returns:
        The configured solver.

    Example:
        >>> make_solver("anderson", max_iter=50).max_iter
        50
    """
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return SOLVERS[name](**{k: v for k, v in fields.items() if v is not None})


def make_logdet(
    name: str,
    *,
    n_terms: int | None = None,
    n_probes: int | None = None,
    n_exact_terms: int | None = None,
    generator: torch.Generator | None = None,
) -> LogDetEstimator:
    """The training log-det estimator ``name``: ``"exact"``, ``"power-series"`` (truncated,
    ``n_terms``) or ``"roulette"`` (unbiased, ``n_exact_terms`` always-evaluated terms,
    Neumann gradient); ``n_probes`` Hutchinson probes; unset settings take the families'
    defaults.

    Args:
        name: one of :data:`LOGDETS`.
        n_terms: terms of the truncated series.
        n_probes: Hutchinson probes per sample.
        n_exact_terms: terms the roulette series always evaluates.
        generator: randomness of the estimator.

    Returns:
        The estimator.

    Example:
        >>> make_logdet("power-series", n_terms=8).n_terms
        8
    """
    probes = FAMILIES["resflow"].n_probes if n_probes is None else n_probes
    if name == "exact":
        return ExactLogDet()
    if name == "power-series":
        terms = FAMILIES["iresnet"].n_terms if n_terms is None else n_terms
        return PowerSeriesLogDet(terms, probes, generator=generator)
    if name == "roulette":
        exact_terms = FAMILIES["resflow"].n_exact_terms if n_exact_terms is None else n_exact_terms
        return RouletteLogDet(
            Geometric(0.5, exact_terms), probes, gradient="neumann", generator=generator
        )
    raise ValueError(f"logdet must be one of {list(LOGDETS)}, got {name!r}")


def component_spec(component: Any) -> dict[str, Any]:
    """A configured solver as ``{"name": ..., **fields}`` (JSON-ready), the inverse of
    :func:`make_solver`.

    Args:
        component: a configured solver.

    Returns:
        Its registry name and fields.

    Example:
        >>> component_spec(Broyden(max_iter=30))["max_iter"]
        30
    """
    if isinstance(component, SolverConfig):
        return {"name": solver_name(component), **dataclasses.asdict(component)}
    raise TypeError(f"no registry entry for {type(component).__name__}")


def solver_from_spec(spec: Mapping[str, Any]) -> SolverConfig:
    """The inverse of :func:`component_spec` for solvers.

    Args:
        spec: ``{"name": ..., **fields}``.

    Returns:
        The configured solver.

    Example:
        >>> solver_from_spec({"name": "fixed-point", "max_iter": 9}).max_iter
        9
    """
    fields = dict(spec)
    return make_solver(str(fields.pop("name")), **fields)
