"""The nflows adapter: the blocks as ``nflows.transforms.Transform`` subclasses.

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

from implicit_transforms.plugins.nflows.deferred import DeferredLogDet

from implicit_transforms.blocks import BlockOptions, InvertibleBlock, build_block
from implicit_transforms.blocks.options import training_logdet_doc
from implicit_transforms.recipes.families import FACTORY_HIDDEN
from implicit_transforms.solvers import SolverResult
from implicit_transforms.validation import check_event_shape, check_hidden, check_positive_int

__all__ = [
    "BlockTransform",
    "IResNetTransform",
    "ImpFlowTransform",
    "MonotoneTransform",
    "ResFlowTransform",
]


class BlockTransform(Transform):
    """Wraps any :class:`~implicit_transforms.InvertibleBlock` as an nflows ``Transform``.

    As nflows' own unconditional layers do, a block built without ``context_features``
    ignores the context an (e.g. conditional) ``Flow`` passes to every layer.

    Args:
        block: the block; its forward direction is nflows' ``forward`` (data to noise).
    """

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self.block = block

    def _context(self, context: Tensor | None) -> Tensor | None:
        return None if self.block.context_features is None else context

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to noise: ``(outputs, logabsdet)``, ``logabsdet`` of shape ``[batch]``."""
        return self.block.forward_and_logdet(inputs, self._context(context))

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise to data: ``(outputs, logabsdet)`` of the inverse map.

        The solve runs now; ``logabsdet`` is a ``DeferredLogDet`` (module
        ``implicit_transforms.plugins.nflows.deferred``), computed from the pair
        ``(outputs, inputs)`` (no second solve) when it is first used: ``Flow.sample``,
        which discards it, never pays for it; ``Flow.sample_and_log_prob`` gets it exactly.
        """
        self._check_noise_dtype(inputs)
        ctx = self._context(context)
        block = self.block
        outputs = block.inverse_map(inputs, ctx)
        batch = inputs.shape[: inputs.dim() - block.event_dims]
        return outputs, DeferredLogDet(
            lambda: -block.logdet_pair(outputs, inputs, ctx),
            inputs.new_empty(batch),
            depends_on=(inputs, outputs) if ctx is None else (inputs, outputs, ctx),
            module=block,
        )

    def _check_noise_dtype(self, inputs: Tensor) -> None:
        """Name the usual cause of a dtype mismatch on the way back from noise: nflows'
        ``Flow.sample`` feeds the base distribution's samples, and ``StandardNormal`` draws
        them in the default dtype whatever ``flow.to(dtype)`` did."""
        param = next(self.block.parameters(), None)
        if (
            param is None
            or not isinstance(inputs, Tensor)
            or inputs.dtype == param.dtype
            or inputs.dtype not in (torch.float32, torch.float64)
        ):
            return  # nothing to explain, or the block's own check says it
        raise TypeError(
            f"{type(self).__name__}.inverse: inputs are {inputs.dtype} but the block's "
            f"parameters are {param.dtype}. In Flow.sample the inputs are the base "
            f"distribution's samples, and nflows' StandardNormal draws them in torch's default "
            f"dtype ({torch.get_default_dtype()}) even after flow.to({param.dtype}): sample "
            f"under torch.set_default_dtype({param.dtype}), or draw the noise yourself and call "
            f"flow._transform.inverse(noise.to({param.dtype}))"
        )

    @property
    def last_solve(self) -> SolverResult | None:
        """Statistics of the block's most recent solve."""
        return self.block.last_solve

    @property
    def last_adjoint_solve(self) -> SolverResult | None:
        """Statistics of the block's most recent backward (adjoint) solve."""
        return self.block.last_adjoint_solve


class _FamilyTransform(BlockTransform):
    _family: str = "resflow"

    def __init__(
        self,
        features: int | Sequence[int],
        hidden_features: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        context_features: int | None = None,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> None:
        # checked here so that the errors name this class's arguments
        check_event_shape(features, "features")
        check_hidden(hidden_features, "hidden_features")
        if context_features is not None:
            check_positive_int(context_features, "context_features")
        super().__init__(
            build_block(
                self._family,
                features,
                hidden_features,
                context_features=context_features,
                options=options,
                **changes,
            )
        )


_ARGS = """

    Args:
        features: ``D`` for vectors or ``(C, H, W)`` for images.
        hidden_features: hidden sizes (MLP; an int is one hidden layer, as in nflows) or hidden
            channels (CNN).
        context_features: size of the (embedded) context, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``, ``network``): the same settings as the factories and
            the Pyro helpers.
    """


class ResFlowTransform(_FamilyTransform):
    __doc__ = (
        "Residual Flow block (sine networks, unbiased roulette log-det, Neumann gradient, "
        "fixed-point inverse)." + training_logdet_doc("resflow") + _ARGS
    )
    _family = "resflow"


class IResNetTransform(_FamilyTransform):
    __doc__ = (
        "i-ResNet block (ELU, truncated power series, fixed-point inverse)."
        + training_logdet_doc("iresnet")
        + _ARGS
    )
    _family = "iresnet"


class ImpFlowTransform(_FamilyTransform):
    __doc__ = (
        "ImpFlow block (two sine networks, Broyden both ways, roulette log-det)."
        + training_logdet_doc("impflow")
        + _ARGS
    )
    _family = "impflow"


class MonotoneTransform(_FamilyTransform):
    __doc__ = (
        "Monotone Flows block (the Cayley operator of ``Id + g``, one sine network, Broyden "
        "both ways, roulette log-det)." + training_logdet_doc("monotone") + _ARGS
    )
    _family = "monotone"
