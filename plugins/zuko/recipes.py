"""Ready-made zuko flows: :func:`implicit_flow`, the measured default vector flow.

Example:
    >>> import torch
    >>> from implicit_transforms.plugins.zuko import implicit_flow
    >>> flow = implicit_flow(2)
    >>> flow().log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import zuko
from implicit_transforms.plugins.default_flow import default_flow, impflow_changes
from implicit_transforms.plugins.zuko.transforms import ImpFlow
from torch import Tensor
from zuko.lazy import LazyTransform
from zuko.transforms import DependentTransform, MonotonicAffineTransform, MonotonicRQSTransform

from implicit_transforms.blocks import BlockOptions

__all__ = ["implicit_flow"]


def _elementwise_affine(shift: Tensor, scale: Tensor) -> DependentTransform:
    return DependentTransform(MonotonicAffineTransform(shift, scale), 1)


def implicit_flow(
    features: int,
    context: int = 0,
    *,
    transforms: int | None = None,
    hidden_features: tuple[int, ...] | None = None,
    bins: int | None = None,
    options: BlockOptions | None = None,
    **changes: Any,
) -> zuko.lazy.Flow:
    r"""The trainer's default vector flow (``rq-impflow``) as a zuko ``Flow``.

    Data to base: ``[affine -> RQ coupling -> affine -> ImpFlow] x (transforms / 2) ->
    N(0, I)``: zuko's rational-quadratic spline couplings (``MaskedAutoregressiveTransform``
    with ``passes=2``, splines on ``[-3, 3]``, the order reversed between couplings)
    alternating with ImpFlow blocks (two sine networks of sizes ``hidden_features``, Lipschitz
    coefficient 0.97, Broyden both ways, the exact log-det for ``D <= 64``). zuko has no
    ActNorm; a learnable elementwise affine map (``MonotonicAffineTransform``, starting at the
    identity) stands in its place, so standardise the data first. Defaults come from the
    trainer's tables (``implicit_transforms.plugins.default_flow.default_flow``): 4
    transforms, ``(64, 64)``, 8 bins. Why: on the checkerboard the trainer's version reached
    5.059 test bits where four spline couplings reached 5.129 and four ImpFlow blocks 5.376
    (``benchmarks/README.md``); train it with Adam at 2e-3.

    Args:
        features: ``D`` (vectors ``(*, D)``).
        context: the number of context features (0: none): the couplings' conditioners and
            the ImpFlow networks' bias take it.
        transforms: couplings and ImpFlow blocks together (>= 2; default 4).
        hidden_features: hidden sizes of the networks (default ``(64, 64)``).
        bins: spline bins (default 8).
        options: :class:`~implicit_transforms.blocks.BlockOptions` of the ImpFlow blocks.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.
    """
    settings = default_flow(
        **{
            k: v
            for k, v in {"layers": transforms, "hidden": hidden_features, "bins": bins}.items()
            if v is not None
        }
    )
    if not isinstance(features, int) or features < 2:
        raise ValueError(f"features must be an int >= 2 (couplings split it), got {features!r}")
    block_changes = impflow_changes(settings, features, options, changes)
    order = torch.arange(features)
    lazy: list[LazyTransform] = []
    for kind, even in settings.plan():
        if settings.actnorm:
            lazy.append(
                zuko.lazy.UnconditionalTransform(
                    _elementwise_affine, torch.zeros(features), torch.zeros(features)
                )
            )
        if kind == "coupling":
            lazy.append(
                zuko.flows.MaskedAutoregressiveTransform(
                    features,
                    context,
                    passes=2,
                    order=order if even else order.flip(0),
                    univariate=partial(MonotonicRQSTransform, bound=settings.tail_bound),
                    shapes=[(settings.bins,), (settings.bins,), (settings.bins - 1,)],
                    hidden_features=settings.hidden,
                )
            )
        else:
            lazy.append(
                ImpFlow(features, context, settings.hidden, options=options, **block_changes)
            )
    base = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
    )
    return zuko.lazy.Flow(lazy, base)
