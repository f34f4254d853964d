"""The blocks as zuko lazy transforms.

zuko's convention: a :class:`zuko.lazy.LazyTransform` returns, for a context ``c``, a
``torch.distributions.Transform`` whose ``_call`` maps data to base; ``NormalizingFlow.log_prob``
calls ``call_and_ladj`` on it, sampling calls ``.inv``. The block's forward map, the explicit
``x + g(x)`` of the residual blocks, is therefore the transform's ``_call``: ``log_prob`` never
solves. ``.inv.call_and_ladj`` (``rsample_and_log_prob``, used by ``pyro.contrib.zuko.ZukoToPyro``)
solves once per block and takes the log-det from the same pass.

Example:
    >>> import torch, zuko
    >>> from implicit_transforms.plugins.zuko import ImpFlow, ResFlow
    >>> flow = zuko.lazy.Flow(
    ...     [ResFlow(2, hidden_features=[16]), ImpFlow(2, hidden_features=[16])],
    ...     zuko.lazy.UnconditionalDistribution(
    ...         zuko.distributions.DiagNormal, torch.zeros(2), torch.ones(2), buffer=True
    ...     ),
    ... )
    >>> flow().log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.distributions import Transform, constraints

try:
    from zuko.lazy import LazyTransform
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.zuko needs zuko: pip install 'implicit-transforms[zuko]'"
    ) from err

from implicit_transforms.blocks import BlockOptions, InvertibleBlock, build_block
from implicit_transforms.recipes.families import FACTORY_HIDDEN

__all__ = ["BlockLazyTransform", "BlockTransform", "IResNet", "ImpFlow", "Monotone", "ResFlow"]


class BlockTransform(Transform):
    r"""A block with a fixed context as a ``torch.distributions.Transform`` (data to base).

    ``call_and_ladj(x) -> (z, log|det dz/dx|)`` is the block's forward (explicit for residual
    blocks); ``.inv`` is a transform whose ``call_and_ladj(z)`` solves once and returns
    ``(x, log|det dx/dz|)``; ``log_abs_det_jacobian(x, z)`` never solves.

    Args:
        block: the block.
        context: its context ``(*, C)``, or ``None``.
    """

    bijective = True

    def __init__(self, block: InvertibleBlock, context: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self.block = block
        self.context = context

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    @property
    def inv(self) -> Transform:
        """Base to data, with a ``call_and_ladj`` that solves once."""
        return _InverseBlockTransform(self)

    def _call(self, x: Tensor) -> Tensor:
        return self.block.forward_map(x, self.context)

    def _inverse(self, z: Tensor) -> Tensor:
        return self.block.inverse_map(z, self.context)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)`` in one pass; the log-det has the batch shape."""
        return self.block.forward_and_logdet(x, self.context)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dz/dx|`` at ``x`` whose image ``y`` is known: no solve."""
        return self.block.logdet_pair(x, y, self.context)


class _InverseBlockTransform(Transform):
    """Base to data of a :class:`BlockTransform` (what ``.inv`` returns)."""

    bijective = True

    def __init__(self, forward: BlockTransform) -> None:
        super().__init__()
        self._forward = forward

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return self._forward.codomain

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return self._forward.domain

    @property
    def inv(self) -> Transform:
        return self._forward

    def _call(self, z: Tensor) -> Tensor:
        return self._forward._inverse(z)

    def _inverse(self, x: Tensor) -> Tensor:
        return self._forward._call(x)

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)`` with one solve."""
        fwd = self._forward
        return fwd.block.inverse_and_logdet(z, fwd.context)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|`` of base ``x`` to data ``y``: no solve."""
        return -self._forward.log_abs_det_jacobian(y, x)


class BlockLazyTransform(LazyTransform):
    """Any :class:`~implicit_transforms.InvertibleBlock` as a zuko ``LazyTransform``:
    ``forward(c)`` returns a :class:`BlockTransform` for the context ``c``. A block built
    without ``context_features`` ignores the context zuko passes to every transform.

    Args:
        block: the block; its forward direction is data to base.
    """

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self.block = block

    def forward(self, c: Tensor | None = None) -> BlockTransform:
        """The transform for context ``c`` (``(*, C)``, or ``None``)."""
        return BlockTransform(self.block, None if self.block.context_features is None else c)


class _Family(BlockLazyTransform):
    _family: str = "resflow"

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        hidden_features: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> None:
        if not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be a non-negative int, got {context!r}")
        block = build_block(
            self._family,
            features,
            hidden_features,
            context_features=context or None,
            options=options,
            **changes,
        )
        super().__init__(block)


_ARGS = """

    Args:
        features: ``D`` for vectors ``(*, D)`` (or ``(C, H, W)`` for images).
        context: the number of context features (0: none), as zuko's transforms.
        hidden_features: hidden sizes (MLP) or hidden channels (CNN).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``, ``network``): the same settings as every other entry point.
    """


class ResFlow(_Family):
    __doc__ = (
        "Residual Flow block (sine network, unbiased roulette log-det, Neumann gradient, "
        "fixed-point inverse) as a zuko lazy transform." + _ARGS
    )
    _family = "resflow"


class IResNet(_Family):
    __doc__ = (
        "i-ResNet block (ELU network, truncated power series, fixed-point inverse) as a zuko "
        "lazy transform." + _ARGS
    )
    _family = "iresnet"


class ImpFlow(_Family):
    __doc__ = (
        "ImpFlow block (two sine networks, Broyden both ways, roulette log-det) as a zuko lazy "
        "transform." + _ARGS
    )
    _family = "impflow"


class Monotone(_Family):
    __doc__ = (
        "Monotone Flows block (the Cayley operator of ``Id + g``, one sine network, Broyden "
        "both ways, roulette log-det) as a zuko lazy transform." + _ARGS
    )
    _family = "monotone"
