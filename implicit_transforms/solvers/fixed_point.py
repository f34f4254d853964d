"""Plain fixed-point (Banach) iteration."""

from __future__ import annotations

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

__all__ = ["FixedPoint", "fixed_point"]


def fixed_point(
    fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_iter: int = 1000,
    event_dims: int = 1,
    on_failure: OnFailure = "raise",
    check_every: int | None = None,
    warm_start: WarmState | None = None,
) -> SolverResult:
    r"""Solve ``F(z) = 0`` by the fixed-point iteration ``z <- z - F(z)``.

    With ``F(z) = z + g(z) - y`` this is the classic residual-flow inverse ``z <- y - g(z)``,
    which converges linearly at rate ``Lip(g) < 1`` (Banach): after ``n`` steps the error is at
    most ``Lip^n / (1 - Lip) * ||z_1 - z_0||``,

    .. math:: z_{n+1} = z_n - F(z_n), \qquad
        \|z_n - z^\star\| \le \frac{\mathrm{Lip}(g)^n}{1 - \mathrm{Lip}(g)}\,\|z_1 - z_0\|.

    Convergence is tested per sample on the true residual,
    ``||F(z)||_2 <= atol + rtol * ||z||_2`` over the event dimensions; converged samples leave
    the iteration (a :class:`~implicit_transforms.solvers.Rowwise` ``F`` is then evaluated on
    the remaining samples only). No autograd graph is built.

    Args:
        fn: ``F``, maps ``(*batch, *event)`` to the same shape; samples must be independent.
        z0: start point, shape ``(*batch, *event)``; must be finite.
        atol: absolute tolerance (default ``eps^(3/4)`` of the dtype: 1.8e-12 in float64,
            6.4e-6 in float32).
        rtol: relative tolerance (same defaults).
        max_iter: maximum number of iterations.
        event_dims: number of trailing dimensions forming one problem.
        on_failure: ``"raise"`` a :class:`~implicit_transforms.ConvergenceError`, ``"warn"``
            or ``"ignore"`` when some sample fails to converge or goes non-finite.
        check_every: iterations between reads of the convergence state by the host (default:
            every iteration on the CPU, every 4 on accelerators, where each read synchronises).
        warm_start: accepted for the :class:`~implicit_transforms.solvers.Solver` protocol
            and ignored (this method keeps no state between iterations to start from).

    Returns:
        A :class:`~implicit_transforms.solvers.SolverResult`.

    Example:
        >>> import torch
        >>> y = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
        >>> res = fixed_point(lambda z: z + 0.5 * torch.sin(z) - y, y)
        >>> bool(res.converged.all())
        True
    """
    prob = FlatProblem(
        fn,
        z0,
        event_dims=event_dims,
        atol=atol,
        rtol=rtol,
        max_iter=max_iter,
        on_failure=on_failure,
        name="fixed_point",
        check_every=check_every,
    )
    with torch.no_grad():
        run = ActiveSet(prob)
        z, f = run.z, run.f
        for _ in range(max_iter):
            if run.done:
                break
            z = torch.where(run.active[:, None], z - f, z)
            f = run.evaluate(z)
            if run.update(z, f) is not None:
                z, f = run.z, run.f
    return apply_failure_policy(run.result(), on_failure)


@dataclass(frozen=True)
class FixedPoint(SolverConfig):
    """Configured :func:`~implicit_transforms.solvers.fixed_point` solver, for composing into
    blocks (fields: its keyword arguments).

    Example:
        >>> import torch
        >>> solver = FixedPoint(max_iter=500, atol=1e-8, rtol=0.0)
        >>> y = torch.ones(2, 4, dtype=torch.float64)
        >>> result = solver(lambda z: z + 0.5 * torch.tanh(z) - y, y)
        >>> result.solver, bool(result.converged.all())
        ('fixed_point', True)
    """

    max_iter: int = 1000
    check_every: int | None = None

    _function = staticmethod(fixed_point)
    _name = "fixed_point"
