"""Broyden's quasi-Newton method with a limited-memory inverse Jacobian."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from implicit_transforms.solvers._common import FlatProblem, Tracker
from implicit_transforms.solvers.base import SolverConfig
from implicit_transforms.solvers.result import OnFailure, SolverResult, apply_failure_policy

__all__ = ["Broyden", "broyden"]

LineSearch = Literal["none", "armijo"]


class _LowRankInverse:
    """Per-sample ``H = h0 I + sum_i u_i v_i^T`` with at most ``m`` rank-one terms.

    ``U: (B, N, m)``, ``V: (B, m, N)``. When the memory is full it restarts from ``h0 I``: the
    terms are products of successive Sherman-Morrison updates, and dropping only the oldest
    one leaves an ``H`` that no longer satisfies the earlier secant conditions (measured:
    restarting needs up to 40% fewer evaluations than dropping the oldest term, see
    ``benchmarks/README.md``).
    """

    def __init__(self, b: int, n: int, m: int, h0: float, like: Tensor) -> None:
        self.h0 = h0
        self.u = like.new_zeros(b, n, m)
        self.v = like.new_zeros(b, m, n)
        self.m = m
        self.count = 0

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
        if self.count == self.m:
            self.u.zero_()
            self.v.zero_()
            self.count = 0
        self.u[:, :, self.count] = u
        self.v[:, self.count, :] = v
        self.count += 1

    def reset(self, mask: Tensor) -> None:
        """Forget every term of the samples in ``mask`` (back to ``h0 I``)."""
        keep = (~mask).to(self.u.dtype)
        self.u *= keep[:, None, None]
        self.v *= keep[:, None, None]


def _check(
    history: int, line_search: str, jacobian_guess: float, max_backtracks: int, max_growth: float
) -> None:
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"broyden: history must be a positive int, got {history!r}")
    if line_search not in ("none", "armijo"):
        raise ValueError(f"broyden: line_search must be 'none' or 'armijo', got {line_search!r}")
    if (
        isinstance(jacobian_guess, bool)
        or not isinstance(jacobian_guess, (int, float))
        or jacobian_guess == 0
        or not math.isfinite(jacobian_guess)
    ):
        raise ValueError(
            f"broyden: jacobian_guess must be finite and non-zero, got {jacobian_guess!r}"
        )
    if (
        isinstance(max_backtracks, bool)
        or not isinstance(max_backtracks, int)
        or max_backtracks < 0
    ):
        raise ValueError(f"broyden: max_backtracks must be an int >= 0, got {max_backtracks!r}")
    if not isinstance(max_growth, (int, float)) or not max_growth > 1:
        raise ValueError(f"broyden: max_growth must be a number > 1 (or inf), got {max_growth!r}")


def broyden(
    fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_iter: int = 100,
    history: int = 40,
    line_search: LineSearch = "none",
    jacobian_guess: float = 1.0,
    max_backtracks: int = 8,
    max_growth: float = 100.0,
    event_dims: int = 1,
    on_failure: OnFailure = "raise",
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by Broyden's ("good") quasi-Newton method.

    Keeps per sample an approximation ``H`` of the inverse Jacobian ``(dF/dz)^{-1}``, starting
    from ``H_0 = I / jacobian_guess``, and steps ``z <- z + p`` with ``p = -H F(z)``. After
    each step the Sherman-Morrison rank-one update

    ``H <- H + (dz - H df) (dz^T H) / (dz^T H df)``

    makes ``H`` satisfy the secant condition ``H df = dz``. The memory holds ``history``
    rank-one terms and restarts from ``H_0`` when full; no other event resets it.

    Safeguard without extra evaluations: a step whose residual is not finite or exceeds
    ``max_growth`` times the sample's best residual is rejected; the sample returns to its
    best iterate with ``H = H_0`` (a plain fixed-point step next). A sample rejected again
    straight after such a restart is reported as non-finite/diverged.

    ``line_search="armijo"`` additionally backtracks ``alpha = 1, 1/2, ...`` (up to
    ``max_backtracks`` times) until ``||F(z + alpha p)|| <= (1 - 1e-4 alpha) ||F(z)||``. Each
    backtrack evaluates ``F`` again, and on residuals near their Lipschitz limit the monotone
    condition rejects good quasi-Newton steps: it is off by default (measured in
    ``benchmarks/README.md``).

    ``jacobian_guess`` must match the sign (and roughly the scale) of ``dF/dz``: ``+1`` for
    residuals written as ``F(z) = z + g(z) - y`` (Jacobian ``I + J_g``), ``-1`` for the ImpFlow
    paper's ``F(z) = g_x(x) - g_z(z) + x - z`` (Jacobian ``-(I + J_gz)``).

    Stop test, per-sample freezing and failure policy as in :func:`fixed_point`.

    Args:
        fn: ``F``, maps ``(*batch, *event)`` to the same shape; samples must be independent.
        z0: start point, shape ``(*batch, *event)``.
        atol: absolute tolerance (dtype default).
        rtol: relative tolerance (dtype default).
        max_iter: maximum number of quasi-Newton steps.
        history: number of rank-one terms kept before a restart.
        line_search: ``"none"`` (full steps, default) or ``"armijo"`` (backtracking).
        jacobian_guess: scalar ``s`` with ``dF/dz ~ s I``; must be non-zero.
        max_backtracks: maximum halvings per step of the Armijo line search.
        max_growth: residual growth factor (over the best residual) that rejects a step.
        event_dims: number of trailing dimensions forming one problem.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult`.

    References:
        Broyden, "A class of methods for solving nonlinear simultaneous equations", 1965.
        Li & Fukushima, "A derivative-free line search and global convergence of
        Broyden-like method for nonlinear equations", 2000.
    """
    _check(history, line_search, jacobian_guess, max_backtracks, max_growth)
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
        best_f = f.clone()
        inv = _LowRankInverse(b, n, history, 1.0 / jacobian_guess, z)
        fresh = torch.ones(b, dtype=torch.bool, device=z.device)  # H = H_0 for these samples
        for _ in range(max_iter):
            if tracker.done:
                break
            active = tracker.active
            p = torch.where(active[:, None], -inv.matvec(f), torch.zeros_like(f))
            z_new = z + p
            f_new = prob(z_new)
            if line_search == "armijo":
                fnorm = torch.linalg.vector_norm(f, dim=-1)
                alpha = torch.ones(b, dtype=z.dtype, device=z.device)
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
            new_norm = torch.linalg.vector_norm(f_new, dim=-1)
            finite = torch.isfinite(f_new).all(dim=-1) & torch.isfinite(z_new).all(dim=-1)
            accept = finite & (new_norm <= max_growth * tracker.best_residual)
            # A rejected sample that had just restarted has nothing left to fall back on.
            give_up = active & ~accept & fresh
            reject = active & ~accept & ~fresh
            dz = z_new - z
            df = f_new - f
            h_df = inv.matvec(df)
            dz_h = inv.rmatvec(dz)
            denom = (dz * h_df).sum(dim=-1)
            small = torch.finfo(z.dtype).eps * (dz.norm(dim=-1) * h_df.norm(dim=-1))
            valid = active & accept & (denom.abs() > small.clamp_min(torch.finfo(z.dtype).tiny))
            safe = torch.where(valid, denom, torch.ones_like(denom))
            u = torch.where(valid[:, None], (dz - h_df) / safe[:, None], torch.zeros_like(dz))
            inv.add(u, torch.where(valid[:, None], dz_h, torch.zeros_like(dz_h)))
            inv.reset(reject)
            fresh = (fresh & ~(active & accept)) | reject
            take = (active & accept) | give_up
            z = torch.where(take[:, None], z_new, torch.where(reject[:, None], tracker.best, z))
            f = torch.where(take[:, None], f_new, torch.where(reject[:, None], best_f, f))
            before = tracker.best_residual
            tracker.update(z, f)
            improved = tracker.best_residual < before
            best_f = torch.where(improved[:, None], f, best_f)
    return apply_failure_policy(prob.result(tracker), on_failure)


@dataclass(frozen=True)
class Broyden(SolverConfig):
    """Configured :func:`broyden` solver, for composing into blocks (fields: its keyword
    arguments)."""

    max_iter: int = 100
    history: int = 40
    line_search: LineSearch = "none"
    jacobian_guess: float = 1.0
    max_backtracks: int = 8
    max_growth: float = 100.0

    _function = staticmethod(broyden)
    _name = "broyden"

    def _check(self) -> None:
        _check(
            self.history,
            self.line_search,
            self.jacobian_guess,
            self.max_backtracks,
            self.max_growth,
        )
