"""Ready-made nflows flows: :func:`implicit_flow`, the measured default vector flow.

Example:
    >>> import torch
    >>> from implicit_transforms.plugins.nflows_flows import implicit_flow
    >>> flow = implicit_flow(2)
    >>> flow.log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from typing import Any

try:
    from nflows.distributions import ConditionalDiagonalNormal, StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import ResidualNet
    from nflows.transforms import (
        ActNorm,
        CompositeTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        Transform,
    )
    from nflows.utils import create_alternating_binary_mask
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.nflows_flows needs nflows: "
        "pip install 'implicit-transforms[nflows]'"
    ) from err
from implicit_transforms.plugins.default_flow import default_flow, impflow_changes
from implicit_transforms.plugins.nflows import BlockTransform
from torch import nn

from implicit_transforms.blocks import BlockOptions, build_block

__all__ = ["implicit_flow"]


def implicit_flow(
    features: int,
    context_features: int | None = None,
    *,
    layers: int | None = None,
    hidden_features: tuple[int, ...] | None = None,
    num_bins: int | None = None,
    options: BlockOptions | None = None,
    **changes: Any,
) -> Flow:
    r"""The trainer's default vector flow (``rq-impflow``) as an nflows ``Flow``.

    Data to noise: ``[ActNorm -> RQ coupling -> ActNorm -> ImpFlow] x (layers / 2) -> N(0, I)``:
    nflows' rational-quadratic spline couplings (linear tails outside ``[-3, 3]``, masks
    alternating between couplings, residual-net conditioners of width ``hidden_features[0]``)
    alternating with ImpFlow blocks (two sine networks of sizes ``hidden_features``, Lipschitz
    coefficient 0.97, Broyden in both directions, the exact log-det for ``D <= 64``).
    Defaults come from the trainer's tables (:func:`~implicit_transforms.plugins.default_flow.
    default_flow`): 4 layers, ``(64, 64)``, 8 bins. Why: on the checkerboard it reached 5.059
    test bits where four spline couplings reached 5.129 and four ImpFlow blocks 5.376
    (``benchmarks/README.md``); train it with Adam at 2e-3 on standardised data.

    Args:
        features: ``D`` (vectors ``(B, D)``).
        context_features: size of a context ``(B, C)`` (the couplings' conditioners, the
            ImpFlow networks' bias and a conditional diagonal Gaussian base), or ``None``.
        layers: couplings and ImpFlow blocks together (even, >= 2; default 4).
        hidden_features: hidden sizes of the networks (default ``(64, 64)``).
        num_bins: spline bins (default 8).
        options: :class:`~implicit_transforms.blocks.BlockOptions` of the ImpFlow blocks.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.

    Returns:
        An nflows ``Flow`` (``log_prob(x, context)``, ``sample(n, context)``).
    """
    settings = default_flow(
        **{
            k: v
            for k, v in {"layers": layers, "hidden": hidden_features, "bins": num_bins}.items()
            if v is not None
        }
    )
    if not isinstance(features, int) or features < 2:
        raise ValueError(f"features must be an int >= 2 (couplings split it), got {features!r}")
    block_changes = impflow_changes(settings, features, options, changes)
    transforms: list[Transform] = []
    for kind, even in settings.plan():
        if settings.actnorm:
            transforms.append(ActNorm(features))
        if kind == "coupling":
            transforms.append(_coupling(features, context_features, settings.hidden, even,
                                        settings.bins, settings.tail_bound))  # fmt: skip
        else:
            block = build_block(
                "impflow",
                features,
                settings.hidden,
                context_features=context_features,
                options=options,
                **block_changes,
            )
            transforms.append(BlockTransform(block))
    if context_features is None:
        return Flow(CompositeTransform(transforms), StandardNormal([features]))
    base = ConditionalDiagonalNormal([features], nn.Linear(context_features, 2 * features))
    return Flow(CompositeTransform(transforms), base)


def _coupling(
    features: int,
    context: int | None,
    hidden: tuple[int, ...],
    even: bool,
    bins: int,
    tail_bound: float,
) -> Transform:
    def net(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(
            in_features, out_features, hidden[0], context_features=context, num_blocks=len(hidden)
        )

    return PiecewiseRationalQuadraticCouplingTransform(
        create_alternating_binary_mask(features, even=even),
        net,
        num_bins=bins,
        tails="linear",
        tail_bound=tail_bound,
    )
