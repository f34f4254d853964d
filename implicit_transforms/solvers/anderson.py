"""Anderson acceleration of the fixed-point iteration."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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

__all__ = ["Anderson", "anderson", "default_regularization"]


def default_regularization(dtype: torch.dtype) -> float:
    """Anderson's default Tikhonov weight for a dtype: ``sqrt(eps)`` (1.5e-8 in float64,
    3.5e-4 in float32).

    The least-squares problem is solved through its Gram matrix, whose rounding errors are of
    order ``eps`` times its largest entry; a regularisation below that level leaves the
    matrix numerically singular.

    Args:
        dtype: a floating-point dtype.

    Returns:
        ``sqrt(eps(dtype))``, relative to the largest diagonal entry of the Gram matrix.

    Example:
        >>> import torch
        >>> f"{default_regularization(torch.float32):.1e}"
        '3.5e-04'
    """
    return math.sqrt(float(torch.finfo(dtype).eps))


def _check(history: int, mixing: float, regularization: float | None) -> None:
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"anderson: history must be a positive int, got {history!r}")
    if not isinstance(mixing, (int, float)) or not 0.0 < mixing <= 1.0:
        raise ValueError(f"anderson: mixing must be in (0, 1], got {mixing!r}")
    if regularization is not None and (
        not isinstance(regularization, (int, float))
        or not math.isfinite(regularization)
        or regularization < 0
    ):
        raise ValueError(
            f"anderson: regularization must be a finite float >= 0 or None, got {regularization!r}"
        )


def anderson(
    fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_iter: int = 100,
    history: int = 5,
    mixing: float = 1.0,
    regularization: float | None = None,
    event_dims: int = 1,
    on_failure: OnFailure = "raise",
    check_every: int | None = None,
    warm_start: WarmState | None = None,
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by Anderson acceleration of ``T(z) = z - F(z)``.

    With the last ``m`` iterates ``z_i`` and images ``T(z_i)``, residuals ``r_i = -F(z_i)``,
    each sample solves ``min_a ||sum_i a_i r_i||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``z <- mixing * sum_i a_i T(z_i) + (1 - mixing) * sum_i a_i z_i``:

    .. math::
        a = \arg\min_{\mathbf 1^\top a = 1} \Big\|\sum_i a_i r_i\Big\|_2^2, \qquad
        z \leftarrow \beta \sum_i a_i T(z_i) + (1 - \beta) \sum_i a_i z_i.

    The constrained least-squares problem is solved through the regularised Gram matrix
    ``G = R R^T + lambda max(diag(G)) I`` as ``a = G^{-1} 1 / (1^T G^{-1} 1)`` by a Cholesky
    factorisation that reports failure instead of raising: a sample whose factorisation
    fails or whose weights are not finite takes the plain fixed-point step instead. No
    linear-algebra exception can escape, whatever the dtype; failure to converge is reported
    only through ``on_failure``.

    Stop test, per-sample freezing and failure policy as in :func:`fixed_point`.

    Args:
        fn: ``F``, maps ``(*batch, *event)`` to the same shape; samples must be independent.
        z0: start point, shape ``(*batch, *event)``.
        atol: absolute tolerance (dtype default).
        rtol: relative tolerance (dtype default).
        max_iter: maximum number of iterations.
        history: number ``m >= 1`` of past iterates mixed.
        mixing: damping ``beta`` in ``(0, 1]``.
        regularization: Tikhonov weight ``lambda``, relative to the Gram diagonal (``None``:
            :func:`default_regularization` of the dtype).
        event_dims: number of trailing dimensions forming one problem.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.
        check_every: iterations between host reads of the convergence state (see
            :func:`fixed_point`).

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult`.

    References:
        Walker & Ni, "Anderson acceleration for fixed-point iterations", 2011.

    Example:
        >>> import torch
        >>> y = torch.randn(5, 3, dtype=torch.float64)
        >>> res = anderson(lambda z: z + 0.9 * torch.sin(z) - y, y, history=3)
        >>> res.status.name, res.root.shape
        ('SUCCESS', torch.Size([5, 3]))
    """
    _check(history, mixing, regularization)
    prob = FlatProblem(
        fn,
        z0,
        event_dims=event_dims,
        atol=atol,
        rtol=rtol,
        max_iter=max_iter,
        on_failure=on_failure,
        name="anderson",
        check_every=check_every,
    )
    lam = default_regularization(z0.dtype) if regularization is None else float(regularization)
    with torch.no_grad():
        run = ActiveSet(prob)
        z, f = run.z, run.f
        n = z.shape[1]
        zs = z.new_zeros(z.shape[0], history, n)
        ts = z.new_zeros(z.shape[0], history, n)
        tiny = torch.finfo(z.dtype).tiny
        eye = torch.eye(history, dtype=z.dtype, device=z.device)
        for k in range(max_iter):
            if run.done:
                break
            slot = k % history
            zs[:, slot] = z
            ts[:, slot] = z - f
            m = min(k + 1, history)
            r = ts[:, :m] - zs[:, :m]
            gram = r @ r.transpose(1, 2)
            scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(tiny)
            gram = gram + (lam * scale)[:, None, None] * eye[:m, :m]
            chol, info = torch.linalg.cholesky_ex(gram)
            y = torch.cholesky_solve(z.new_ones(z.shape[0], m, 1), chol)[..., 0]
            a = y / y.sum(dim=1, keepdim=True)
            # Where the factorisation failed, the plain fixed-point step from the newest iterate.
            usable = (info == 0) & torch.isfinite(a).all(dim=1)
            a = torch.where(usable[:, None], a, eye[slot, :m])
            mixed_t = torch.einsum("bm,bmn->bn", a, ts[:, :m])
            z_new = mixed_t if mixing == 1.0 else (
                mixing * mixed_t + (1.0 - mixing) * torch.einsum("bm,bmn->bn", a, zs[:, :m])
            )  # fmt: skip
            z = torch.where(run.active[:, None], z_new, z)
            f = run.evaluate(z)
            keep = run.update(z, f)
            if keep is not None:
                z, f, zs, ts = run.z, run.f, zs[keep], ts[keep]
    return apply_failure_policy(run.result(), on_failure)


@dataclass(frozen=True)
class Anderson(SolverConfig):
    """Configured :func:`~implicit_transforms.solvers.anderson` solver, for composing into blocks
    (fields: its keyword arguments).

    Example:
        >>> import torch
        >>> solver = Anderson(history=3, max_iter=200)
        >>> y = torch.ones(2, 4, dtype=torch.float64)
        >>> solver(lambda z: z + 0.5 * torch.tanh(z) - y, y).status.name
        'SUCCESS'
    """

    max_iter: int = 100
    history: int = 5
    mixing: float = 1.0
    regularization: float | None = None
    check_every: int | None = None

    _function = staticmethod(anderson)
    _name = "anderson"

    def _check(self) -> None:
        _check(self.history, self.mixing, self.regularization)
