r"""The monotone (Cayley) block of Monotone Flows: ``y = sqrt(2) w - x`` with ``w + g(w) = sqrt(2) x``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from implicit_transforms.blocks.base import InvertibleBlock, plain_exact
from implicit_transforms.blocks.options import adjoint_for
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.logdet import ExactLogDet, LogDetEstimator
from implicit_transforms.recipes.families import FAMILIES
from implicit_transforms.recipes.registry import make_logdet
from implicit_transforms.solvers import Solver, rowwise

__all__ = ["MonotoneBlock"]

_SQRT2 = math.sqrt(2.0)

_NetOnRows = Callable[..., Tensor]


class MonotoneBlock(InvertibleBlock):
    r"""Monotone Flows block: the (scaled) Cayley operator of the monotone map ``Id + g``.

    With ``Lip(g) < 1`` the map ``F = Id + g`` is strongly monotone, its resolvent
    ``(Id + g)^{-1}`` is defined everywhere and its Cayley operator ``2 (Id + g)^{-1} - Id`` is
    invertible. The block is that operator conjugated by ``sqrt(2)``:

    * forward: ``w`` solves ``w + g(w) = sqrt(2) x``, then ``y = sqrt(2) w - x``
      (``= (w - g(w)) / sqrt(2)``);
    * inverse: ``w`` solves ``w - g(w) = sqrt(2) y``, then ``x = sqrt(2) w - y``
      (``= (w + g(w)) / sqrt(2)``): the Cayley operator of ``Id - g``;
    * both directions share ``w = (x + y) / sqrt(2)``, so a known pair needs no solve.

    .. math::
        \frac{\partial y}{\partial x} = (I + J_g(w))^{-1} (I - J_g(w)), \qquad
        \log\left|\det \frac{\partial y}{\partial x}\right|
        = \log\det(I - J_g(w)) - \log\det(I + J_g(w))
        = -2 \sum_{k\ \mathrm{odd}} \frac{\operatorname{tr}(J_g(w)^k)}{k}.

    Each log-det term is the block's estimator applied at ``w`` (to ``g`` and to ``-g``); the
    gradient also flows through ``w`` (implicit function theorem, adjoint solved by
    ``adjoint_solver``). One root solve per direction, on residuals with Jacobian
    ``I + J_g`` (forward) or ``I - J_g`` (inverse). Unlike a residual block, whose Jacobian's
    singular values lie in ``[1 - c, 1 + c]``, this one's lie in
    ``[(1 - c)/(1 + c), (1 + c)/(1 - c)]`` (1/66 to 66 at ``c = 0.97``): one block can be much
    steeper or flatter.

    Args:
        net: the network ``g`` (a :class:`~implicit_transforms.lipschitz.LipschitzNet`).
        solver: solver of both directions (default :class:`~implicit_transforms.solvers.Broyden`,
            the ``"monotone"`` entry of :data:`~implicit_transforms.recipes.families.FAMILIES`).
        logdet_train: estimator in training mode (default Russian roulette, Neumann gradient).
        logdet_eval: estimator in evaluation mode (default: exact for small events).
        adjoint_solver: solver of the backward linear systems (default: Broyden with
            ``solver``'s failure policy).

    References:
        Ahn, Kim, Hong, Kim, "Invertible Monotone Operators for Normalizing Flows",
        NeurIPS 2022.

    Example:
        >>> import torch
        >>> from implicit_transforms.blocks import monotone_block
        >>> block = monotone_block(2, [8]).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> y, ld = block(x)
        >>> x_back, ld_inv = block.inverse_and_logdet(y)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(ld_inv, -ld, atol=1e-6)
        (True, True)
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
            [net], logdet_train or make_logdet(FAMILIES["monotone"].series), logdet_eval
        )
        self.net = net
        self.solver: Solver = solver or FAMILIES["monotone"].solver("raise")
        self.adjoint_solver: Solver = adjoint_solver or adjoint_for(self.solver)

    def _g(self, ctx: Tensor | None, sign: float = 1.0) -> _NetOnRows:
        """``sign * g(t)`` on all samples, or on the samples ``rows`` (their context)."""

        def g(t: Tensor, rows: Tensor | None = None) -> Tensor:
            out = self.net(t, ctx if ctx is None or rows is None else ctx[rows])
            return out if sign > 0 else -out

        return g

    def _solve_w(
        self,
        target: Tensor,
        ctx: Tensor | None,
        sign: float,
        adjoint_matrix: Callable[[], Tensor | None] | None = None,
    ) -> Tensor:
        """``w`` with ``w + sign * g(w) = target`` (active rows only; implicit gradients)."""
        g = self._g(ctx, sign)

        def residual(t: Tensor, rows: Tensor | None) -> Tensor:
            if rows is None:
                return t + g(t) - target
            return t + g(t, rows) - target[rows]

        return self._solve(rowwise(residual), target.detach(), adjoint_matrix)

    def _solve_w_and_logdet(
        self, target: Tensor, ctx: Tensor | None, sign: float
    ) -> tuple[Tensor, Tensor]:
        """``w`` (see :meth:`_solve_w`) and ``log det(I - J_g(w)) - log det(I + J_g(w))``.

        With the exact estimator one Jacobian ``J_g(w)`` gives both terms, and ``I + sign J``
        is the adjoint system's matrix (one linear solve in the backward pass)."""
        est = self.estimator(self._event_numel(target))
        if not plain_exact(est):
            w = self._solve_w(target, ctx, sign)
            return w, self._logdet_at(w, ctx)
        held: list[Tensor] = []
        w = self._solve_w(target, ctx, sign, lambda: held[0] if held else None)
        ld, jac, eye = self._exact_logdet(est, w, ctx)
        held.append((eye + sign * jac).detach())  # dF/dw at the root, read in the backward
        return w, ld

    def _exact_logdet(
        self, est: ExactLogDet, w: Tensor, ctx: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, jac = est.jacobian(self._g(ctx), w, event_dims=self.event_dims)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        ld = torch.linalg.slogdet(eye - jac).logabsdet - torch.linalg.slogdet(eye + jac).logabsdet
        return ld, jac, eye

    def _logdet_at(self, w: Tensor, ctx: Tensor | None) -> Tensor:
        """``log det(I - J_g(w)) - log det(I + J_g(w))``, each term by the block's estimator
        (the exact one from a single Jacobian)."""
        est = self.estimator(self._event_numel(w))
        if plain_exact(est):
            return self._exact_logdet(est, w, ctx)[0]
        _, ld_plus = est(self._g(ctx), w, event_dims=self.event_dims)
        _, ld_minus = est(self._g(ctx, -1.0), w, event_dims=self.event_dims)
        return ld_minus - ld_plus

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = sqrt(2) w - x`` with ``w + g(w) = sqrt(2) x``, and ``log|det dy/dx|``."""
        flat, ctx, batch = self._flatten(x, context, "x")
        with self.frozen():  # one normalisation per layer for the whole call
            w, ld = self._solve_w_and_logdet(_SQRT2 * flat, ctx, 1.0)
        return (_SQRT2 * w - flat).reshape(x.shape), ld.reshape(batch)

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = sqrt(2) w - y`` with ``w - g(w) = sqrt(2) y``, and ``log|det dx/dy|``."""
        flat, ctx, batch = self._flatten(y, context, "y")
        with self.frozen():
            w, ld = self._solve_w_and_logdet(_SQRT2 * flat, ctx, -1.0)
        return (_SQRT2 * w - flat).reshape(y.shape), -ld.reshape(batch)

    def forward_map(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``y`` only: the solve, without the log-det."""
        flat, ctx, _ = self._flatten(x, context, "x")
        with self.frozen():
            w = self._solve_w(_SQRT2 * flat, ctx, 1.0)
        return (_SQRT2 * w - flat).reshape(x.shape)

    def inverse_map(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """``x`` only: the solve, without the log-det."""
        flat, ctx, _ = self._flatten(y, context, "y")
        with self.frozen():
            w = self._solve_w(_SQRT2 * flat, ctx, -1.0)
        return (_SQRT2 * w - flat).reshape(y.shape)

    def logdet(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward log-det at ``x``, shape ``(*)``: one forward solve (for ``w``)."""
        return self.forward_and_logdet(x, context)[1]

    def logdet_pair(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward log-det for a known pair ``y = f(x)``, at ``w = (x + y) / sqrt(2)``: no solve."""
        flat_x, ctx, batch = self._flatten(x, context, "x")
        flat_y, _, _ = self._flatten(y, context, "y")
        if flat_x.shape != flat_y.shape:
            raise ValueError(
                f"MonotoneBlock: y must have the shape of x, {tuple(x.shape)}, got {tuple(y.shape)}"
            )
        with self.frozen():
            ld = self._logdet_at((flat_x + flat_y) / _SQRT2, ctx)
        return ld.reshape(batch)
