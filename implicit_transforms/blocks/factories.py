"""Ready configurations named after their papers, built from an event shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from implicit_transforms.blocks.implicit import ImplicitBlock
from implicit_transforms.blocks.residual import ResidualBlock
from implicit_transforms.lipschitz.networks import LipschitzCNN, LipschitzMLP, LipschitzNet
from implicit_transforms.logdet import Geometric, LogDetEstimator, PowerSeriesLogDet, RouletteLogDet
from implicit_transforms.solvers import Broyden, FixedPoint, Solver

__all__ = ["impflow_block", "iresnet_block", "lipschitz_net", "resflow_block"]


def lipschitz_net(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = (64, 64),
    *,
    coeff: float = 0.97,
    activation: str = "lipswish",
    context_features: int | None = None,
) -> LipschitzNet:
    """A Lipschitz MLP for ``event_shape = D`` or ``(D,)``, a Lipschitz CNN for ``(C, H, W)``.

    ``hidden`` is the list of hidden sizes (MLP) or the number of hidden channels (CNN; a
    sequence uses its first entry).
    """
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if len(shape) == 1:
        sizes = [hidden] if isinstance(hidden, int) else list(hidden)
        return LipschitzMLP(
            shape[0], sizes, coeff=coeff, activation=activation, context_features=context_features
        )
    if len(shape) == 3:
        channels = hidden if isinstance(hidden, int) else int(next(iter(hidden)))
        return LipschitzCNN(
            shape[0],
            channels,
            coeff=coeff,
            activation=activation,
            context_features=context_features,
        )
    raise ValueError(f"event_shape must be (D,) or (C, H, W), got {shape}")


def iresnet_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = (64, 64),
    *,
    coeff: float = 0.9,
    activation: str = "elu",
    context_features: int | None = None,
    n_terms: int = 5,
    n_probes: int = 1,
    solver: Solver | None = None,
    logdet_train: LogDetEstimator | None = None,
    logdet_eval: LogDetEstimator | None = None,
    generator: torch.Generator | None = None,
) -> ResidualBlock:
    """i-ResNet block: ELU network, truncated power series (Hutchinson), fixed-point inverse.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)`` of every layer.
        activation: ``"lipswish"``, ``"sin"`` or ``"elu"``.
        context_features: size of a context that enters as an additive bias, if any.
        n_terms: terms of the truncated power series.
        n_probes: Hutchinson probes per sample in training.
        solver: the root solver (fixed point by default).
        logdet_train: replaces the paper's training estimator (e.g. ``ExactLogDet()``).
        logdet_eval: evaluation estimator (default: exact for at most 64 elements).
        generator: randomness of the default training estimator.
    """
    net = lipschitz_net(
        event_shape, hidden, coeff=coeff, activation=activation, context_features=context_features
    )
    return ResidualBlock(
        net,
        solver=solver or FixedPoint(),
        logdet_train=logdet_train or PowerSeriesLogDet(n_terms, n_probes, generator=generator),
        logdet_eval=logdet_eval,
    )


def resflow_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = (64, 64),
    *,
    coeff: float = 0.97,
    activation: str = "lipswish",
    context_features: int | None = None,
    n_exact_terms: int = 2,
    n_probes: int = 1,
    solver: Solver | None = None,
    logdet_train: LogDetEstimator | None = None,
    logdet_eval: LogDetEstimator | None = None,
    generator: torch.Generator | None = None,
) -> ResidualBlock:
    """Residual Flow block: LipSwish network, unbiased roulette log-det with Neumann gradient.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)`` of every layer.
        activation: ``"lipswish"``, ``"sin"`` or ``"elu"``.
        context_features: size of a context that enters as an additive bias, if any.
        n_exact_terms: roulette terms always evaluated.
        n_probes: Hutchinson probes per sample in training.
        solver: the root solver (fixed point by default).
        logdet_train: replaces the paper's training estimator (e.g. ``ExactLogDet()``).
        logdet_eval: evaluation estimator (default: exact for at most 64 elements).
        generator: randomness of the default training estimator.
    """
    net = lipschitz_net(
        event_shape, hidden, coeff=coeff, activation=activation, context_features=context_features
    )
    return ResidualBlock(
        net,
        solver=solver or FixedPoint(),
        logdet_train=logdet_train
        or RouletteLogDet(
            Geometric(0.5, n_exact_terms), n_probes, gradient="neumann", generator=generator
        ),
        logdet_eval=logdet_eval,
    )


def impflow_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = (64, 64),
    *,
    coeff: float = 0.97,
    activation: str = "lipswish",
    context_features: int | None = None,
    n_exact_terms: int = 2,
    n_probes: int = 1,
    solver: Solver | None = None,
    logdet_train: LogDetEstimator | None = None,
    logdet_eval: LogDetEstimator | None = None,
    generator: torch.Generator | None = None,
) -> ImplicitBlock:
    """ImpFlow block: two LipSwish networks, Broyden in both directions, roulette log-det.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)`` of every layer.
        activation: ``"lipswish"``, ``"sin"`` or ``"elu"``.
        context_features: size of a context that enters as an additive bias, if any.
        n_exact_terms: roulette terms always evaluated.
        n_probes: Hutchinson probes per sample in training.
        solver: the root solver (Broyden by default).
        logdet_train: replaces the paper's training estimator (e.g. ``ExactLogDet()``).
        logdet_eval: evaluation estimator (default: exact for at most 64 elements).
        generator: randomness of the default training estimator.
    """
    nets = [
        lipschitz_net(
            event_shape,
            hidden,
            coeff=coeff,
            activation=activation,
            context_features=context_features,
        )
        for _ in range(2)
    ]
    return ImplicitBlock(
        *nets,
        solver=solver or Broyden(),
        logdet_train=logdet_train
        or RouletteLogDet(
            Geometric(0.5, n_exact_terms), n_probes, gradient="neumann", generator=generator
        ),
        logdet_eval=logdet_eval,
    )
