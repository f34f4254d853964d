"""The blocks as ``normflows.flows.Flow`` layers.

normflows' direction is the opposite of nflows': ``Flow.forward(z)`` maps base to data and
returns ``(x, log|det dx/dz|)`` (used by ``NormalizingFlow.sample`` and ``reverse_kld``), and
``Flow.inverse(x)`` maps data to base (used by ``log_prob`` and ``forward_kld``). The block's
forward map, the explicit ``x + g(x)`` of the residual blocks, is therefore normflows'
``inverse``: density training (``forward_kld``) never calls a solver, sampling solves.

Unconditional layers accept and ignore a ``context`` keyword, as normflows' own unconditional
layers (``Permute``) do, so they mix into a ``ConditionalNormalizingFlow``; the ``Conditional*``
layers need it. Vectors ``(B, D)`` and images ``(B, C, H, W)`` are both accepted.

Example:
    >>> import torch, normflows as nf
    >>> from implicit_transforms.plugins.normflows import ImpFlow, ResFlow
    >>> flows = [ResFlow(2, [16]), nf.flows.Permute(2, mode="swap"), ImpFlow(2, [16])]
    >>> model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), flows)
    >>> model.log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

try:
    from normflows.flows.base import Flow
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.normflows needs normflows: "
        "pip install 'implicit-transforms[normflows]'"
    ) from err

from implicit_transforms.blocks import BlockOptions, InvertibleBlock, build_block
from implicit_transforms.recipes.families import FACTORY_HIDDEN
from implicit_transforms.solvers import SolverResult

__all__ = [
    "BlockFlow",
    "ConditionalIResNet",
    "ConditionalImpFlow",
    "ConditionalMonotone",
    "ConditionalResFlow",
    "IResNet",
    "ImpFlow",
    "Monotone",
    "ResFlow",
]


class BlockFlow(Flow):
    """Any :class:`~implicit_transforms.InvertibleBlock` as a normflows ``Flow``.

    ``forward(z, context=None) -> (x, log|det dx/dz|)`` is the block's inverse (base to data,
    solves for residual blocks); ``inverse(x, context=None) -> (z, log|det dz/dx|)`` is the
    block's forward (data to base, explicit for residual blocks). Both log-dets have shape
    ``(B,)``. A block built without ``context_features`` ignores the context.

    Args:
        block: the block; its forward direction is data to base.
    """

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self.block = block

    def _context(self, context: Tensor | None) -> Tensor | None:
        return None if self.block.context_features is None else context

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Base to data: ``(x, log|det dx/dz|)``, the log-det of shape ``(B,)``."""
        return self.block.inverse_and_logdet(z, self._context(context))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to base: ``(z, log|det dz/dx|)``, the log-det of shape ``(B,)``."""
        return self.block.forward_and_logdet(z, self._context(context))

    @property
    def last_solve(self) -> SolverResult | None:
        """Statistics of the block's most recent solve."""
        return self.block.last_solve

    @property
    def last_adjoint_solve(self) -> SolverResult | None:
        """Statistics of the block's most recent backward (adjoint) solve."""
        return self.block.last_adjoint_solve


class _Family(BlockFlow):
    _family: str = "resflow"

    def __init__(
        self,
        shape: int | Sequence[int],
        hidden: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> None:
        super().__init__(build_block(self._family, shape, hidden, options=options, **changes))


class _ConditionalFamily(BlockFlow):
    _family: str = "resflow"

    def __init__(
        self,
        shape: int | Sequence[int],
        num_context_channels: int,
        hidden: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> None:
        if not isinstance(num_context_channels, int) or num_context_channels < 1:
            raise ValueError(
                f"num_context_channels must be a positive int, got {num_context_channels!r}"
            )
        super().__init__(
            build_block(
                self._family,
                shape,
                hidden,
                context_features=num_context_channels,
                options=options,
                **changes,
            )
        )


_ARGS = """

    Args:
        shape: ``D`` for vectors ``(B, D)`` or ``(C, H, W)`` for images ``(B, C, H, W)``.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``, ``network``): the same settings as every other entry point.
    """
_CONDITIONAL_ARGS = _ARGS.replace(
    "        hidden:",
    "        num_context_channels: size ``C`` of the context ``(B, C)`` that normflows'\n"
    "            ``ConditionalNormalizingFlow`` passes to every layer.\n        hidden:",
)
_RESFLOW = (
    "Residual Flow block (sine network, unbiased roulette log-det, Neumann gradient, "
    "fixed-point inverse)"
)
_IRESNET = "i-ResNet block (ELU network, truncated power series, fixed-point inverse)"
_IMPFLOW = "ImpFlow block (two sine networks, Broyden both ways, roulette log-det)"
_MONOTONE = (
    "Monotone Flows block (the Cayley operator of ``Id + g``, one sine network, Broyden both "
    "ways, roulette log-det)"
)


class ResFlow(_Family):
    __doc__ = _RESFLOW + " as a normflows ``Flow``." + _ARGS
    _family = "resflow"


class IResNet(_Family):
    __doc__ = _IRESNET + " as a normflows ``Flow``." + _ARGS
    _family = "iresnet"


class ImpFlow(_Family):
    __doc__ = _IMPFLOW + " as a normflows ``Flow``." + _ARGS
    _family = "impflow"


class Monotone(_Family):
    __doc__ = _MONOTONE + " as a normflows ``Flow``." + _ARGS
    _family = "monotone"


class ConditionalResFlow(_ConditionalFamily):
    __doc__ = "Conditional " + _RESFLOW + "; the context enters as a bias." + _CONDITIONAL_ARGS
    _family = "resflow"


class ConditionalIResNet(_ConditionalFamily):
    __doc__ = "Conditional " + _IRESNET + "; the context enters as a bias." + _CONDITIONAL_ARGS
    _family = "iresnet"


class ConditionalImpFlow(_ConditionalFamily):
    __doc__ = "Conditional " + _IMPFLOW + "; the context enters as a bias." + _CONDITIONAL_ARGS
    _family = "impflow"


class ConditionalMonotone(_ConditionalFamily):
    __doc__ = "Conditional " + _MONOTONE + "; the context enters as a bias." + _CONDITIONAL_ARGS
    _family = "monotone"
