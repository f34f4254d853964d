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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from implicit_transforms.plugins.nflows.transforms import BlockTransform
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
from implicit_transforms.recipes.families import FACTORY_HIDDEN, IMAGE_ACTIVATION
from implicit_transforms.validation import validating_inputs

__all__ = [
    "CheckedActNorm",
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


class CheckedActNorm(ActNorm):
    r"""nflows' ``ActNorm`` whose data-dependent initialisation refuses a batch it cannot use.

    ``y = s * x + b`` per channel (images ``(B, C, H, W)``) or per feature (vectors ``(B, D)``),
    log-det ``sum(log s)`` per pixel. The first training-mode call sets ``s = 1 / std`` and
    ``b = -mean / std`` from its batch, so that its outputs have zero mean and unit variance.
    nflows' own layer initialises from any batch, and a bad one breaks it for good: a constant
    channel gives ``s = inf``, a NaN gives NaN parameters, and a float64 batch turns float32
    parameters into float64. This layer raises instead (a ``ValueError`` for a batch with NaN
    or Inf, a channel of zero variance or fewer than 2 values per channel; a ``TypeError`` for
    a batch of another dtype than its parameters), names ActNorm and stays uninitialised. An
    empty batch initialises nothing. Same parameters and buffers as nflows' ``ActNorm``.

    Args:
        features: channels (images) or features (vectors).

    Example:
        >>> layer = CheckedActNorm(2)
        >>> y, _ = layer(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        Traceback (most recent call last):
        ...
        ValueError: ActNorm: cannot initialise from this batch: feature(s) [1] have zero variance ...
    """

    def _initialize(self, inputs: Tensor) -> None:
        if inputs.dtype != self.log_scale.dtype:
            raise TypeError(
                f"ActNorm: cannot initialise from a batch of dtype {inputs.dtype}: its parameters "
                f"are {self.log_scale.dtype}; nothing was initialised (cast the batch, or move "
                f"the model with .to({inputs.dtype}))"
            )
        image = inputs.dim() == 4
        rows = inputs.movedim(1, -1).reshape(-1, inputs.shape[1]) if image else inputs
        if rows.shape[0] == 0:  # nothing to learn from; the next non-empty batch initialises
            return
        unit, values = ("channel", "values (samples x H x W)") if image else ("feature", "samples")
        refuse = "ActNorm: cannot initialise from this batch: "
        later = (
            "; nothing was initialised (the first training batch, or the batch given to "
            "initialize_actnorm, sets each layer's scale to 1 / std per " + unit + ")"
        )
        if rows.shape[0] < 2:
            raise ValueError(
                f"{refuse}it needs at least 2 {values} per {unit} to estimate a variance, got "
                f"{rows.shape[0]}{later}"
            )
        with torch.no_grad():
            if not bool(torch.isfinite(rows).all()):
                raise ValueError(f"{refuse}it contains NaN or Inf{later}")
            std = rows.std(dim=0)
            log_scale = -torch.log(std)
            shift = -(rows / std).mean(dim=0)
            flat = (std == 0).nonzero().flatten().tolist()
            if flat:
                raise ValueError(
                    f"{refuse}{unit}(s) {flat} have zero variance (a constant {unit}: the scale "
                    f"1 / std would be infinite){later}"
                )
            bad = (~torch.isfinite(log_scale) | ~torch.isfinite(shift)).nonzero().flatten()
            if len(bad):
                raise ValueError(
                    f"{refuse}{unit}(s) {bad.tolist()} have a standard deviation whose scale "
                    f"1 / std or shift overflows {inputs.dtype}{later}"
                )
            self.log_scale.copy_(log_scale)
            self.shift.copy_(shift)
            self.initialized.fill_(True)


@contextmanager
def _actnorm_rollback(module: nn.Module) -> Iterator[None]:
    """If the body raises, put every ``ActNorm`` of ``module`` that was waiting for its
    data-dependent initialisation back as it was (parameters, their dtype, uninitialised): a
    call that fails leaves no state behind, e.g. when a later layer refuses the batch."""
    pending = [
        (m, m.log_scale.detach().clone(), m.shift.detach().clone())
        for m in module.modules()
        if isinstance(m, ActNorm) and m.training and not bool(m.initialized)
    ]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for m, log_scale, shift in pending:
                m.log_scale.data = log_scale
                m.shift.data = shift
                m.initialized.fill_(False)
        raise


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
    fc_hidden: Sequence[int] = FACTORY_HIDDEN,
    activation: str = IMAGE_ACTIVATION,
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
        family: ``"impflow"``, ``"resflow"``, ``"iresnet"`` or ``"monotone"``.
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
                steps.append(CheckedActNorm(lshape[0]))
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
                    parts.append(CheckedActNorm(d))
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
    flow.context_features = context_features
    return flow


class _ImageFlow(Flow):
    """An nflows ``Flow`` that checks its inputs (shape, dtype, NaN/Inf, context) before any
    layer runs, with one-line errors instead of nflows' internal assertions, and undoes the
    ActNorm initialisation of a call that fails. Samples come back as images
    ``(n, C, H, W)``."""

    image_shape: tuple[int, int, int]
    context_features: int | None

    def _dtype(self) -> torch.dtype | None:
        param = next(self.parameters(), None)
        return None if param is None else param.dtype

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        if (
            not isinstance(inputs, Tensor)
            or inputs.dim() != 4
            or tuple(inputs.shape[1:]) != (self.image_shape)
        ):
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            c, h, w = self.image_shape
            raise ValueError(f"image flow: inputs must be images of shape (B, {c}, {h}, {w}), "
                             f"got {got}")  # fmt: skip
        if inputs.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"image flow: inputs must be float32 or float64, got {inputs.dtype} (dequantised "
                "pixels (k + u) / L in [0, 1]; see implicit_transforms.images.dequantize)"
            )
        dtype = self._dtype()
        if dtype is not None and inputs.dtype != dtype:
            raise TypeError(
                f"image flow: inputs have dtype {inputs.dtype} but the flow's parameters are "
                f"{dtype}; cast the inputs (.to({dtype})) or move the flow (.to({inputs.dtype}))"
            )
        if validating_inputs() and not bool(torch.isfinite(inputs).all()):
            raise ValueError("image flow: inputs contain NaN or Inf")
        self._check_context(context, inputs.shape[0])

    def _check_context(self, context: Tensor | None, batch: int | None) -> None:
        features = self.context_features
        if features is None:  # an unconditional flow ignores a context, as nflows' layers do
            return
        if context is None:
            raise ValueError(f"image flow: built with context_features={features}; pass a context")
        rows = "N" if batch is None else str(batch)
        if (
            not isinstance(context, Tensor)
            or context.dim() != 2
            or context.shape[1] != features
            or (batch is not None and context.shape[0] != batch)
        ):
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"image flow: context must have shape ({rows}, {features}), got {got}")
        dtype = self._dtype()
        if context.dtype != dtype:
            raise TypeError(
                f"image flow: context has dtype {context.dtype} but the flow's parameters are "
                f"{dtype}; cast it with .to({dtype})"
            )
        if validating_inputs() and not bool(torch.isfinite(context).all()):
            raise ValueError("image flow: context contains NaN or Inf")

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        self._check(inputs, context)
        with _actnorm_rollback(self):
            log_prob: Tensor = super()._log_prob(inputs, context)
        return log_prob

    def transform_to_noise(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Images ``(B, C, H, W)`` to flat noise ``(B, C H W)``."""
        self._check(inputs, context)
        with _actnorm_rollback(self):
            noise: Tensor = super().transform_to_noise(inputs, context)
        return noise

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        self._check_context(context, None)
        samples: Tensor = super()._sample(num_samples, context)
        return samples

    def sample_and_log_prob(
        self, num_samples: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``num_samples`` images (per context row) and their log-densities, in one pass."""
        self._check_context(context, None)
        out: tuple[Tensor, Tensor] = super().sample_and_log_prob(num_samples, context)
        return out


@torch.no_grad()
def initialize_actnorm(flow: nn.Module, x: Tensor, context: Tensor | None = None) -> int:
    """Run the data-dependent initialisation of every not yet initialised nflows ``ActNorm``
    of ``flow`` on the batch ``x`` (one pass in training mode, no gradients); returns how many
    were initialised.

    Doing this on a fixed batch before training makes the initialisation a function of that
    batch alone (the same on every rank of a distributed run, and for every batch size). An
    image flow checks ``x`` and ``context`` first; if anything fails (a bad batch, an ActNorm
    that refuses it), no ActNorm is left initialised.
    """
    pending = [m for m in flow.modules() if isinstance(m, ActNorm) and not bool(m.initialized)]
    if not pending:
        return 0
    if isinstance(flow, _ImageFlow):
        flow._check(x, context)
    was_training = flow.training
    flow.train()
    try:
        with _actnorm_rollback(flow):
            _initialization_pass(flow, x, context)
    finally:
        flow.train(was_training)
    return sum(1 for m in pending if bool(m.initialized))


def _initialization_pass(flow: nn.Module, x: Tensor, context: Tensor | None) -> None:
    if isinstance(flow, Flow):
        ctx = None if context is None else flow._embedding_net(context)
        flow._transform(x, context=ctx)
    else:
        flow(x, context)
