"""The implicit block of ImpFlow: ``z + g_z(z) = x + g_x(x)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from implicit_transforms.blocks.base import InvertibleBlock
from implicit_transforms.blocks.options import adjoint_for
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.logdet import LogDetEstimator
from implicit_transforms.recipes.families import FAMILIES
from implicit_transforms.recipes.registry import make_logdet
from implicit_transforms.solvers import Rowwise, Solver, rowwise

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
        self._init_block(
            [net_x, net_z], logdet_train or make_logdet(FAMILIES["impflow"].series), logdet_eval
        )
        self.net_x = net_x
        self.net_z = net_z
        self.solver: Solver = solver or FAMILIES["impflow"].solver("raise")
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
    ) -> tuple[Tensor, Tensor]:
        """Solve ``dst + g_dst(dst) = src + g_src(src)``; return ``(dst, logdet)``."""
        with self.frozen():  # one normalisation per layer for the whole call
            return self._map_frozen(src, g_src, g_dst)

    def _map_frozen(
        self,
        src: Tensor,
        g_src: _NetOnRows,
        g_dst: _NetOnRows,
    ) -> tuple[Tensor, Tensor]:
        est = self.estimator(self._event_numel(src))
        g_src_val, ld_src = est(g_src, src, event_dims=self.event_dims)
        target = src + g_src_val
        dst, ld_dst = self._solve_with_logdet(
            self._residual_to(target, g_dst), target.detach(), g_dst, est
        )
        return dst, ld_src - ld_dst

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` solving ``z + g_z(z) = x + g_x(x)`` and ``log|det dz/dx|``."""
        flat, ctx, batch = self._flatten(x, context, "x")
        z, ld = self._map(flat, ctx, self._g(self.net_x, ctx), self._g(self.net_z, ctx))
        return z.reshape(x.shape), ld.reshape(batch)

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` solving ``x + g_x(x) = z + g_z(z)`` and ``log|det dx/dz|``."""
        flat, ctx, batch = self._flatten(y, context, "y")
        x, ld = self._map(flat, ctx, self._g(self.net_z, ctx), self._g(self.net_x, ctx))
        return x.reshape(y.shape), ld.reshape(batch)

    def _solve_only(self, src: Tensor, g_src: _NetOnRows, g_dst: _NetOnRows) -> Tensor:
        with self.frozen():
            return self._solve_to(src + g_src(src), g_dst)

    @staticmethod
    def _residual_to(target: Tensor, g_dst: _NetOnRows) -> Rowwise:
        """``F(t) = t + g_dst(t) - target`` on any subset of the samples."""

        def residual(t: Tensor, rows: Tensor | None) -> Tensor:
            if rows is None:
                return t + g_dst(t) - target
            return t + g_dst(t, rows) - target[rows]

        return rowwise(residual)

    def _solve_to(self, target: Tensor, g_dst: _NetOnRows) -> Tensor:
        """``dst`` with ``dst + g_dst(dst) = target`` (active rows only; implicit gradients)."""
        return self._solve(self._residual_to(target, g_dst), target.detach())

    def forward_map(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``z`` only: the solve, without either log-det term."""
        flat, ctx, _ = self._flatten(x, context, "x")
        return self._solve_only(flat, self._g(self.net_x, ctx), self._g(self.net_z, ctx)).reshape(
            x.shape
        )

    def inverse_map(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """``x`` only: the solve, without either log-det term."""
        flat, ctx, _ = self._flatten(y, context, "y")
        return self._solve_only(flat, self._g(self.net_z, ctx), self._g(self.net_x, ctx)).reshape(
            y.shape
        )

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
