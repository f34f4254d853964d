"""One options object for every way of building a block (factories, nflows, Pyro)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from implicit_transforms.lipschitz.activations import ACTIVATIONS
from implicit_transforms.lipschitz.spectral import check_coeff
from implicit_transforms.logdet import (
    ExactLogDet,
    Geometric,
    LogDetEstimator,
    PowerSeriesLogDet,
    RouletteLogDet,
)
from implicit_transforms.recipes.families import (
    ADJOINT_SOLVER,
    EXACT_LOGDET_TRAIN_MAX_DIM,
    FAMILIES,
    NETWORK,
    Family,
)
from implicit_transforms.recipes.registry import NETWORKS
from implicit_transforms.solvers import OnFailure, Solver
from implicit_transforms.validation import check_instance, check_positive_int, real_scalar

__all__ = [
    "FAMILIES",
    "BlockOptions",
    "BlockSettings",
    "Family",
    "ResolvedOptions",
    "adjoint_for",
    "make_options",
    "training_logdet_doc",
]


def adjoint_for(solver: Solver, on_failure: OnFailure | None = None) -> Solver:
    """The default adjoint solver for a forward ``solver``: Broyden with the forward solver's
    failure policy (or ``on_failure`` when given), so "warn" in the forward pass also warns in
    the backward pass."""
    policy = on_failure or getattr(solver, "on_failure", None) or "raise"
    return ADJOINT_SOLVER.replace(on_failure=policy)


@dataclass(frozen=True)
class ResolvedOptions:
    """Concrete settings of one block (every default filled)."""

    coeff: float
    activation: str
    solver: Solver
    adjoint_solver: Solver
    logdet_train: LogDetEstimator
    logdet_eval: LogDetEstimator | None
    compile: bool = False
    zero_init: bool = False
    network: str = NETWORK


@dataclass(frozen=True)
class BlockOptions:
    """Settings of a block, shared by :func:`~implicit_transforms.blocks.impflow_block`,
    :func:`~implicit_transforms.blocks.resflow_block`,
    :func:`~implicit_transforms.blocks.iresnet_block`, the nflows transforms and the Pyro
    helpers. Every field left ``None`` takes the family's paper default.

    Each setting has one source: ``on_failure`` configures the default solvers only (pass
    ``solver=Broyden(on_failure=...)`` otherwise), and ``n_probes`` / ``n_exact_terms`` /
    ``n_terms`` / ``generator`` configure the default training estimator only; giving both a
    component and a setting of its default is an error, never a silent override.

    Attributes:
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)`` of every layer (iresnet 0.9,
            resflow/impflow 0.97); any real scalar (numpy, 0-d tensor), stored as a float.
        activation: ``"lipswish"``, ``"sin"`` or ``"elu"`` (iresnet ELU, others sine; see
            :data:`FAMILIES` for the measurements behind it), or the concatenated
            ``"clipswish"`` and ``"cpila"`` (``R^n -> R^{2n}``; the next layer is widened).
        solver: root solver of the implicit direction(s) (residual blocks: fixed point;
            impflow: Broyden).
        adjoint_solver: solver of the backward linear systems (default: Broyden with the
            forward solver's failure policy).
        on_failure: failure policy of the default forward and adjoint solvers: ``"raise"``
            (default), ``"warn"`` or ``"ignore"``.
        logdet_train: training log-det estimator. Default: exact (``ExactLogDet``) for events
            of at most :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements
            unless ``n_probes``, ``n_exact_terms``, ``n_terms`` or ``generator`` is given;
            otherwise the family's estimator (iresnet: 5-term power series; others: unbiased
            roulette with Neumann gradient).
        logdet_eval: evaluation log-det estimator (default: exact for events of at most 64
            elements, else ``logdet_train``).
        n_probes: Hutchinson probes per sample of the default training estimator (1).
        n_exact_terms: terms the default roulette estimator always evaluates (2).
        n_terms: terms of the default power series (iresnet, 5).
        generator: randomness of the default training estimator.
        compile: evaluate the networks through ``torch.compile`` (see
            :meth:`~implicit_transforms.lipschitz.LipschitzNet.compile_evaluation`; the first
            calls compile, later ones reuse the code; measured in ``benchmarks/README.md``).
        zero_init: start every network's last layer near zero (its initial weight divided by
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR`), so each block
            starts near the identity plus a shift, as the official Residual Flows and ImpFlow
            code does (default ``False``: the layers' own initialisation).
        network: the residual networks' architecture: ``"mlp"`` (default, the papers'
            chains of spectral layers) or ``"densenet"`` (i-DenseNets,
            :mod:`~implicit_transforms.lipschitz.densenet`: every hidden size is a dense
            layer's growth); any family. With ``activation="clipswish"`` or ``"cpila"`` (the
            concatenated activations) either doubles the next layer's input.
    """

    coeff: float | None = None
    activation: str | None = None
    solver: Solver | None = None
    adjoint_solver: Solver | None = None
    on_failure: OnFailure | None = None
    logdet_train: LogDetEstimator | None = None
    logdet_eval: LogDetEstimator | None = None
    n_probes: int | None = None
    n_exact_terms: int | None = None
    n_terms: int | None = None
    generator: torch.Generator | None = None
    compile: bool = False
    zero_init: bool = False
    network: str | None = None

    def __post_init__(self) -> None:
        if self.coeff is not None:
            # numpy and 0-d torch scalars are numbers too; stored as a float
            coeff = real_scalar(self.coeff, "coeff", "a float in (0, 1)")
            object.__setattr__(self, "coeff", check_coeff(coeff))
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.network is not None and not isinstance(self.network, str):
            raise TypeError(f"network must be a str, got {type(self.network).__name__}")
        if self.network is not None and self.network not in NETWORKS:
            raise ValueError(f"network must be one of {list(NETWORKS)}, got {self.network!r}")
        for name in ("solver", "adjoint_solver", "logdet_train", "logdet_eval"):
            value = getattr(self, name)
            check_instance(value, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        if self.on_failure is not None and self.on_failure not in ("raise", "warn", "ignore"):
            raise ValueError(
                f"on_failure must be 'raise', 'warn' or 'ignore', got {self.on_failure!r}"
            )
        for name in ("n_probes", "n_exact_terms", "n_terms"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_positive_int(value, name))
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be a bool, got {type(self.compile).__name__}")
        if not isinstance(self.zero_init, bool):
            raise TypeError(f"zero_init must be a bool, got {type(self.zero_init).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(self.generator).__name__}"
            )
        if self.on_failure is not None:
            for name in ("solver", "adjoint_solver"):
                given = getattr(self, name)
                policy = getattr(given, "on_failure", None)
                if given is not None and policy != self.on_failure:
                    raise ValueError(
                        f"on_failure={self.on_failure!r} configures the default solvers, but "
                        f"{name} was given with on_failure={policy!r}: set the policy on the "
                        f"{name} you pass (e.g. {name}=Broyden(on_failure={self.on_failure!r}))"
                    )
        if self.logdet_train is not None:
            for name in ("n_probes", "n_exact_terms", "n_terms", "generator"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} configures the default training estimator, but logdet_train "
                        f"was given: configure {type(self.logdet_train).__name__} itself"
                    )

    def replace(self, **changes: Any) -> BlockOptions:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return make_options(self, changes)

    def resolve(
        self, family: str | Family, event_shape: int | Sequence[int] | None = None
    ) -> ResolvedOptions:
        """Fill every unset field with ``family``'s default.

        Args:
            family: a name in :data:`FAMILIES` or a :class:`Family`.
            event_shape: the blocks' event shape; with it, an unset training estimator is
                exact for events of at most
                :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements
                (without it, the family's estimator).
        """
        fam = FAMILIES.get(family) if isinstance(family, str) else family
        if fam is None:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
        policy: OnFailure = self.on_failure or "raise"
        solver = self.solver if self.solver is not None else fam.solver(policy)
        adjoint = (
            self.adjoint_solver
            if self.adjoint_solver is not None
            else adjoint_for(solver, self.on_failure)
        )
        return ResolvedOptions(
            coeff=fam.coeff if self.coeff is None else self.coeff,
            activation=fam.activation if self.activation is None else self.activation,
            solver=solver,
            adjoint_solver=adjoint,
            logdet_train=self._training_estimator(fam, event_shape),
            logdet_eval=self.logdet_eval,
            compile=self.compile,
            zero_init=self.zero_init,
            network=NETWORK if self.network is None else self.network,
        )

    def _training_estimator(
        self, fam: Family, event_shape: int | Sequence[int] | None
    ) -> LogDetEstimator:
        if self.logdet_train is not None:
            return self.logdet_train
        # Small events: the exact log-det costs no more than the estimator (measured), and has
        # no variance. A setting of the estimator means the caller wants the estimator.
        settings = (self.n_probes, self.n_exact_terms, self.n_terms, self.generator)
        if event_shape is not None and all(v is None for v in settings):
            shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
            if math.prod(shape) <= EXACT_LOGDET_TRAIN_MAX_DIM:
                return ExactLogDet()
        probes = fam.n_probes if self.n_probes is None else self.n_probes
        if fam.series == "power-series":
            if self.n_exact_terms is not None:
                raise ValueError(
                    f"n_exact_terms configures the roulette estimator of resflow/impflow; the "
                    f"{fam.name} power series takes n_terms"
                )
            terms = fam.n_terms if self.n_terms is None else self.n_terms
            return PowerSeriesLogDet(terms, probes, generator=self.generator)
        if self.n_terms is not None:
            raise ValueError(
                f"n_terms configures the truncated power series of iresnet; the {fam.name} "
                "roulette estimator takes n_exact_terms"
            )
        exact_terms = fam.n_exact_terms if self.n_exact_terms is None else self.n_exact_terms
        return RouletteLogDet(
            Geometric(0.5, exact_terms), probes, gradient="neumann", generator=self.generator
        )


class BlockSettings(TypedDict, total=False):
    """The keyword form of :class:`BlockOptions` (``build_block(..., coeff=0.9)``): the same
    fields, so type checkers see every keyword an entry point's ``**changes`` accepts."""

    coeff: float
    activation: str
    solver: Solver
    adjoint_solver: Solver
    on_failure: OnFailure
    logdet_train: LogDetEstimator
    logdet_eval: LogDetEstimator
    n_probes: int
    n_exact_terms: int
    n_terms: int
    generator: torch.Generator
    compile: bool
    zero_init: bool
    network: str


_FIELDS = tuple(f.name for f in dataclasses.fields(BlockOptions))


def training_logdet_doc(family: str) -> str:
    """The paragraph every entry point's docstring gives about its training-mode log-det."""
    if FAMILIES[family].series == "power-series":
        kind = "a truncated (biased) power-series estimate"
    else:
        kind = "an unbiased Russian-roulette estimate"
    return f"""

    Training-mode log-det: exact (``ExactLogDet``) for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements, up to which it
    costs no more than the estimator. Larger events get
    {kind}, which changes from call to call: for the exact value
    pass ``logdet_train=ExactLogDet()``, or call ``.eval()`` (exact up to
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` elements unless ``logdet_eval`` is
    given). Giving ``logdet_train`` or a setting of the estimator
    (``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``) keeps that estimator."""


def make_options(options: BlockOptions | None, changes: Mapping[str, Any]) -> BlockOptions:
    """``options`` (or the defaults) with ``changes`` applied; unknown names raise a
    ``TypeError`` listing the valid ones (so a typo is never silently ignored)."""
    if options is not None and not isinstance(options, BlockOptions):
        raise TypeError(f"options must be a BlockOptions, got {type(options).__name__}")
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown block option(s) {', '.join(map(repr, unknown))}; valid options are "
            f"{', '.join(_FIELDS)}"
        )
    base = options if options is not None else BlockOptions()
    return dataclasses.replace(base, **changes)
