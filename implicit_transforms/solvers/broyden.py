"""Broyden's quasi-Newton method with a limited-memory inverse Jacobian."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from implicit_transforms.solvers._common import ActiveSet, FlatProblem
from implicit_transforms.solvers.base import SolverConfig
from implicit_transforms.solvers.result import (
    OnFailure,
    SolverResult,
    WarmState,
    apply_failure_policy,
)

__all__ = ["Broyden", "InverseJacobian", "broyden"]

LineSearch = Literal["none", "armijo"]

_FIRST_CAPACITY = 8  # low-rank terms allocated at first (most solves converge within 8)


class InverseJacobian:
    """Per-sample approximation ``H`` of an inverse Jacobian ``(dF/dz)^{-1}``, updated by
    Broyden's rank-one (Sherman-Morrison) steps.

    Dense ``H: (A, N, N)`` when ``N <= memory`` (exact Broyden, no truncation); otherwise
    ``H = h0 I + U V`` with ``U: (A, N, k)``, ``V: (A, k, N)`` holding the ``k <= m`` rank-one
    terms in use (only those are allocated, copied and compacted: at ``N = 64`` and 256 samples
    this made an ImpFlow or Monotone training step 24-31% cheaper than a full ``m = 40``
    memory, 44-50% at ``N = 256``), restarted from ``h0 I`` when full: the terms are products of successive updates, and
    dropping only the oldest leaves an ``H`` that no longer satisfies the earlier secant
    conditions (measured: restarting needs up to 40% fewer evaluations, see
    ``benchmarks/README.md``).

    A solve's final approximation (in :attr:`SolverResult.warm_state`) can start another
    solve whose Jacobian is related: the adjoint of an implicit solve has Jacobian
    ``(dF/dz)^T``, whose inverse :meth:`transpose` approximates.

    Example:
        >>> import torch
        >>> y = torch.randn(4, 3, dtype=torch.float64)
        >>> H = broyden(lambda z: 2.0 * z - y, y).warm_state  # dF/dz = 2 I
        >>> H.rows, H.matvec(torch.ones(4, 3, dtype=torch.float64)).shape
        (4, torch.Size([4, 3]))
    """

    def __init__(
        self,
        h0: float,
        dense: Tensor | None,
        u: Tensor | None,
        v: Tensor | None,
        count: int,
        memory: int | None = None,
    ) -> None:
        self.h0, self.dense, self.u, self.v, self.count = h0, dense, u, v, count
        # Low rank: at most ``memory`` terms; ``u``/``v`` are allocated as terms arrive (their
        # capacity grows by doubling), and only the first ``count`` terms are ever read, so
        # compaction, resets and copies move the terms in use, not the whole memory.
        self.memory = memory if memory is not None or u is None else int(u.shape[2])

    @classmethod
    def identity(cls, b: int, n: int, memory: int, h0: float, like: Tensor) -> InverseJacobian:
        """``h0 I`` for ``b`` samples of size ``n``."""
        if n <= memory:
            eye = torch.eye(n, dtype=like.dtype, device=like.device)
            return cls(h0, (h0 * eye).expand(b, n, n).clone(), None, None, 0)
        first = min(memory, _FIRST_CAPACITY)
        return cls(h0, None, like.new_zeros(b, n, first), like.new_zeros(b, first, n), 0, memory)

    @property
    def rows(self) -> int:
        """Number of samples."""
        return int((self.dense if self.dense is not None else self.u).shape[0])  # type: ignore[union-attr]

    def matvec(self, x: Tensor) -> Tensor:
        """``H x`` for ``x: (A, N)``."""
        if self.dense is not None:
            return torch.bmm(self.dense, x[:, :, None])[..., 0]
        assert self.u is not None and self.v is not None
        k = self.count
        if k == 0:
            return self.h0 * x
        inner = torch.bmm(self.v[:, :k], x[:, :, None])
        return self.h0 * x + torch.bmm(self.u[:, :, :k], inner)[..., 0]

    def rmatvec(self, x: Tensor) -> Tensor:
        """``x^T H`` for ``x: (A, N)``."""
        if self.dense is not None:
            return torch.bmm(x[:, None, :], self.dense)[:, 0]
        assert self.u is not None and self.v is not None
        k = self.count
        if k == 0:
            return self.h0 * x
        inner = torch.bmm(x[:, None, :], self.u[:, :, :k])
        return self.h0 * x + torch.bmm(inner, self.v[:, :k])[:, 0]

    def add(self, u: Tensor, v: Tensor) -> None:
        """Add the rank-one term ``u v^T`` (rows with ``u = 0`` are unchanged)."""
        if self.dense is not None:
            self.dense += u[:, :, None] * v[:, None, :]
            return
        assert self.u is not None and self.v is not None and self.memory is not None
        if self.count == self.memory:  # full: restart from h0 I (old terms are never read)
            self.count = 0
        self._reserve(self.count + 1)
        self.u[:, :, self.count] = u
        self.v[:, self.count, :] = v
        self.count += 1

    def _reserve(self, terms: int) -> None:
        """Grow ``u``/``v`` (zero-filled) to hold at least ``terms`` terms."""
        assert self.u is not None and self.v is not None and self.memory is not None
        have = self.u.shape[2]
        if terms <= have:
            return
        new = min(max(terms, 2 * have, 4), max(self.memory, terms))
        a, n = self.u.shape[0], self.u.shape[1]
        self.u = torch.cat([self.u, self.u.new_zeros(a, n, new - have)], dim=2)
        self.v = torch.cat([self.v, self.v.new_zeros(a, new - have, n)], dim=1)

    def reset(self, mask: Tensor) -> None:
        """Back to ``h0 I`` for the samples in ``mask``."""
        if self.dense is not None:
            n = self.dense.shape[1]
            eye = self.h0 * torch.eye(n, dtype=self.dense.dtype, device=self.dense.device)
            self.dense = torch.where(mask[:, None, None], eye, self.dense)
            return
        assert self.u is not None and self.v is not None
        k = self.count
        keep = (~mask).to(self.u.dtype)
        self.u[:, :, :k] *= keep[:, None, None]
        self.v[:, :k] *= keep[:, None, None]

    def keep(self, mask: Tensor) -> None:
        """Keep the samples in ``mask`` (compaction)."""
        if self.dense is not None:
            self.dense = self.dense[mask]
        else:
            assert self.u is not None and self.v is not None
            k = self.count
            self.u, self.v = self.u[:, :, :k][mask], self.v[:, :k][mask]

    def write(self, into: InverseJacobian, mask: Tensor, rows: Tensor) -> None:
        """Copy the samples in ``mask`` into ``into`` at batch rows ``rows``."""
        if self.dense is not None and into.dense is not None:
            into.dense[rows] = self.dense[mask]
        elif (
            self.u is not None and self.v is not None and into.u is not None and into.v is not None
        ):
            k = self.count
            into._reserve(k)
            assert into.u is not None and into.v is not None
            into.u[rows, :, :k] = self.u[:, :, :k][mask]
            into.v[rows, :k] = self.v[:, :k][mask]
            into.count = max(into.count, k)

    def transpose(self) -> InverseJacobian:
        """The approximation of ``(dF/dz)^{-T}``: ``H^T``."""
        if self.dense is not None:
            return InverseJacobian(self.h0, self.dense.mT.contiguous(), None, None, 0)
        assert self.u is not None and self.v is not None
        k = self.count
        return InverseJacobian(
            self.h0,
            None,
            self.v[:, :k].mT.contiguous(),
            self.u[:, :, :k].mT.contiguous(),
            k,
            self.memory,
        )

    def reshaped_like(self, b: int, n: int, memory: int) -> InverseJacobian | None:
        """A copy of this approximation if it fits ``b`` samples of size ``n`` with at most
        ``memory`` terms, else ``None`` (a solve updates its copy, never the original)."""
        if self.rows != b:
            return None
        if self.dense is not None:
            if self.dense.shape[1] != n or n > memory:
                return None
            return InverseJacobian(self.h0, self.dense.clone(), None, None, 0)
        assert self.u is not None and self.v is not None
        if self.u.shape[1] != n or n <= memory or self.memory != memory:
            return None
        k = self.count
        return InverseJacobian(
            self.h0, None, self.u[:, :, :k].clone(), self.v[:, :k].clone(), k, memory
        )


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
    check_every: int | None = None,
    warm_start: WarmState | None = None,
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by Broyden's ("good") quasi-Newton method.

    Keeps per sample an approximation ``H`` of the inverse Jacobian ``(dF/dz)^{-1}``, starting
    from ``H_0 = I / jacobian_guess``, and steps ``z <- z + p`` with ``p = -H F(z)``. After
    each step the Sherman-Morrison rank-one update

    .. math:: H \leftarrow H + \frac{(\Delta z - H\,\Delta F)\,\Delta z^\top H}
        {\Delta z^\top H\,\Delta F}

    makes ``H`` satisfy the secant condition ``H df = dz``. Events of at most ``history``
    elements keep ``H`` dense; larger ones hold ``history`` rank-one terms and restart from
    ``H_0`` when full (see :class:`InverseJacobian`). Converged samples leave the iteration.

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
        check_every: iterations between host reads of the convergence state (see
            :func:`fixed_point`).
        warm_start: a starting approximation of ``(dF/dz)^{-1}`` for every sample (an
            :class:`InverseJacobian`, e.g. the transpose of a related solve's, for an adjoint
            system); ignored when it is another solver's state or its shape does not fit.

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult` whose ``warm_state`` holds
        each sample's final approximation (an :class:`InverseJacobian`).

    References:
        Broyden, "A class of methods for solving nonlinear simultaneous equations", 1965.
        Li & Fukushima, "A derivative-free line search and global convergence of
        Broyden-like method for nonlinear equations", 2000.

    Example:
        Invert ``y = z + 0.9 sin(z)`` (a contraction of rate 0.9) per sample:

        >>> import torch
        >>> y = torch.randn(5, 3, dtype=torch.float64)
        >>> res = broyden(lambda z: z + 0.9 * torch.sin(z) - y, y)
        >>> res.status.name, res.root.shape, bool((res.residual < 1e-10).all())
        ('SUCCESS', torch.Size([5, 3]), True)
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
        check_every=check_every,
    )
    c1 = 1e-4
    with torch.no_grad():
        run = ActiveSet(prob)
        z, f = run.z, run.f
        b, n = prob.z0.shape
        h0 = 1.0 / jacobian_guess
        start = (
            warm_start.reshaped_like(b, n, history)
            if isinstance(warm_start, InverseJacobian)
            else None
        )
        if start is not None and run.rows is not None:  # samples that converged at z0 left
            start.keep(_mask_of(run.rows, b))
        inv = start or InverseJacobian.identity(z.shape[0], n, history, h0, z)
        final = InverseJacobian.identity(b, n, history, h0, z)
        run.on_finish(lambda leaving, rows: inv.write(final, leaving, rows))
        best_f = f.clone()
        fresh = torch.full((z.shape[0],), start is None, dtype=torch.bool, device=z.device)
        for _ in range(max_iter):
            if run.done:
                break
            active = run.active
            p = -inv.matvec(f)
            z_new = z + p
            f_new = run.evaluate(z_new)
            if line_search == "armijo":
                fnorm = torch.linalg.vector_norm(f, dim=-1)
                alpha = torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
                for _ in range(max_backtracks):
                    new_norm = torch.linalg.vector_norm(f_new, dim=-1)
                    ok = torch.isfinite(new_norm) & (new_norm <= (1.0 - c1 * alpha) * fnorm)
                    searching = active & ~ok
                    if not bool(searching.any()):
                        break
                    alpha = torch.where(searching, 0.5 * alpha, alpha)
                    z_try = z + alpha[:, None] * p
                    f_try = run.evaluate(z_try)
                    z_new = torch.where(searching[:, None], z_try, z_new)
                    f_new = torch.where(searching[:, None], f_try, f_new)
            new_norm = torch.linalg.vector_norm(f_new, dim=-1)
            accept = torch.isfinite(new_norm) & (new_norm <= max_growth * run.tracker.best_residual)
            accept &= torch.isfinite(z_new).all(dim=-1)
            # A rejected sample that had just restarted has nothing left to fall back on.
            give_up = active & ~accept & fresh
            reject = active & ~accept & ~fresh
            take = active & accept
            dz = z_new - z
            df = f_new - f
            h_df = inv.matvec(df)
            denom = (dz * h_df).sum(dim=-1)
            small = torch.finfo(z.dtype).eps * (dz.norm(dim=-1) * h_df.norm(dim=-1))
            valid = take & (denom.abs() > small.clamp_min(torch.finfo(z.dtype).tiny))
            safe = torch.where(valid, denom, torch.ones_like(denom))
            u = torch.where(valid[:, None], (dz - h_df) / safe[:, None], torch.zeros_like(dz))
            inv.add(u, inv.rmatvec(dz))
            inv.reset(reject)
            fresh = (fresh & ~take) | reject
            moved = take | give_up
            z = torch.where(
                moved[:, None], z_new, torch.where(reject[:, None], run.tracker.best, z)
            )
            f = torch.where(moved[:, None], f_new, torch.where(reject[:, None], best_f, f))
            before = run.tracker.best_residual
            keep = run.update(z, f)
            improved = run.tracker.best_residual < (before if keep is None else before[keep])
            if keep is not None:
                z, f = run.z, run.f
                best_f, fresh = best_f[keep], fresh[keep]
                inv.keep(keep)
            best_f = torch.where(improved[:, None], f, best_f)
    result = run.result()
    return apply_failure_policy(dataclasses.replace(result, warm_state=final), on_failure)


def _mask_of(rows: Tensor, b: int) -> Tensor:
    mask = torch.zeros(b, dtype=torch.bool, device=rows.device)
    mask[rows] = True
    return mask


@dataclass(frozen=True)
class Broyden(SolverConfig):
    """Configured :func:`~implicit_transforms.solvers.broyden` solver, for composing into blocks
    (fields: its keyword arguments).

    Example:
        >>> import torch
        >>> solver = Broyden(max_iter=50, on_failure="warn")
        >>> y = torch.ones(2, 4, dtype=torch.float64)
        >>> solver(lambda z: z + 0.5 * torch.tanh(z) - y, y).status.name
        'SUCCESS'
    """

    max_iter: int = 100
    history: int = 40
    line_search: LineSearch = "none"
    jacobian_guess: float = 1.0
    max_backtracks: int = 8
    max_growth: float = 100.0
    check_every: int | None = None

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
