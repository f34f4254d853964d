"""Residual blocks ``y = x + g(x)`` (i-ResNet, Residual Flows)."""

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

__all__ = ["ResidualBlock"]


class ResidualBlock(InvertibleBlock):
    r"""``y = x + g(x; context)`` with ``Lip(g) < 1``: explicit forward, solved inverse.

    * forward: one evaluation of ``g`` and the log-det estimate
      ``log det(I + J_g(x))`` — never a solver;
    * inverse: the root of ``F(x) = x + g(x) - y`` by ``solver`` (Banach fixed point by default),
      differentiable by the implicit function theorem;
    * log-det of the inverse: ``-log det(I + J_g(x))`` at the recovered ``x`` (the gradient
      flows through ``x`` too).

    Args:
        net: the residual network ``g`` (a :class:`~implicit_transforms.lipschitz.LipschitzNet`).
        solver: inverse solver (default :class:`~implicit_transforms.solvers.FixedPoint`).
        logdet_train: estimator in training mode (default unbiased Russian roulette with
            Neumann gradient).
        logdet_eval: estimator in evaluation mode (default: exact for small events).
        adjoint_solver: solver of the backward linear system of the inverse (default:
            Broyden with ``solver``'s failure policy).

    References:
        Behrmann et al., "Invertible Residual Networks", 2019; Chen et al., "Residual Flows
        for Invertible Generative Modeling", 2019.
    """

    def __init__(
        self,
        net: LipschitzNet,
        *,
        solver: Solver | None = None,
        logdet_train: LogDetEstimator | None = None,
        logdet_eval: LogDetEstimator | None = None,
        adjoint_solver: Solver | None = None,
    ) -> None:
        super().__init__()
        self._init_block(
            [net], logdet_train or make_logdet(FAMILIES["resflow"].series), logdet_eval
        )
        self.net = net
        self.solver: Solver = solver or FAMILIES["resflow"].solver("raise")
        self.adjoint_solver: Solver = adjoint_solver or adjoint_for(self.solver)

    def _g(self, context: Tensor | None) -> Callable[[Tensor], Tensor]:
        return lambda t: self.net(t, context)

    def _residual(self, target: Tensor, ctx: Tensor | None) -> Rowwise:
        """``F(t) = t + g(t) - target`` on any subset of the (flat) batch's samples."""

        def residual(t: Tensor, rows: Tensor | None) -> Tensor:
            if rows is None:
                return t + self.net(t, ctx) - target
            sub_ctx = None if ctx is None else ctx[rows]
            return t + self.net(t, sub_ctx) - target[rows]

        return rowwise(residual)

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = x + g(x)`` and ``log det(I + J_g(x))``; no solver involved."""
        flat, ctx, batch = self._flatten(x, context, "x")
        est = self.estimator(self._event_numel(flat))
        gx, ld = est(self._g(ctx), flat, event_dims=self.event_dims)
        y = flat + gx
        return y.reshape(x.shape), ld.reshape(batch)

    def logdet(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log det(I + J_g(x))``, shape ``(*)``."""
        return self.forward_and_logdet(x, context)[1]

    def forward_map(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``y = x + g(x)`` only: one network evaluation."""
        flat, ctx, _ = self._flatten(x, context, "x")
        return (flat + self.net(flat, ctx)).reshape(x.shape)

    def inverse_map(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The solve of ``x + g(x) = y`` only."""
        flat, ctx, _ = self._flatten(y, context, "y")
        with self.frozen():
            x = self._solve(self._residual(flat, ctx), flat.detach())
        return x.reshape(y.shape)

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Solve ``x + g(x) = y``; log-det ``-log det(I + J_g(x))``."""
        flat, ctx, batch = self._flatten(y, context, "y")
        g = self._g(ctx)
        with self.frozen():  # one normalisation per layer for the whole solve
            est = self.estimator(self._event_numel(flat))
            x, ld = self._solve_with_logdet(self._residual(flat, ctx), flat.detach(), g, est)
        return x.reshape(y.shape), -ld.reshape(batch)
