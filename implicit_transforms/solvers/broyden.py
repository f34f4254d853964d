"""Broyden's quasi-Newton method with a limited-memory inverse Jacobian and line search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from implicit_transforms.solvers._common import FlatProblem, Tracker
from implicit_transforms.solvers.result import OnFailure, SolverResult, apply_failure_policy

__all__ = ["Broyden", "broyden"]

LineSearch = Literal["armijo", "none"]


class _LowRankInverse:
    """Per-sample ``H = h0 I + U V`` with rank at most ``m`` (``U: (B,N,m)``, ``V: (B,m,N)``)."""

    def __init__(self, b: int, n: int, m: int, h0: float, like: Tensor) -> None:
        self.h0 = h0
        self.u = like.new_zeros(b, n, m)
        self.v = like.new_zeros(b, m, n)
        self.m = m
        self.rank = 0

    def matvec(self, x: Tensor) -> Tensor:
        """``H x`` for ``x: (B, N)``."""
        return self.h0 * x + torch.einsum(
            "bnm,bm->bn", self.u, torch.einsum("bmn,bn->bm", self.v, x)
        )

    def rmatvec(self, x: Tensor) -> Tensor:
        """``x^T H`` for ``x: (B, N)``."""
        return self.h0 * x + torch.einsum(
            "bm,bmn->bn", torch.einsum("bn,bnm->bm", x, self.u), self.v
        )

    def add(self, u: Tensor, v: Tensor) -> None:
        """Add the rank-one term ``u v^T``; restart from ``h0 I`` when the memory is full."""
        if self.rank == self.m:
            self.u.zero_()
            self.v.zero_()
            self.rank = 0
        self.u[:, :, self.rank] = u
        self.v[:, self.rank, :] = v
        self.rank += 1

    def reset(self, mask: Tensor) -> None:
        """Forget the updates of the samples in ``mask`` (back to ``h0 I``)."""
        keep = (~mask).to(self.u.dtype)
        self.u *= keep[:, None, None]
        self.v *= keep[:, None, None]


def broyden(
    fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_iter: int = 50,
    history: int = 20,
    line_search: LineSearch = "armijo",
    jacobian_guess: float = 1.0,
    max_backtracks: int = 8,
    event_dims: int = 1,
    on_failure: OnFailure = "raise",
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by Broyden's ("good") quasi-Newton method.

    Keeps per sample an approximation ``H`` of the inverse Jacobian ``(dF/dz)^{-1}``, starting
    from ``H_0 = I / jacobian_guess``, and steps ``z <- z + alpha p`` with ``p = -H F(z)``.
    After each step the Sherman-Morrison rank-one update

    ``H <- H + (dz - H df) (dz^T H) / (dz^T H df)``

    makes ``H`` satisfy the secant condition ``H df = dz``. The memory holds ``history``
    rank-one terms; when full it restarts from ``H_0``.

    ``jacobian_guess`` must match the sign (and roughly the scale) of ``dF/dz``: ``+1`` for
    residuals written as ``F(z) = z + g(z) - y`` (Jacobian ``I + J_g``), ``-1`` for the ImpFlow
    paper's ``F(z) = g_x(x) - g_z(z) + x - z`` (Jacobian ``-(I + J_gz)``).

    With ``line_search="armijo"``, each sample backtracks ``alpha = 1, 1/2, 1/4, ...`` until
    the derivative-free sufficient-decrease condition ``||F(z + alpha p)|| <= (1 - 1e-4 alpha)
    ||F(z)||`` holds; a sample whose search fails takes the last trial step and its Broyden
    memory is reset (the quasi-Newton direction was poor). Stop test, per-sample freezing and
    failure policy as in :func:`fixed_point`.

    Args:
        fn: ``F``, maps ``(*batch, *event)`` to the same shape; samples must be independent.
        z0: start point, shape ``(*batch, *event)``.
        atol: absolute tolerance (dtype default).
        rtol: relative tolerance (dtype default).
        max_iter: maximum number of quasi-Newton steps.
        history: maximum rank of the inverse-Jacobian correction.
        line_search: ``"armijo"`` (backtracking) or ``"none"`` (full steps).
        jacobian_guess: scalar ``s`` with ``dF/dz ~ s I``; must be non-zero.
        max_backtracks: maximum halvings per step of the line search.
        event_dims: number of trailing dimensions forming one problem.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult`.

    References:
        Broyden, "A class of methods for solving nonlinear simultaneous equations", 1965.
        Li & Fukushima, "A derivative-free line search and global convergence of
        Broyden-like method for nonlinear equations", 2000.
    """
    if not isinstance(history, int) or history < 1:
        raise ValueError(f"broyden: history must be a positive int, got {history!r}")
    if line_search not in ("armijo", "none"):
        raise ValueError(f"broyden: line_search must be 'armijo' or 'none', got {line_search!r}")
    if jacobian_guess == 0 or not torch.isfinite(torch.tensor(float(jacobian_guess))):
        raise ValueError(
            f"broyden: jacobian_guess must be finite and non-zero, got {jacobian_guess!r}"
        )
    if not isinstance(max_backtracks, int) or max_backtracks < 0:
        raise ValueError(f"broyden: max_backtracks must be an int >= 0, got {max_backtracks!r}")
    prob = FlatProblem(
        fn,
        z0,
        event_dims=event_dims,
        atol=atol,
        rtol=rtol,
        max_iter=max_iter,
        on_failure=on_failure,
        name="broyden",
    )
    c1 = 1e-4
    with torch.no_grad():
        z = prob.z0
        b, n = z.shape
        f = prob(z)
        tracker = Tracker(z, f, prob.atol, prob.rtol)
        inv = _LowRankInverse(b, n, history, 1.0 / jacobian_guess, z)
        for _ in range(max_iter):
            if tracker.done:
                break
            active = tracker.active
            p = torch.where(active[:, None], -inv.matvec(f), torch.zeros_like(f))
            fnorm = torch.linalg.vector_norm(f, dim=-1)
            alpha = torch.ones(b, dtype=z.dtype, device=z.device)
            z_new = z + p
            f_new = prob(z_new)
            searching = active.clone()
            if line_search == "armijo":
                for _ in range(max_backtracks):
                    new_norm = torch.linalg.vector_norm(f_new, dim=-1)
                    ok = torch.isfinite(new_norm) & (new_norm <= (1.0 - c1 * alpha) * fnorm)
                    searching = active & ~ok
                    if not bool(searching.any()):
                        break
                    alpha = torch.where(searching, 0.5 * alpha, alpha)
                    z_try = z + alpha[:, None] * p
                    f_try = prob(z_try)
                    z_new = torch.where(searching[:, None], z_try, z_new)
                    f_new = torch.where(searching[:, None], f_try, f_new)
                else:
                    new_norm = torch.linalg.vector_norm(f_new, dim=-1)
                    ok = torch.isfinite(new_norm) & (new_norm <= (1.0 - c1 * alpha) * fnorm)
                    searching = active & ~ok
            dz = z_new - z
            df = f_new - f
            h_df = inv.matvec(df)
            dz_h = inv.rmatvec(dz)
            denom = (dz * h_df).sum(dim=-1)
            finite = torch.isfinite(f_new).all(dim=-1)
            tiny = torch.finfo(z.dtype).eps * (dz.norm(dim=-1) * h_df.norm(dim=-1)).clamp_min(
                torch.finfo(z.dtype).tiny
            )
            valid = active & finite & (denom.abs() > tiny)
            safe = torch.where(valid, denom, torch.ones_like(denom))
            u = torch.where(valid[:, None], (dz - h_df) / safe[:, None], torch.zeros_like(dz))
            inv.add(u, torch.where(valid[:, None], dz_h, torch.zeros_like(dz_h)))
            if line_search == "armijo":
                inv.reset(searching)
            z = torch.where(active[:, None], z_new, z)
            f = torch.where(active[:, None], f_new, f)
            tracker.update(z, f)
    return apply_failure_policy(prob.result(tracker), on_failure)


@dataclass(frozen=True)
class Broyden:
    """Configured :func:`broyden` solver, for composing into blocks."""

    atol: float | None = None
    rtol: float | None = None
    max_iter: int = 50
    history: int = 20
    line_search: LineSearch = "armijo"
    jacobian_guess: float = 1.0
    on_failure: OnFailure = "raise"

    def __call__(
        self, fn: Callable[[Tensor], Tensor], z0: Tensor, *, event_dims: int = 1
    ) -> SolverResult:
        """Run :func:`broyden` with this configuration."""
        return broyden(
            fn,
            z0,
            atol=self.atol,
            rtol=self.rtol,
            max_iter=self.max_iter,
            history=self.history,
            line_search=self.line_search,
            jacobian_guess=self.jacobian_guess,
            event_dims=event_dims,
            on_failure=self.on_failure,
        )
