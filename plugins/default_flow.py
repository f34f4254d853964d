"""The measured default vector flow, described once for every host's ``implicit_flow``.

The trainer's default model ``rq-impflow`` (``implicit-transforms train`` with no ``--model``):
``L`` layers, each an optional ActNorm followed by, alternately, a rational-quadratic spline
coupling (masks alternating between couplings) and an ImpFlow block, coupling first. Its
settings are read from the trainer's own tables (:data:`~implicit_transforms.cli.config.
MODEL_DEFAULTS` and :class:`~implicit_transforms.cli.config.TrainConfig`'s field defaults), so
the host recipes and the command line cannot drift apart.

Why this flow (``benchmarks/README.md``, "The trainer's defaults"): on the checkerboard, 2,000
steps on one CPU thread, it reached 5.059 ± 0.004 test bits (entropy 5.00) where four spline
couplings reached 5.129 with 34% more parameters, four ImpFlow blocks 5.376 and four Residual
Flow blocks 5.455. The exact log-det (2-D) and learning rate 2e-3 were chosen in the same
table; events larger than :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` fall back to
the family's stochastic estimator for training. The ImpFlow networks start with near-zero last
layers (:data:`~implicit_transforms.recipes.families.TRAINER_ZERO_INIT`: 5.051 against 5.072
bits at seed 0, 5.061 against 5.089 at seed 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from implicit_transforms.blocks import EXACT_LOGDET_MAX_DIM, BlockOptions
from implicit_transforms.cli.config import MODEL_DEFAULTS, TrainConfig
from implicit_transforms.logdet import ExactLogDet

__all__ = ["DefaultFlow", "default_flow", "impflow_changes"]

_MODEL = "rq-impflow"


@dataclass(frozen=True)
class DefaultFlow:
    """The settings of the default vector flow.

    Attributes:
        layers: number of layers (couplings and ImpFlow blocks together, coupling first).
        hidden: hidden sizes of the ImpFlow networks; the coupling networks are residual nets
            of width ``hidden[0]`` with ``len(hidden)`` blocks.
        bins: spline bins of each coupling.
        tail_bound: the splines act on ``[-B, B]`` (linear tails outside).
        actnorm: an ActNorm layer before every layer.
        coeff: Lipschitz coefficient of the ImpFlow networks.
        activation: activation of the ImpFlow networks.
        lr: the learning rate the benchmark chose for it (Adam).
    """

    layers: int
    hidden: tuple[int, ...]
    bins: int
    tail_bound: float
    actnorm: bool
    coeff: float
    activation: str
    lr: float

    def plan(self) -> list[tuple[str, bool]]:
        """The layer kinds in order: ``("coupling", even_mask)`` or ``("impflow", False)``."""
        return [
            ("coupling", i % 4 == 0) if i % 2 == 0 else ("impflow", False)
            for i in range(self.layers)
        ]


def default_flow(**changes: Any) -> DefaultFlow:
    """The trainer's ``rq-impflow`` settings, with ``changes`` (fields of :class:`DefaultFlow`).

    Example:
        >>> d = default_flow()
        >>> d.layers, d.hidden, d.bins, d.activation
        (4, (64, 64), 8, 'sin')
        >>> [kind for kind, _ in d.plan()]
        ['coupling', 'impflow', 'coupling', 'impflow']
    """
    cfg, model = TrainConfig(), MODEL_DEFAULTS[_MODEL]
    settings = DefaultFlow(
        layers=cfg.blocks,
        hidden=tuple(cfg.hidden),
        bins=cfg.bins,
        tail_bound=cfg.tail_bound,
        actnorm=cfg.actnorm,
        coeff=model["coeff"],
        activation=model["activation"],
        lr=model["lr"],
    )
    names = {f.name for f in dataclasses.fields(DefaultFlow)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; expected some of {sorted(names)}")
    settings = dataclasses.replace(settings, **changes)
    if settings.layers < 2:
        raise ValueError(
            f"layers must be >= 2 (coupling first, then an ImpFlow block), got {settings.layers}"
        )
    return settings


def impflow_changes(
    settings: DefaultFlow,
    features: int,
    options: BlockOptions | None,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """The :class:`~implicit_transforms.blocks.BlockOptions` changes of the recipe's ImpFlow
    blocks: its coefficient and activation, the trainer's ``--zero-init`` default (near-zero
    last layers), and the exact log-det for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` features (as the trainer's
    ``--logdet exact`` default for ``rq-impflow``). What the caller sets, in ``options`` or
    ``changes``, wins (``options`` always sets ``zero_init``: its own value is used)."""
    recipe: dict[str, Any] = {
        "coeff": settings.coeff,
        "activation": settings.activation,
        "zero_init": MODEL_DEFAULTS[_MODEL]["zero_init"],
    }
    if MODEL_DEFAULTS[_MODEL]["logdet"] == "exact" and features <= EXACT_LOGDET_MAX_DIM:
        recipe["logdet_train"] = ExactLogDet()
    if options is not None:
        recipe = {
            k: v for k, v in recipe.items() if k != "zero_init" and getattr(options, k) is None
        }
    return {**recipe, **changes}
