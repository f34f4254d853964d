"""``FlowDistribution``: Pyro's ``TransformedDistribution`` that also samples and scores in
one pass through the blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:
    import pyro.distributions as pdist
    from pyro.distributions.conditional import ConditionalTransform
    from torch.distributions.transforms import ComposeTransform, Transform
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.pyro needs Pyro: pip install 'implicit-transforms[pyro]'"
    ) from err

from implicit_transforms.plugins.pyro.transforms import BlockTransformModule

from implicit_transforms.blocks import InvertibleBlock
from implicit_transforms.blocks.base import InverseBlock

__all__ = ["FlowDistribution"]

_Shape = torch.Size | list[int] | tuple[int, ...]


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    return value.reshape(*value.shape[: value.dim() - dims], -1).sum(-1) if dims > 0 else value


def _flatten_transforms(transforms: Any) -> list[Transform]:
    """Blocks wrapped, compositions opened, conditional transforms refused."""
    if isinstance(transforms, (Transform, InvertibleBlock, InverseBlock)):
        transforms = [transforms]
    if not isinstance(transforms, Sequence):
        raise TypeError(
            f"transforms must be a sequence of transforms, got {type(transforms).__name__}"
        )
    flat: list[Transform] = []
    for t in transforms:
        if isinstance(t, (InvertibleBlock, InverseBlock)):
            flat.append(BlockTransformModule(t))
        elif isinstance(t, ComposeTransform):
            flat += _flatten_transforms(t.parts)
        elif isinstance(t, Transform):
            flat.append(t)
        elif isinstance(t, ConditionalTransform):
            raise TypeError(
                f"FlowDistribution got the conditional transform {type(t).__name__}: call "
                ".condition(context) on it first (or use ConditionalTransformedDistribution)"
            )
        else:
            raise TypeError(
                "transforms must be blocks or BlockTransformModules (or any "
                f"torch.distributions Transform), got {type(t).__name__}"
            )
    return flat


class FlowDistribution(pdist.TransformedDistribution):
    r"""A ``TransformedDistribution`` that also samples and scores in one pass.

    ``z = T_K o ... o T_1(x)``, ``x ~ base``,
    ``log q(z) = log p(x) - sum_k log|det J_{T_k}(x_{k-1})|``.

    It means exactly what ``pyro.distributions.TransformedDistribution(base, transforms)``
    means (shapes, support, sampling and ``log_prob``), for the same transforms: blocks (or
    their ``.inv``) and
    :class:`~implicit_transforms.plugins.pyro.transforms.BlockTransformModule` s in either
    direction (conditional ones after ``.condition(context)``), compositions such as
    :func:`~implicit_transforms.plugins.pyro.guides.flow_stack` (opened into their parts), and
    any other ``torch.distributions`` transform (through its own ``__call__``, ``inv`` and
    ``log_abs_det_jacobian``). What it adds: :meth:`rsample_and_log_prob` computes the
    log-density along the forward pass (no identity-keyed cache, no inverse solve; works with
    ``pyro.contrib.zuko.ZukoToPyro``), :meth:`sample` runs the blocks' maps alone, and
    :meth:`log_prob` inverts each block with its log-det in the same pass.

    Args:
        base: the base distribution.
        transforms: blocks, inverted blocks (``block.inv``), ``BlockTransformModule`` s or
            ``torch.distributions`` transforms (a single one or a sequence), applied in order.

    Raises:
        TypeError: an object that is not a transform, or a conditional transform that was not
            conditioned.

    Example:
        >>> import torch, pyro.distributions as dist
        >>> from implicit_transforms.plugins.pyro import resflow
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> q = FlowDistribution(base, [resflow(2, [8]), dist.transforms.AffineTransform(1., 2.)])
        >>> z, log_q = q.rsample_and_log_prob((4,))
        >>> z.shape, log_q.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self,
        base: pdist.TorchDistribution,
        transforms: Any,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(base, _flatten_transforms(transforms), validate_args=validate_args)

    def _logdet_dims(self) -> tuple[list[int], int]:
        """How many rightmost dimensions of each transform's log-det, and of the base
        log-density, to sum (``TransformedDistribution.log_prob``'s bookkeeping)."""
        event_dim = len(self.event_shape)
        dims = []
        for t in reversed(self.transforms):
            event_dim += t.domain.event_dim - t.codomain.event_dim
            dims.append(event_dim - t.domain.event_dim)
        return dims[::-1], event_dim - len(self.base_dist.event_shape)

    @staticmethod
    def _forward(t: Transform, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dx|)`` with ``y = t(x)``, in one pass for blocks."""
        if isinstance(t, BlockTransformModule):
            return t.bijection.forward_and_logdet(x, t.context)
        y = t(x)
        return y, t.log_abs_det_jacobian(x, y)

    @staticmethod
    def _backward(t: Transform, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dy/dx|)`` with ``x = t^{-1}(y)``, in one pass for blocks."""
        if isinstance(t, BlockTransformModule):
            x, logdet_inverse = t.bijection.inverse_and_logdet(y, t.context)
            return x, -logdet_inverse
        x = t.inv(y)
        return x, t.log_abs_det_jacobian(x, y)

    def rsample_and_log_prob(self, sample_shape: _Shape = ()) -> tuple[Tensor, Tensor]:
        """Reparameterised sample and its log-density, shapes ``sample_shape + batch + event``
        and ``sample_shape + batch``."""
        dims, base_dims = self._logdet_dims()
        x = self.base_dist.rsample(torch.Size(sample_shape))
        log_q = _sum_rightmost(self.base_dist.log_prob(x), base_dims)
        for t, n in zip(self.transforms, dims, strict=True):
            x, logdet = self._forward(t, x)
            log_q = log_q - _sum_rightmost(logdet, n)
        return x, log_q

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Reparameterised sample."""
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        """Sample without gradients: the blocks' maps alone, no log-det work."""
        with torch.no_grad():
            x = self.base_dist.sample(torch.Size(sample_shape))
            for t in self.transforms:
                if isinstance(t, BlockTransformModule):
                    x = t.bijection.forward_map(x, t.context)
                else:
                    x = t(x)
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(value)``, inverting every transform (blocks solve where their inverse is
        implicit)."""
        if self._validate_args:
            self._validate_sample(value)
        dims, base_dims = self._logdet_dims()
        log_det: Tensor | float = 0.0
        for t, n in zip(reversed(self.transforms), reversed(dims), strict=True):
            value, logdet = self._backward(t, value)
            log_det = log_det - _sum_rightmost(logdet, n)
        return _sum_rightmost(self.base_dist.log_prob(value), base_dims) + log_det
