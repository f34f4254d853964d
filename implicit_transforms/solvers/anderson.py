"""Anderson acceleration of the fixed-point iteration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from implicit_transforms.solvers._common import FlatProblem, Tracker
from implicit_transforms.solvers.result import OnFailure, SolverResult, apply_failure_policy

__all__ = ["Anderson", "anderson"]


def anderson(
    fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_iter: int = 100,
    history: int = 5,
    mixing: float = 1.0,
    regularization: float = 1e-8,
    event_dims: int = 1,
    on_failure: OnFailure = "raise",
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by Anderson acceleration of ``T(z) = z - F(z)``.

    With the last ``m`` iterates ``z_i`` and images ``T(z_i)``, residuals ``r_i = -F(z_i)``,
    each sample solves ``min_a ||sum_i a_i r_i||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``z <- mixing * sum_i a_i T(z_i) + (1 - mixing) * sum_i a_i z_i``.

    Stop test, per-sample freezing and failure policy as in :func:`fixed_point`.

    Args:
        fn: ``F``, maps ``(*batch, *event)`` to the same shape; samples must be independent.
        z0: start point, shape ``(*batch, *event)``.
        atol: absolute tolerance (dtype default).
        rtol: relative tolerance (dtype default).
        max_iter: maximum number of iterations.
        history: number ``m >= 1`` of past iterates mixed.
        mixing: damping ``beta`` in ``(0, 1]``.
        regularization: Tikhonov term added (relative to the Gram diagonal) to the
            least-squares problem for numerical stability.
        event_dims: number of trailing dimensions forming one problem.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult`.

    References:
        Walker & Ni, "Anderson acceleration for fixed-point iterations", 2011.
    """
    if not isinstance(history, int) or history < 1:
        raise ValueError(f"anderson: history must be a positive int, got {history!r}")
    if not 0.0 < mixing <= 1.0:
        raise ValueError(f"anderson: mixing must be in (0, 1], got {mixing!r}")
    prob = FlatProblem(
        fn,
        z0,
        event_dims=event_dims,
        atol=atol,
        rtol=rtol,
        max_iter=max_iter,
        on_failure=on_failure,
        name="anderson",
    )
    with torch.no_grad():
        z = prob.z0
        b, n = z.shape
        f = prob(z)
        tracker = Tracker(z, f, prob.atol, prob.rtol)
        zs = z.new_zeros(b, history, n)
        ts = z.new_zeros(b, history, n)
        for k in range(max_iter):
            if tracker.done:
                break
            slot = k % history
            zs[:, slot] = z
            ts[:, slot] = z - f
            m = min(k + 1, history)
            r = ts[:, :m] - zs[:, :m]
            gram = r @ r.transpose(1, 2)
            diag = gram.diagonal(dim1=1, dim2=2)
            reg = regularization * diag.amax(dim=1).clamp_min(torch.finfo(z.dtype).tiny)
            gram = gram + reg[:, None, None] * torch.eye(m, dtype=z.dtype, device=z.device)
            # Bordered system [[0, 1^T], [1, G]] [mu; a] = [1; 0] enforces sum(a) = 1.
            h = z.new_zeros(b, m + 1, m + 1)
            h[:, 0, 1:] = 1.0
            h[:, 1:, 0] = 1.0
            h[:, 1:, 1:] = gram
            rhs = z.new_zeros(b, m + 1, 1)
            rhs[:, 0] = 1.0
            sol = torch.linalg.solve(h, rhs)
            a = sol[:, 1:, 0]
            a = torch.where(
                torch.isfinite(a).all(dim=1, keepdim=True), a, torch.full_like(a, 1.0 / m)
            )
            mixed_t = torch.einsum("bm,bmn->bn", a, ts[:, :m])
            mixed_z = torch.einsum("bm,bmn->bn", a, zs[:, :m])
            z_new = mixing * mixed_t + (1.0 - mixing) * mixed_z
            z = torch.where(tracker.active[:, None], z_new, z)
            f = prob(z)
            tracker.update(z, f)
    return apply_failure_policy(prob.result(tracker), on_failure)


@dataclass(frozen=True)
class Anderson:
    """Configured :func:`anderson` solver, for composing into blocks."""

    atol: float | None = None
    rtol: float | None = None
    max_iter: int = 100
    history: int = 5
    mixing: float = 1.0
    on_failure: OnFailure = "raise"

    def __call__(
        self, fn: Callable[[Tensor], Tensor], z0: Tensor, *, event_dims: int = 1
    ) -> SolverResult:
        """Run :func:`anderson` with this configuration."""
        return anderson(
            fn,
            z0,
            atol=self.atol,
            rtol=self.rtol,
            max_iter=self.max_iter,
            history=self.history,
            mixing=self.mixing,
            event_dims=event_dims,
            on_failure=self.on_failure,
        )
