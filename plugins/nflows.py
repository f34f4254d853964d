"""The blocks as ``nflows.transforms.Transform`` subclasses.

``forward(inputs, context)`` maps data to noise and returns ``(outputs, logabsdet)`` with
``logabsdet`` of shape ``[batch]``; ``inverse`` maps noise back to data. For the residual blocks
``forward`` is the explicit map ``x + g(x)``, so density training never calls a solver.
Vector inputs ``[B, D]`` and image inputs ``[B, C, H, W]`` are both accepted.

Example:
    >>> import torch
    >>> from nflows.distributions import StandardNormal
    >>> from nflows.flows import Flow
    >>> from nflows.transforms import CompositeTransform, ReversePermutation
    >>> from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
    >>> flow = Flow(CompositeTransform([ResFlowTransform(2, [32]), ReversePermutation(2),
    ...                                 ImpFlowTransform(2, [32])]), StandardNormal([2]))
    >>> flow.log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:
    from nflows.transforms.base import Transform
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.nflows needs nflows: pip install 'implicit-transforms[nflows]'"
    ) from err

from implicit_transforms.blocks import InvertibleBlock, impflow_block, iresnet_block, resflow_block
from implicit_transforms.logdet import LogDetEstimator
from implicit_transforms.solvers import Solver, SolverResult

__all__ = ["BlockTransform", "IResNetTransform", "ImpFlowTransform", "ResFlowTransform"]


class BlockTransform(Transform):
    """Wraps any :class:`~implicit_transforms.InvertibleBlock` as an nflows ``Transform``.

    Args:
        block: the block; its forward direction is nflows' ``forward`` (data to noise).
    """

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self.block = block

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to noise: ``(outputs, logabsdet)``, ``logabsdet`` of shape ``[batch]``."""
        return self.block.forward_and_logdet(inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise to data: ``(outputs, logabsdet)`` of the inverse map."""
        return self.block.inverse_and_logdet(inputs, context)

    @property
    def last_solve(self) -> SolverResult | None:
        """Statistics of the block's most recent solve."""
        return self.block.last_solve


class _FactoryTransform(BlockTransform):
    _factory: Any = staticmethod(resflow_block)

    def __init__(
        self,
        features: int | Sequence[int],
        hidden_features: int | Sequence[int] = (64, 64),
        *,
        context_features: int | None = None,
        coeff: float | None = None,
        solver: Solver | None = None,
        logdet_eval: LogDetEstimator | None = None,
        n_probes: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        kwargs = {} if coeff is None else {"coeff": coeff}
        block = type(self)._factory(
            features, hidden_features, context_features=context_features, solver=solver,
            logdet_eval=logdet_eval, n_probes=n_probes, generator=generator, **kwargs,
        )  # fmt: skip
        super().__init__(block)


class ResFlowTransform(_FactoryTransform):
    """Residual Flow block (LipSwish, unbiased roulette log-det, Neumann gradient).

    Args:
        features: ``D`` for vectors or ``(C, H, W)`` for images.
        hidden_features: hidden sizes (MLP) or hidden channels (CNN).
        context_features: size of the (embedded) context, if any.
        coeff: Lipschitz coefficient per layer (default 0.97).
        solver: inverse solver (default fixed point).
        logdet_eval: estimator in evaluation mode (default exact for small events).
        n_probes: Hutchinson probes in training.
        generator: explicit randomness for the estimator.
    """

    _factory: Any = staticmethod(resflow_block)


class IResNetTransform(_FactoryTransform):
    """i-ResNet block (ELU, truncated power series, fixed-point inverse); see
    :class:`ResFlowTransform` for the arguments (default ``coeff`` 0.9)."""

    _factory: Any = staticmethod(iresnet_block)


class ImpFlowTransform(_FactoryTransform):
    """ImpFlow block (two LipSwish nets, Broyden both ways); see :class:`ResFlowTransform`
    for the arguments (``solver`` defaults to Broyden)."""

    _factory: Any = staticmethod(impflow_block)
