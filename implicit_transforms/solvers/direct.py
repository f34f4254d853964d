r"""A linear system with a known matrix, solved in one batched factorisation.

Where a block already holds the full Jacobian ``dF/dz`` of its residual at the root (small
events, whose exact log-det assembles it), the adjoint system of the implicit gradient needs
no iterations: it is one batched LU solve. The result is a
:class:`~implicit_transforms.solvers.SolverResult` like an iterative solver's (zero
iterations), checked against the same per-sample tolerance and failure policy, so a
non-finite matrix is never silent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from implicit_transforms.solvers._common import check_common, default_tolerances
from implicit_transforms.solvers.result import (
    OnFailure,
    SolverResult,
    apply_failure_policy,
    make_result,
)

__all__ = ["dense_solve"]


def dense_solve(
    matrix: Tensor,
    target: Tensor,
    *,
    transpose: bool = False,
    event_dims: int = 1,
    atol: float | None = None,
    rtol: float | None = None,
    on_failure: OnFailure = "raise",
) -> SolverResult:
    r"""Solve ``M w = t`` (or ``M^T w = t``) per sample, with ``M`` given as a dense matrix.

    .. math:: M_b\, w_b = t_b \quad\text{or}\quad M_b^\top w_b = t_b, \qquad b \in \text{batch}

    The factorisation runs in float64 whatever the input dtype (the systems are small: this
    path is for events of at most a few dozen elements), and the residual of the returned
    ``w`` (rounded to the input's dtype) is checked against ``atol + rtol * ||w||`` like an
    iterative solver's stop test. A sample whose matrix or target is not finite, or whose
    matrix is singular, fails the check and the failure policy applies.

    Args:
        matrix: ``M``, shape ``(*batch, N, N)``, ``N = prod(event)``.
        target: ``t``, shape ``(*batch, *event)``.
        transpose: solve with ``M^T`` (the adjoint system of an implicit solve).
        event_dims: number of trailing dimensions of ``target`` forming one problem.
        atol: absolute tolerance of the residual check (default: the dtype's, or the
            :func:`~implicit_transforms.solvers.solver_tolerance` scope's).
        rtol: relative tolerance of the residual check.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` when a sample fails the check.

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult` with ``root = w`` of ``target``'s
        shape, zero iterations and zero evaluations of any function.

    Raises:
        ValueError: for a matrix whose shape does not match ``target``'s events.
        ConvergenceError: when a sample fails the residual check and ``on_failure="raise"``.

    Example:
        >>> import torch
        >>> m = torch.tensor([[[2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
        >>> res = dense_solve(m, torch.tensor([[3.0, 1.0]], dtype=torch.float64))
        >>> res.root.tolist(), bool(res.converged.all()), res.num_evals
        ([[1.0, 1.0]], True, 0)
    """
    check_common("dense_solve", atol=atol, rtol=rtol, max_iter=1, on_failure=on_failure)
    if not 0 <= event_dims <= target.dim():
        raise ValueError(
            f"dense_solve: event_dims must be in [0, {target.dim()}], got {event_dims}"
        )
    batch = target.shape[: target.dim() - event_dims]
    event = target.shape[target.dim() - event_dims :]
    n = math.prod(event)
    if matrix.shape != (*batch, n, n):
        raise ValueError(
            f"dense_solve: matrix must have shape {(*batch, n, n)} for a target of shape "
            f"{tuple(target.shape)} with event_dims={event_dims}, got {tuple(matrix.shape)}"
        )
    atol, rtol = default_tolerances(target.dtype, atol, rtol)
    m = matrix.detach().reshape(-1, n, n).to(torch.float64)
    if transpose:
        m = m.mT
    t = target.detach().reshape(-1, n).to(torch.float64)
    finite = torch.isfinite(m).flatten(1).all(1) & torch.isfinite(t).all(1)
    safe_m = torch.where(finite[:, None, None], m, torch.eye(n, dtype=m.dtype, device=m.device))
    w64, info = torch.linalg.solve_ex(safe_m, torch.where(finite[:, None], t, 0.0))
    w = w64.to(target.dtype)
    resid = torch.linalg.vector_norm((m @ w.to(torch.float64)[..., None])[..., 0] - t, dim=-1)
    ok = finite & (info == 0) & torch.isfinite(resid)
    nonfinite = ~ok
    resid = torch.where(ok, resid, torch.full_like(resid, math.inf))
    bound = atol + rtol * torch.linalg.vector_norm(w64, dim=-1)
    converged = ok & (resid <= bound)
    result = make_result(
        root=torch.where(ok[:, None], w, torch.full_like(w, math.nan)),
        residual=resid.to(target.dtype),
        iterations=torch.zeros(w.shape[0], dtype=torch.long, device=w.device),
        converged=converged,
        nonfinite=nonfinite,
        num_evals=0,
        sample_evals=0,
        batch_shape=batch,
        event_shape=event,
        solver="dense_solve",
    )
    return apply_failure_policy(result, on_failure)
