"""The Pyro adapter: any block as a Pyro ``TransformModule``, in either direction.

Direction: Pyro's ``_call`` (base to sample, used by ``rsample`` in guides) is the forward map
of the module's :attr:`~BlockTransformModule.bijection`: the block itself, or the block with
its directions exchanged (an :class:`~implicit_transforms.blocks.base.InverseBlock`,
``block.inv``). For a residual block the forward map is the explicit ``x + g(x)``: a guide
that samples and then scores its own samples (cache hit) never solves anything. ``_inverse``
solves. ``log_abs_det_jacobian(x, y)`` reuses the value computed with the cached pair, and
otherwise recomputes it from ``(x, y)`` without any solve. Without gradients (``.sample()``),
``_call`` computes the map alone and the log-det only when it is asked for.

Example:
    >>> import torch, pyro.distributions as dist
    >>> from implicit_transforms.blocks import resflow_block
    >>> t = BlockTransformModule(resflow_block(2, [16]))
    >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    >>> z = q.rsample((5,))
    >>> q.log_prob(z).shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

try:
    from pyro.distributions import constraints
    from pyro.distributions.conditional import ConditionalTransformModule
    from pyro.distributions.torch_transform import TransformModule
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.pyro needs Pyro: pip install 'implicit-transforms[pyro]'"
    ) from err

from implicit_transforms.blocks import InvertibleBlock
from implicit_transforms.blocks.base import InverseBlock

__all__ = [
    "BlockTransformModule",
    "ConditionalBlockTransformModule",
    "ConditionalInverseBlockTransformModule",
    "InverseBlock",
    "InverseBlockTransformModule",
]

_M = TypeVar("_M", bound="BlockTransformModule")


def _check_bijection(block: object) -> InvertibleBlock | InverseBlock:
    if not isinstance(block, (InvertibleBlock, InverseBlock)):
        raise TypeError(
            f"block must be an InvertibleBlock or an InverseBlock (block.inv), got "
            f"{type(block).__name__}"
        )
    return block


def _block_of(bijection: InvertibleBlock | InverseBlock) -> InvertibleBlock:
    """The block that holds the parameters."""
    return bijection.inv if isinstance(bijection, InverseBlock) else bijection


class BlockTransformModule(TransformModule):
    """A block as a Pyro ``TransformModule``: Pyro's forward is the block's forward map.

    Pass ``block.inv`` (an :class:`~implicit_transforms.blocks.base.InverseBlock`) to run the
    block backwards: for residual blocks this puts the solve on sampling and the explicit
    ``x + g(x)`` on ``log_prob`` (density estimation, where data are scored far more often
    than sampled).

    Args:
        block: the block, or ``block.inv``; the block's parameters are registered on this
            module as ``block`` in both cases.
        cache_size: 1 (default) caches the last ``(x, y)`` pair and its log-det; 0 disables.
        context: fixed context (used by the conditional versions' ``.condition``).

    Attributes:
        block: the :class:`~implicit_transforms.InvertibleBlock` (holds the parameters).
        bijection: what Pyro's forward runs: ``block`` or ``block.inv``.
        num_inverse_solves: calls of Pyro's ``_inverse`` (``log_prob`` of a value that is not
            the cached sample), which solve unless the bijection is an inverted residual block.
    """

    bijective = True
    bijection: InvertibleBlock | InverseBlock

    def __init__(
        self,
        block: InvertibleBlock | InverseBlock,
        cache_size: int = 1,
        context: Tensor | None = None,
    ) -> None:
        _check_bijection(block)
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        super().__init__(cache_size=cache_size)
        self.block = _block_of(block)
        # kept out of the module tree: the parameters are registered once, under ``block``
        object.__setattr__(self, "bijection", block)
        self.context = context
        self._logdet_cache: tuple[Tensor, Tensor, Tensor] | None = None
        self.num_inverse_solves = 0

    @classmethod
    def _over(
        cls: type[_M],
        bijection: InvertibleBlock | InverseBlock,
        cache_size: int = 1,
        context: Tensor | None = None,
    ) -> _M:
        """An instance of this class running ``bijection`` as it is (the subclasses'
        constructors only choose the bijection)."""
        module = cls.__new__(cls)
        BlockTransformModule.__init__(module, bijection, cache_size=cache_size, context=context)
        return module

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    def with_cache(self, cache_size: int = 1) -> BlockTransformModule:
        """A transform sharing this one's block (and parameters) with another cache size."""
        if cache_size == self._cache_size:
            return self
        return self._over(self.bijection, cache_size=cache_size, context=self.context)

    def clear_cache(self) -> None:
        """Forget the cached ``(x, y)`` pair and log-det."""
        self._cached_x_y = None, None
        self._logdet_cache = None

    def _remember(self, x: Tensor, y: Tensor, ld: Tensor) -> None:
        if self._cache_size == 1:
            self._logdet_cache = (x, y, ld)

    def _run(
        self,
        map_alone: Callable[[Tensor, Tensor | None], Tensor],
        with_logdet: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
        src: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        """A map of ``src`` and its log-det.

        With autograd recording (an ELBO is being built) the log-det follows at once: compute
        it in the same pass. Without (sampling), skip it (``None``): Pyro asks for it
        separately, and :meth:`log_abs_det_jacobian` computes it from the cached pair then.
        """
        if not torch.is_grad_enabled():
            return map_alone(src, self.context), None
        return with_logdet(src, self.context)

    def _call(self, x: Tensor) -> Tensor:
        b = self.bijection
        y, ld = self._run(b.forward_map, b.forward_and_logdet, x)
        if ld is not None:
            self._remember(x, y, ld)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        self.num_inverse_solves += 1
        b = self.bijection
        x, ld_inv = self._run(b.inverse_map, b.inverse_and_logdet, y)
        if ld_inv is not None:
            self._remember(x, y, -ld_inv)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|`` summed over the event, shape ``batch``; no solve."""
        cached = self._logdet_cache
        if cached is not None and cached[0] is x and cached[1] is y:
            return cached[2]
        return self.bijection.logdet_pair(x, y, self.context)


class ConditionalBlockTransformModule(ConditionalTransformModule):
    """A conditional block: ``.condition(context)`` returns a :class:`BlockTransformModule`
    sharing this module's parameters.

    Args:
        block: a block built with ``context_features``, or its ``.inv``.
    """

    _unconditioned: type[BlockTransformModule] = BlockTransformModule
    bijection: InvertibleBlock | InverseBlock

    def __init__(self, block: InvertibleBlock | InverseBlock) -> None:
        _check_bijection(block)
        super().__init__()
        if block.context_features is None:
            raise ValueError("a conditional transform needs a block built with context_features")
        self.block = _block_of(block)
        object.__setattr__(self, "bijection", block)

    def condition(self, context: Tensor) -> BlockTransformModule:
        """The transform for a fixed ``context`` of shape ``(*, context_features)``."""
        return self._unconditioned._over(self.bijection, cache_size=1, context=context)


class InverseBlockTransformModule(BlockTransformModule):
    """``BlockTransformModule(block.inv)``: Pyro's ``_call`` is the block's *inverse*.

    For residual blocks this puts the solve on sampling and the explicit ``x + g(x)`` on
    ``log_prob`` (density estimation, where data are scored far more often than sampled).
    Built by :func:`~implicit_transforms.plugins.pyro.guides.flow_stack` with
    ``explicit="score"``.

    Args:
        block: the block to run backwards.
        cache_size: as :class:`BlockTransformModule`.
        context: as :class:`BlockTransformModule`.
    """

    def __init__(
        self, block: InvertibleBlock, cache_size: int = 1, context: Tensor | None = None
    ) -> None:
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        super().__init__(block.inv, cache_size=cache_size, context=context)


class ConditionalInverseBlockTransformModule(ConditionalBlockTransformModule):
    """``ConditionalBlockTransformModule(block.inv)``, whose ``.condition(context)`` is an
    :class:`InverseBlockTransformModule`.

    Args:
        block: a block built with ``context_features``, to run backwards.
    """

    _unconditioned = InverseBlockTransformModule

    def __init__(self, block: InvertibleBlock) -> None:
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        super().__init__(block.inv)
