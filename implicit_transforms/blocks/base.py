"""The contract every invertible block follows, and its input validation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeGuard

import torch
from torch import Tensor, nn

from implicit_transforms.errors import FunctionalTransformError, LipschitzWarning, TracingError
from implicit_transforms.implicit import solve_implicit
from implicit_transforms.lipschitz.certify import certify
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.lipschitz.spectral import frozen_weights
from implicit_transforms.logdet import ExactLogDet, LogDetEstimator
from implicit_transforms.recipes.families import EXACT_LOGDET_MAX_DIM, EXACT_LOGDET_TRAIN_MAX_DIM
from implicit_transforms.solvers import Solver, SolverResult
from implicit_transforms.validation import validating_inputs

__all__ = ["EXACT_LOGDET_MAX_DIM", "EXACT_LOGDET_TRAIN_MAX_DIM", "InverseBlock", "InvertibleBlock"]


class InvertibleBlock(nn.Module):
    r"""Base class of the flow blocks: a bijection ``x -> y`` with a tractable log-det.

    The contract (all blocks, any leading batch shape ``*``, event shape ``E``):

    * ``forward_and_logdet(x, context=None) -> (y, logdet)``: ``x: (*, *E)`` to ``y: (*, *E)``
      with ``logdet = log|det dy/dx|`` of shape ``(*)``;
    * ``inverse_and_logdet(y, context=None) -> (x, logdet)``: the inverse map, with
      ``logdet = log|det dx/dy| = -`` the forward log-det at ``x``;
    * ``logdet(x, context=None)``: the forward log-det at ``x`` without any inverse solve;
    * ``logdet_pair(x, y, context=None)``: the same when ``y`` is known, without any solve;
    * ``forward_map(x)`` / ``inverse_map(y)``: the outputs alone, skipping every log-det;
    * ``inv``: the block with its directions exchanged (an :class:`InverseBlock` view that
      shares this block's parameters);
    * ``context``: ``(*, C)`` or any shape broadcastable to it, or ``None``;
    * ``last_solve``: the :class:`~implicit_transforms.solvers.SolverResult` of the most
      recent solve (``None`` before any); ``last_adjoint_solve``: the same for the most recent
      backward (adjoint) solve, in units scaled by the incoming gradient's norm.

    Inputs must be float32 or float64 (any other dtype raises a ``TypeError`` naming it) and
    may have an empty batch (the outputs are then empty too). Switching a block to evaluation
    mode refines the spectral norms of its networks and certifies them: a network whose
    certified bound is not below 1 emits a :class:`~implicit_transforms.LipschitzWarning`.

    Which log-det estimator runs is an explicit setting, never a silent switch: ``logdet_train``
    in training mode and ``logdet_eval`` in evaluation mode. ``logdet_eval=None`` means the
    exact log-det for events of at most :data:`EXACT_LOGDET_MAX_DIM` elements and
    ``logdet_train`` otherwise. :meth:`forward_map` and :meth:`inverse_map` give a map alone
    (sampling), skipping the log-det. Calling the module is ``forward_and_logdet``.

    Blocks cannot be traced by ``torch.jit.trace`` (they raise
    :class:`~implicit_transforms.errors.TracingError`): solver iteration counts, series lengths
    and spectral norms are decided in Python at every call.
    """

    event_dims: int
    context_features: int | None
    logdet_train: LogDetEstimator
    logdet_eval: LogDetEstimator | None
    last_solve: SolverResult | None
    last_adjoint_solve: SolverResult | None
    solver: Solver
    adjoint_solver: Solver

    def _init_block(
        self,
        nets: list[LipschitzNet],
        logdet_train: LogDetEstimator,
        logdet_eval: LogDetEstimator | None,
    ) -> None:
        for net in nets:
            if not isinstance(net, LipschitzNet):
                raise TypeError(
                    f"networks must be LipschitzNet instances, got {type(net).__name__}"
                )
        first = nets[0]
        for net in nets[1:]:
            if net.expected_event_shape() != first.expected_event_shape():
                raise ValueError(
                    "the networks of a block must accept the same event shape, got "
                    f"{first.expected_event_shape()} and {net.expected_event_shape()}"
                )
            if net.context_features != first.context_features:
                raise ValueError(
                    "the networks of a block must take the same context size, got "
                    f"{first.context_features} and {net.context_features}"
                )
        if not callable(logdet_train):
            raise TypeError(
                f"logdet_train must be a LogDetEstimator, got {type(logdet_train).__name__}"
            )
        self.event_dims = first.event_dims
        self.context_features = first.context_features
        self._event_template = first.expected_event_shape()
        self.logdet_train = logdet_train
        self.logdet_eval = logdet_eval
        self.last_solve = None
        self.last_adjoint_solve = None

    def _record_adjoint(self, result: SolverResult) -> None:
        self.last_adjoint_solve = result

    def _solve(
        self,
        residual: Callable[[Tensor], Tensor],
        start: Tensor,
        adjoint_matrix: Callable[[], Tensor | None] | None = None,
    ) -> Tensor:
        """The root of ``residual`` found from ``start`` by this block's solver, with implicit
        gradients (adjoint solved by ``adjoint_solver``, or in one linear solve when
        ``adjoint_matrix`` gives ``dF/dz``); the forward solve's report goes to
        ``last_solve`` and the adjoint's, when it runs, to ``last_adjoint_solve``."""
        _refuse_functorch(type(self).__name__, "solves its implicit map")
        root, self.last_solve = solve_implicit(
            residual,
            start,
            solver=self.solver,
            adjoint_solver=self.adjoint_solver,
            event_dims=self.event_dims,
            on_adjoint_solve=self._record_adjoint,
            adjoint_matrix=adjoint_matrix,
        )
        return root

    def _solve_with_logdet(
        self,
        residual: Callable[[Tensor], Tensor],
        start: Tensor,
        g: Callable[[Tensor], Tensor],
        est: LogDetEstimator,
    ) -> tuple[Tensor, Tensor]:
        """The root ``z`` of ``residual(t) = t + g(t) - target`` (see :meth:`_solve`) and
        ``log det(I + J_g(z))`` by ``est``.

        With the exact estimator the Jacobian it assembles at the root is the adjoint system's
        matrix: the backward pass then solves that system in one batched factorisation
        instead of iterating (the value and the gradient are the same, to the tolerance).
        """
        if not plain_exact(est):
            root = self._solve(residual, start)
            return root, est(g, root, event_dims=self.event_dims)[1]
        held: list[Tensor] = []
        root = self._solve(residual, start, lambda: held[0] if held else None)
        _, jac = est.jacobian(g, root, event_dims=self.event_dims)
        m = jac + torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        held.append(m.detach())  # dF/dz at the root, read in the backward pass
        return root, torch.linalg.slogdet(m).logabsdet

    def networks(self) -> list[LipschitzNet]:
        """The residual networks of this block."""
        return [m for m in self.children() if isinstance(m, LipschitzNet)]

    def train(self, mode: bool = True) -> InvertibleBlock:
        """Switch mode; going to evaluation refines and certifies every network (a bound not
        below 1 warns with :class:`~implicit_transforms.LipschitzWarning`)."""
        super().train(mode)
        if not mode:
            for net in self.networks():
                try:
                    cert = certify(net)
                except ValueError:  # a convolution that has not seen an input yet
                    continue
                if not cert.contractive:
                    warnings.warn(
                        f"{type(self).__name__}: a residual network has certified Lipschitz "
                        f"bound {cert.bound:.4f} >= 1, so the block may not be invertible "
                        f"(per-layer bounds {cert.layers}); lower coeff or check that the "
                        "weights are finite",
                        LipschitzWarning,
                        stacklevel=2,
                    )
        return self

    @staticmethod
    def _event_numel(flat: Tensor) -> int:
        return math.prod(flat.shape[1:])

    def estimator(self, event_numel: int) -> LogDetEstimator:
        """The estimator used now (depends on training mode and the event size)."""
        _refuse_functorch(type(self).__name__, "computes a log-determinant")
        if self.training:
            return self.logdet_train
        if self.logdet_eval is not None:
            return self.logdet_eval
        return ExactLogDet() if event_numel <= EXACT_LOGDET_MAX_DIM else self.logdet_train

    # -- validation and flattening ------------------------------------------------------
    def _flatten(
        self, x: Tensor, context: Tensor | None, name: str
    ) -> tuple[Tensor, Tensor | None, torch.Size]:
        """Check ``x`` and ``context`` and flatten the batch: returns ``(B, *E)``, ``(B, C)``."""
        kind = type(self).__name__
        if torch.jit.is_tracing():
            raise TracingError(
                f"{kind} cannot be traced by torch.jit.trace (Pyro's JitTrace_ELBO, "
                "JitTraceGraph_ELBO, ... trace the guide): its solver iteration counts, the "
                "random length of its log-det series and its spectral normalisation are "
                "decided in Python at every call, and a trace would silently replay the first "
                "call's decisions. Use the loss without 'Jit' (e.g. Trace_ELBO) instead"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"{kind}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{kind}: {name} must be float32 or float64, got {x.dtype} (the solvers, "
                "log-determinants and spectral norms need single or double precision); cast "
                "with .float()"
            )
        param = next(self.parameters(), None)
        if param is not None and param.dtype != x.dtype:
            raise TypeError(
                f"{kind}: {name} has dtype {x.dtype} but the block's parameters are "
                f"{param.dtype}; move the block with .to({x.dtype})"
            )
        template = self._event_template
        event = tuple(x.shape[x.dim() - len(template) :]) if x.dim() >= len(template) else None
        if event is None or any(
            t is not None and t != e for t, e in zip(template, event, strict=True)
        ):
            want = "(*, " + ", ".join("?" if t is None else str(t) for t in template) + ")"
            raise ValueError(f"{kind}: {name} must have shape {want}, got {tuple(x.shape)}")
        if validating_inputs() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{kind}: {name} contains NaN or Inf")
        batch = x.shape[: x.dim() - len(template)]
        flat_x = x.reshape(math.prod(batch), *event)
        if self.context_features is None:
            if context is not None:
                raise ValueError(f"{kind} was built without context_features but got a context")
            return flat_x, None, batch
        if context is None:
            raise ValueError(
                f"{kind} was built with context_features={self.context_features}; pass a context"
            )
        if (
            not isinstance(context, Tensor)
            or context.dim() < 1
            or context.shape[-1] != self.context_features
        ):
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(
                f"{kind}: context must have shape (*, {self.context_features}), got {got}"
            )
        if validating_inputs() and not bool(torch.isfinite(context).all()):
            raise ValueError(f"{kind}: context contains NaN or Inf")
        try:
            ctx = context.to(x.dtype).expand(*batch, self.context_features)
        except RuntimeError:
            raise ValueError(
                f"{kind}: context batch shape {tuple(context.shape[:-1])} does not broadcast to "
                f"the input batch shape {tuple(batch)}"
            ) from None
        return flat_x, ctx.reshape(-1, self.context_features), batch

    # -- the contract ----------------------------------------------------------------------
    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dx|)``; see the class docstring."""
        raise NotImplementedError

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)``; see the class docstring."""
        raise NotImplementedError

    def logdet(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward log-det at ``x``, shape ``(*)``, without an inverse solve."""
        raise NotImplementedError

    def logdet_pair(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward log-det at ``x`` when ``y`` (its image) is known too: never solves.

        Residual blocks ignore ``y``; the implicit block needs it (its forward is a solve).
        """
        return self.logdet(x, context)

    def forward_map(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The forward map ``y = f(x)`` alone, for sampling, where no density is needed.

        Both shipped blocks override it to skip every log-det evaluation (the solves, and their
        failure policy, are unchanged); this default, for other subclasses, is
        :meth:`forward_and_logdet` with its log-det discarded.
        """
        return self.forward_and_logdet(x, context)[0]

    def inverse_map(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The inverse map ``x = f^{-1}(y)`` alone, like :meth:`forward_map` (default:
        :meth:`inverse_and_logdet` with its log-det discarded)."""
        return self.inverse_and_logdet(y, context)[0]

    @property
    def inv(self) -> InverseBlock:
        """This block with its directions exchanged (an :class:`InverseBlock` view)."""
        return InverseBlock(self)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Same as :meth:`forward_and_logdet`."""
        return self.forward_and_logdet(x, context)

    def frozen(self) -> AbstractContextManager[None]:
        """A scope in which every layer normalises its weight once (one block call)."""
        return frozen_weights(self)


def _refuse_functorch(kind: str, what: str) -> None:
    if torch._C._functorch.peek_interpreter_stack() is not None:
        raise FunctionalTransformError(
            f"{kind} {what} with torch.autograd (implicit-function-theorem gradients, "
            "vector-Jacobian products), which torch.func transforms (grad, jacrev, vmap) cannot "
            "differentiate or batch: call it outside the transform, or use "
            "torch.autograd.functional.jacobian. The explicit maps (a residual block's "
            "forward_map, the networks) work under torch.func"
        )


class InverseBlock:
    r"""A block with its directions exchanged: the same contract, ``f^{-1}`` as the forward map.

    A view, not a copy: it holds no parameters of its own (they stay registered on the block,
    under the same names) and ``.inv`` gives the block back. For a residual block the forward
    map of the view is the solve and its inverse map the explicit ``x + g(x)``: density
    estimation then scores data without a solve.

    * ``forward_and_logdet(x)`` is ``block.inverse_and_logdet(x)``, ``inverse_and_logdet(y)``
      is ``block.forward_and_logdet(y)``, and likewise for ``forward_map`` / ``inverse_map``;
    * ``logdet_pair(x, y) = -block.logdet_pair(y, x)``: ``x`` is the block's image of ``y``,
      and ``log|det d f^{-1}/dx|(x) = -log|det df/dy|(y)``; no solve;
    * ``logdet(x)`` is the log-det of ``forward_and_logdet(x)`` (for a residual block, a solve).

    Args:
        block: the block to invert.

    Example:
        >>> import torch
        >>> from implicit_transforms.blocks import resflow_block
        >>> block = resflow_block(2, [8])
        >>> inverse = block.inv
        >>> x = torch.randn(4, 2)
        >>> z, ld = inverse.forward_and_logdet(block.forward_map(x))
        >>> torch.allclose(z, x, atol=1e-4), inverse.inv is block
        (True, True)
    """

    def __init__(self, block: InvertibleBlock) -> None:
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        self._block = block

    @property
    def inv(self) -> InvertibleBlock:
        """The block this view inverts."""
        return self._block

    @property
    def event_dims(self) -> int:
        """Number of event dimensions (the block's)."""
        return self._block.event_dims

    @property
    def context_features(self) -> int | None:
        """Context size (the block's)."""
        return self._block.context_features

    @property
    def last_solve(self) -> SolverResult | None:
        """The block's most recent solve."""
        return self._block.last_solve

    @property
    def last_adjoint_solve(self) -> SolverResult | None:
        """The block's most recent adjoint solve."""
        return self._block.last_adjoint_solve

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f^{-1}(x), log|det d f^{-1}/dx|)``: the block's inverse."""
        return self._block.inverse_and_logdet(x, context)

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f(y), log|det df/dy|)``: the block's forward."""
        return self._block.forward_and_logdet(y, context)

    def forward_map(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``f^{-1}(x)`` alone (the block's :meth:`~implicit_transforms.blocks.InvertibleBlock.inverse_map`)."""
        return self._block.inverse_map(x, context)

    def inverse_map(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """``f(y)`` alone (the block's :meth:`~implicit_transforms.blocks.InvertibleBlock.forward_map`)."""
        return self._block.forward_map(y, context)

    def logdet(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log|det d f^{-1}/dx|`` at ``x``, shape ``(*)`` (computes ``f^{-1}(x)``)."""
        return self.forward_and_logdet(x, context)[1]

    def logdet_pair(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> Tensor:
        """``log|det d f^{-1}/dx|`` for a known pair ``y = f^{-1}(x)``: never solves."""
        return -self._block.logdet_pair(y, x, context)

    def __call__(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Same as :meth:`forward_and_logdet`."""
        return self.forward_and_logdet(x, context)

    def __repr__(self) -> str:
        return f"InverseBlock({self._block!r})"


def plain_exact(est: LogDetEstimator) -> TypeGuard[ExactLogDet]:
    """Whether ``est`` is an :class:`ExactLogDet` whose Jacobian a block may reuse (for the
    adjoint matrix, or for both Monotone terms) instead of calling ``est``.

    A subclass that redefines ``__call__`` is not plain: its ``__call__`` is what the block
    then calls, as for any other estimator.

    Example:
        >>> from implicit_transforms.logdet import ExactLogDet, RouletteLogDet
        >>> plain_exact(ExactLogDet()), plain_exact(RouletteLogDet())
        (True, False)
    """
    return isinstance(est, ExactLogDet) and type(est).__call__ is ExactLogDet.__call__
