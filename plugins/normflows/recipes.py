"""Ready-made normflows flows: :func:`implicit_flow`, the measured default vector flow.

Example:
    >>> import torch
    >>> from implicit_transforms.plugins.normflows import implicit_flow
    >>> model = implicit_flow(2)
    >>> model.log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from typing import Any

import normflows as nf
from implicit_transforms.plugins.default_flow import default_flow, impflow_changes
from implicit_transforms.plugins.normflows.layers import BlockFlow
from normflows.flows.base import Flow

from implicit_transforms.blocks import BlockOptions, build_block

__all__ = ["implicit_flow"]


def implicit_flow(
    features: int,
    *,
    layers: int | None = None,
    hidden: tuple[int, ...] | None = None,
    num_bins: int | None = None,
    q0: Any = None,
    options: BlockOptions | None = None,
    **changes: Any,
) -> nf.NormalizingFlow:
    r"""The trainer's default vector flow (``rq-impflow``) as a normflows ``NormalizingFlow``.

    Data to base (normflows' ``inverse`` direction, the order below):
    ``[ActNorm -> RQ coupling -> ActNorm -> ImpFlow] x (layers / 2) -> q0``, with normflows'
    ``CoupledRationalQuadraticSpline`` (linear tails outside ``[-3, 3]``, masks alternating
    between couplings, residual-net conditioners of width ``hidden[0]``) alternating with
    ImpFlow blocks (two sine networks of sizes ``hidden``, Lipschitz coefficient 0.97, Broyden
    both ways, the exact log-det for ``D <= 64``). Defaults come from the trainer's tables
    (``implicit_transforms.plugins.default_flow.default_flow``): 4 layers, ``(64, 64)``,
    8 bins. Why: on the checkerboard it reached 5.059 test bits where four spline couplings
    reached 5.129 and four ImpFlow blocks 5.376 (``benchmarks/README.md``); train it with
    ``forward_kld`` and Adam at 2e-3 on standardised data.

    Unconditional only: normflows' ``ActNorm`` takes no ``context`` keyword, which a
    ``ConditionalNormalizingFlow`` passes to every layer; build a conditional flow from
    :class:`ConditionalImpFlow` and normflows' conditional splines instead.

    Args:
        features: ``D`` (vectors ``(B, D)``).
        layers: couplings and ImpFlow blocks together (>= 2; default 4).
        hidden: hidden sizes of the networks (default ``(64, 64)``).
        num_bins: spline bins (default 8).
        q0: the base distribution (default a standard ``nf.distributions.DiagGaussian``).
        options: :class:`~implicit_transforms.blocks.BlockOptions` of the ImpFlow blocks.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.
    """
    settings = default_flow(
        **{
            k: v
            for k, v in {"layers": layers, "hidden": hidden, "bins": num_bins}.items()
            if v is not None
        }
    )
    if not isinstance(features, int) or features < 2:
        raise ValueError(f"features must be an int >= 2 (couplings split it), got {features!r}")
    block_changes = impflow_changes(settings, features, options, changes)
    data_to_base: list[Flow] = []
    for kind, even in settings.plan():
        if settings.actnorm:
            data_to_base.append(nf.flows.ActNorm(features))
        if kind == "coupling":
            data_to_base.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    features,
                    len(settings.hidden),
                    settings.hidden[0],
                    num_bins=settings.bins,
                    tail_bound=settings.tail_bound,
                    reverse_mask=even,
                )
            )
        else:
            block = build_block(
                "impflow", features, settings.hidden, options=options, **block_changes
            )
            data_to_base.append(BlockFlow(block))
    base = q0 if q0 is not None else nf.distributions.DiagGaussian(features, trainable=False)
    # normflows lists its flows from the base to the data.
    return nf.NormalizingFlow(base, data_to_base[::-1])
