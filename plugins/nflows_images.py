r"""Multiscale image flows as nflows models, built from the residual and implicit blocks.

:func:`image_flow` returns an nflows ``Flow`` on images ``(B, C, H, W)`` with values in
``[0, 1]`` (dequantised pixels, see :mod:`implicit_transforms.images`), mapping data to noise
as in the Residual Flow and ImpFlow image models:

``logit -> level_1 -> split -> level_2 -> split -> ... -> level_S [-> flatten -> FC blocks]``

where every level starts with a squeeze (space-to-depth, ``C x H x W -> 4C x H/2 x W/2``; the
first level only with ``squeeze_first``) followed by ``blocks_per_level`` times
``ActNorm -> block``, and after every level but the last half of the channels are factored
out (they go to the base distribution directly; nflows' ``MultiscaleCompositeTransform``).
Every piece is an nflows ``Transform``: a level can be replaced by any nflows layers
(``level_transform``), e.g. Glow-style coupling layers, and the whole flow composes with nflows'
own transforms.

Example:
    >>> import torch
    >>> flow = image_flow((1, 4, 4), "resflow", levels=2, blocks_per_level=1, hidden_channels=8)
    >>> flow.log_prob(torch.rand(3, 1, 4, 4)).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from implicit_transforms.plugins.nflows import BlockTransform
from nflows.distributions import ConditionalDiagonalNormal, StandardNormal
from nflows.distributions.base import Distribution
from nflows.flows import Flow
from nflows.transforms import (
    ActNorm,
    CompositeTransform,
    MultiscaleCompositeTransform,
    SqueezeTransform,
    Transform,
)
from torch import Tensor, nn

from implicit_transforms.blocks import BlockOptions, build_block, make_options
from implicit_transforms.images.preprocess import check_alpha, logit_forward, logit_inverse

__all__ = [
    "FlattenTransform",
    "LevelBuilder",
    "LogitTransform",
    "image_flow",
    "initialize_actnorm",
    "level_shapes",
]

LevelBuilder = Callable[[int, tuple[int, int, int]], "Transform | None"]
"""``(level, (C, H, W)) -> Transform | None``: the steps of one level (0-based), acting on
``(B, C, H, W)`` after the level's squeeze and keeping that shape; ``None`` keeps the default
blocks for that level."""


class LogitTransform(Transform):
    r"""``y = logit(alpha + (1 - 2 alpha) x)`` on data in ``[0, 1]`` (data to noise), with its
    log-det (see :func:`~implicit_transforms.images.logit_forward`).

    Args:
        alpha: margin in ``[0, 1/2)`` (default 0.05, as in Residual Flows for images).
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(logit(alpha + (1 - 2 alpha) x), log-det (B,))``; ``x`` must lie in ``[0, 1]`` (up to
        the margin ``alpha / (1 - 2 alpha)`` the inverse can reach)."""
        # The map is a bijection from (-a / (1 - 2a), (1 - a) / (1 - 2a)) onto R, slightly
        # wider than [0, 1] (the flow's own samples may land in the margin).
        lo, hi = -self.alpha / (1 - 2 * self.alpha), (1 - self.alpha) / (1 - 2 * self.alpha)
        if inputs.numel() and (bool(inputs.min() <= lo) or bool(inputs.max() >= hi)):
            raise ValueError(
                "LogitTransform: inputs must lie in [0, 1] (dequantised pixels (k + u) / L), got "
                f"values in [{float(inputs.min()):.4g}, {float(inputs.max()):.4g}]"
            )
        return logit_forward(inputs, self.alpha)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``((sigmoid(y) - alpha) / (1 - 2 alpha), log-det (B,))``."""
        return logit_inverse(inputs, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class FlattenTransform(Transform):
    """``(B, *shape) -> (B, prod(shape))`` and back; log-det 0.

    Args:
        shape: the event shape, e.g. ``(C, H, W)``.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Flatten the event dimensions."""
        if tuple(inputs.shape[1:]) != self.shape:
            raise ValueError(
                f"FlattenTransform expects (B, {', '.join(map(str, self.shape))}), got "
                f"{tuple(inputs.shape)}"
            )
        return inputs.reshape(inputs.shape[0], -1), inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Restore the event shape."""
        return inputs.reshape(inputs.shape[0], *self.shape), inputs.new_zeros(inputs.shape[0])


def level_shapes(
    shape: Sequence[int], levels: int, *, squeeze_first: bool = True
) -> list[tuple[int, int, int]]:
    """The ``(C, H, W)`` each level of :func:`image_flow` acts on (after its squeeze).

    Raises a ``ValueError`` naming the argument if the image cannot be squeezed and split
    ``levels`` times (``H`` and ``W`` must be divisible by 2 for every squeeze, and a factored
    out level needs at least 2 channels).

    Example:
        >>> level_shapes((1, 28, 28), 2)
        [(4, 14, 14), (8, 7, 7)]
    """
    if len(tuple(shape)) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ValueError(f"shape must be (C, H, W) of positive ints, got {tuple(shape)!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    c, h, w = shape
    out: list[tuple[int, int, int]] = []
    for level in range(levels):
        if level > 0 or squeeze_first:
            if h % 2 or w % 2:
                raise ValueError(
                    f"image_flow: shape {tuple(shape)} cannot be squeezed for level {level + 1} "
                    f"of {levels} (spatial size {h}x{w} is not even); use fewer levels or "
                    "another image size"
                )
            c, h, w = 4 * c, h // 2, w // 2
        out.append((c, h, w))
        if level < levels - 1:
            if c < 2:
                raise ValueError(f"image_flow: level {level + 1} has {c} channel(s), too few "
                                 "to factor out half")  # fmt: skip
            c = c // 2
    return out


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def image_flow(
    shape: Sequence[int],
    family: str = "impflow",
    *,
    levels: int = 2,
    blocks_per_level: int = 2,
    hidden_channels: int = 32,
    fc_blocks: int = 0,
    fc_hidden: Sequence[int] = (64, 64),
    activation: str = "lipswish",
    actnorm: bool = True,
    squeeze_first: bool = True,
    logit_alpha: float = 0.05,
    context_features: int | None = None,
    level_transform: LevelBuilder | None = None,
    options: BlockOptions | None = None,
    **changes: Any,
) -> Flow:
    r"""A multiscale image flow (nflows ``Flow``) of residual or implicit blocks.

    The flow models ``x in [0, 1]^{C x H x W}`` (dequantised pixels ``(k + u) / L``):
    ``log p(x) = log N(f(x)) + log|det df/dx|`` with ``f`` the composition described in the
    module docstring, the logit transform's log-det included. Images go in as
    ``(B, C, H, W)``; the noise is flat, ``(B, C H W)`` (nflows' multiscale convention).

    Args:
        shape: ``(C, H, W)``.
        family: ``"impflow"``, ``"resflow"`` or ``"iresnet"``.
        levels: number of scales; ``H`` and ``W`` must be divisible by ``2^levels``
            (``2^(levels-1)`` without ``squeeze_first``).
        blocks_per_level: ``ActNorm -> block`` steps per level.
        hidden_channels: hidden channels of each block's Lipschitz CNN
            (``conv3x3 -> conv1x1 -> conv3x3``).
        fc_blocks: fully connected blocks after the last level (on its flattened output).
        fc_hidden: hidden sizes of their Lipschitz MLPs.
        activation: activation of every Lipschitz network (LipSwish, as the Residual Flows
            paper uses for images); an ``activation`` in ``options`` or ``changes`` wins.
        actnorm: an ActNorm layer (data-dependent initialisation) before every block.
        squeeze_first: squeeze before the first level too (recommended for 1-channel images).
        logit_alpha: margin of the logit transform.
        context_features: size of a context vector (e.g. one-hot labels), or ``None``. The
            blocks take it as an additive bias and the base is a diagonal normal whose mean and
            log-scale are linear in the context.
        level_transform: ``(level, (C, H, W)) -> Transform | None`` replacing the default
            steps of a level (0-based) by any nflows layers (e.g. coupling layers); returning
            ``None`` keeps the default blocks for that level.
        options: :class:`~implicit_transforms.blocks.BlockOptions` of every block.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.

    Returns:
        An nflows ``Flow`` whose ``log_prob`` takes ``(B, C, H, W)`` and whose ``sample(n)``
        returns ``(n, C, H, W)``.

    References:
        Chen et al., "Residual Flows for Invertible Generative Modeling", 2019 (image
        architecture); Lu et al., "Implicit Normalizing Flows", 2021; Dinh et al., "Density
        estimation using Real NVP", 2017 (multiscale, logit).
    """
    shapes = level_shapes(shape, levels, squeeze_first=squeeze_first)
    _check_positive("blocks_per_level", blocks_per_level)
    _check_positive("hidden_channels", hidden_channels)
    _check_positive("fc_blocks", fc_blocks, 0)
    if context_features is not None:
        _check_positive("context_features", context_features)
    opts = make_options(options, changes)
    if opts.activation is None:
        opts = opts.replace(activation=activation)
    image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))

    def default_level(level: int, lshape: tuple[int, int, int]) -> Transform:
        steps: list[Transform] = []
        for _ in range(blocks_per_level):
            if actnorm:
                steps.append(ActNorm(lshape[0]))
            block = build_block(family, lshape, hidden_channels,
                                context_features=context_features, options=opts)  # fmt: skip
            steps.append(BlockTransform(block))
        return CompositeTransform(steps)

    def make_level(level: int, lshape: tuple[int, int, int]) -> Transform:
        custom = None if level_transform is None else level_transform(level, lshape)
        if custom is not None and not isinstance(custom, Transform):
            raise TypeError(
                f"level_transform must return an nflows Transform or None, got "
                f"{type(custom).__name__} for level {level}"
            )
        return custom if custom is not None else default_level(level, lshape)

    multiscale = MultiscaleCompositeTransform(levels, split_dim=1)
    for level, lshape in enumerate(shapes):
        parts: list[Transform] = []
        if level > 0 or squeeze_first:
            parts.append(SqueezeTransform())
        parts.append(make_level(level, lshape))
        out_shape: tuple[int, ...] = lshape
        if level == levels - 1 and fc_blocks > 0:
            d = math.prod(lshape)
            parts.append(FlattenTransform(lshape))
            for _ in range(fc_blocks):
                if actnorm:
                    parts.append(ActNorm(d))
                block = build_block(family, d, list(fc_hidden),
                                    context_features=context_features, options=opts)  # fmt: skip
                parts.append(BlockTransform(block))
            out_shape = (d,)
        multiscale.add_transform(CompositeTransform(parts), out_shape)
    dims = math.prod(image_shape)
    base: Distribution
    if context_features is None:
        base = StandardNormal([dims])
    else:
        encoder = nn.Linear(context_features, 2 * dims)
        nn.init.zeros_(encoder.weight)
        nn.init.zeros_(encoder.bias)
        base = ConditionalDiagonalNormal([dims], context_encoder=encoder)
    flow = _ImageFlow(CompositeTransform([LogitTransform(logit_alpha), multiscale]), base)
    flow.image_shape = image_shape
    return flow


class _ImageFlow(Flow):
    """An nflows ``Flow`` that checks its inputs are images of its shape (one-line errors
    instead of nflows' internal assertions). Samples come back as images ``(n, C, H, W)``."""

    image_shape: tuple[int, int, int]

    def _check(self, inputs: Tensor) -> None:
        if (
            not isinstance(inputs, Tensor)
            or inputs.dim() != 4
            or tuple(inputs.shape[1:]) != (self.image_shape)
        ):
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            c, h, w = self.image_shape
            raise ValueError(f"image flow: inputs must be images of shape (B, {c}, {h}, {w}), "
                             f"got {got}")  # fmt: skip

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        self._check(inputs)
        log_prob: Tensor = super()._log_prob(inputs, context)
        return log_prob

    def transform_to_noise(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Images ``(B, C, H, W)`` to flat noise ``(B, C H W)``."""
        self._check(inputs)
        noise: Tensor = super().transform_to_noise(inputs, context)
        return noise


@torch.no_grad()
def initialize_actnorm(flow: nn.Module, x: Tensor, context: Tensor | None = None) -> int:
    """Run the data-dependent initialisation of every not yet initialised nflows ``ActNorm``
    of ``flow`` on the batch ``x`` (one pass in training mode, no gradients); returns how many
    were initialised.

    Doing this on a fixed batch before training makes the initialisation a function of that
    batch alone (the same on every rank of a distributed run, and for every batch size).
    """
    pending = [m for m in flow.modules() if isinstance(m, ActNorm) and not bool(m.initialized)]
    if not pending:
        return 0
    was_training = flow.training
    flow.train()
    try:
        if isinstance(flow, Flow):
            ctx = None if context is None else flow._embedding_net(context)
            flow._transform(x, context=ctx)
        else:
            flow(x, context)
    finally:
        flow.train(was_training)
    return sum(1 for m in pending if bool(m.initialized))
