"""The implicit block of ImpFlow: ``z + g_z(z) = x + g_x(x)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from implicit_transforms.blocks.base import InvertibleBlock
from implicit_transforms.blocks.options import adjoint_for
from implicit_transforms.implicit import solve_implicit
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.logdet import LogDetEstimator, RouletteLogDet
from implicit_transforms.solvers import Broyden, Solver, SolverResult, rowwise

__all__ = ["ImplicitBlock"]

_NetOnRows = Callable[..., Tensor]


class ImplicitBlock(InvertibleBlock):
    r"""ImpFlow block: ``z`` is the root of ``F(z, x) = g_x(x) - g_z(z) + x - z = 0``.

    Equivalently ``z = (Id + g_z)^{-1}((Id + g_x)(x))``: a residual block followed by the
    inverse of another, which can be far steeper than any residual flow of the same depth. Both
    directions are solved (Broyden by default) on residuals written as
    ``z + g_z(z) - (x + g_x(x))`` (Jacobian ``I + J_gz``, close to the identity), and
    differentiated by the implicit function theorem: no graph through the iterations and no
    network copies.

    ``log|det dz/dx| = log det(I + J_gx(x)) - log det(I + J_gz(z))``, each term estimated by
    the block's estimator; the gradient of the second term also flows through ``z`` (total
    derivative).

    Args:
        net_x: ``g_x``.
        net_z: ``g_z`` (same event shape and context size as ``g_x``).
        solver: solver for both directions (default :class:`~implicit_transforms.solvers.Broyden`).
        logdet_train: estimator in training mode (default Russian roulette, Neumann gradient).
        logdet_eval: estimator in evaluation mode (default: exact for small events).
        adjoint_solver: solver of the backward linear systems (default: Broyden with
            ``solver``'s failure policy).

    References:
        Lu, Chen, Chen, Zhu, Zhang, "Implicit Normalizing Flows", ICLR 2021, Definition 1.
    """

    def __init__(
        self,
        net_x: LipschitzNet,
        net_z: LipschitzNet,
        *,
        solver: Solver | None = None,
        logdet_train: LogDetEstimator | None = None,
        logdet_eval: LogDetEstimator | None = None,
        adjoint_solver: Solver | None = None,
    ) -> None:
        super().__init__()
        self._init_block([net_x, net_z], logdet_train or RouletteLogDet(), logdet_eval)
        self.net_x = net_x
        self.net_z = net_z
        self.solver: Solver = solver or Broyden()
        self.adjoint_solver: Solver = adjoint_solver or adjoint_for(self.solver)

    @staticmethod
    def _g(net: LipschitzNet, ctx: Tensor | None) -> _NetOnRows:
        """``g(t)`` on all samples, or ``g(t, rows)`` on the samples ``rows`` (their context)."""

        def g(t: Tensor, rows: Tensor | None = None) -> Tensor:
            return net(t, ctx if ctx is None or rows is None else ctx[rows])

        return g

    def _map(
        self,
        src: Tensor,
        ctx: Tensor | None,
        g_src: _NetOnRows,
        g_dst: _NetOnRows,
    ) -> tuple[Tensor, Tensor, SolverResult]:
        """Solve ``dst + g_dst(dst) = src + g_src(src)``; return ``(dst, logdet, result)``."""
        with self.frozen():  # one normalisation per layer for the whole call
            return self._map_frozen(src, g_src, g_dst)

    def _map_frozen(
        self,
        src: Tensor,
        g_src: _NetOnRows,
        g_dst: _NetOnRows,
    ) -> tuple[Tensor, Tensor, SolverResult]:
        est = self.estimator(self._event_numel(src))
        g_src_val, ld_src = est(g_src, src, event_dims=self.event_dims)
        target = src + g_src_val

        def residual(t: Tensor, rows: Tensor | None) -> Tensor:
            if rows is None:
                return t + g_dst(t) - target
            return t + g_dst(t, rows) - target[rows]

        dst, result = solve_implicit(
            rowwise(residual),
            target.detach(),
            solver=self.solver,
            adjoint_solver=self.adjoint_solver,
            event_dims=self.event_dims,
            on_adjoint_solve=self._record_adjoint,
        )
        self.last_solve = result
        _, ld_dst = est(g_dst, dst, event_dims=self.event_dims)
        return dst, ld_src - ld_dst, result

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` solving ``z + g_z(z) = x + g_x(x)`` and ``log|det dz/dx|``."""
        flat, ctx, batch = self._flatten(x, context, "x")
        z, ld, _ = self._map(flat, ctx, self._g(self.net_x, ctx), self._g(self.net_z, ctx))
        return z.reshape(x.shape), ld.reshape(batch)

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` solving ``x + g_x(x) = z + g_z(z)`` and ``log|det dx/dz|``."""
        flat, ctx, batch = self._flatten(y, context, "y")
        x, ld, _ = self._map(flat, ctx, self._g(self.net_z, ctx), self._g(self.net_x, ctx))
        return x.reshape(y.shape), ld.reshape(batch)

    def logdet_pair(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> Tensor:
        """``log det(I + J_gx(x)) - log det(I + J_gz(y))`` for a known pair ``y = f(x)``: no solve."""
        flat_x, ctx, batch = self._flatten(x, context, "x")
        flat_y, _, _ = self._flatten(y, context, "y")
        est = self.estimator(self._event_numel(flat_x))
        _, ld_x = est(lambda t: self.net_x(t, ctx), flat_x, event_dims=self.event_dims)
        _, ld_y = est(lambda t: self.net_z(t, ctx), flat_y, event_dims=self.event_dims)
        return (ld_x - ld_y).reshape(batch)

    def logdet(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward log-det at ``x``. The forward map of an implicit block is itself a solve
        (for ``z``); no inverse solve is made."""
        return self.forward_and_logdet(x, context)[1]
