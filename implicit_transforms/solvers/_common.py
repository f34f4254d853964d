"""Bookkeeping shared by every solver: input checks, flattening, per-sample stop test."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from implicit_transforms.solvers.result import OnFailure, SolverResult, make_result

__all__ = ["FlatProblem", "Tracker", "check_common", "default_tolerance", "default_tolerances"]


def default_tolerance(dtype: torch.dtype) -> float:
    r"""The default solver tolerance of a dtype: ``eps^(3/4)``.

    ``eps`` is the dtype's machine epsilon: about 1.8e-12 in float64 and 6.5e-6 in float32.
    The evaluation of a residual ``z + g(z) - y`` is only accurate to a few ``eps`` times the
    size of its terms (more for wide networks), so a tolerance must sit well above ``eps``;
    ``eps^(3/4)`` leaves a factor of about 55 (float32) to 8000 (float64) of headroom while
    keeping round trips accurate to far more digits than the dtype's ``sqrt(eps)``.
    """
    return float(torch.finfo(dtype).eps) ** 0.75


def default_tolerances(
    dtype: torch.dtype, atol: float | None, rtol: float | None
) -> tuple[float, float]:
    """Fill unset tolerances with :func:`default_tolerance` of ``dtype``."""
    base = default_tolerance(dtype)
    return (base if atol is None else atol), (base if rtol is None else rtol)


def check_common(
    name: str, *, atol: float | None, rtol: float | None, max_iter: int, on_failure: str
) -> None:
    """Validate the arguments every solver shares; raise ``ValueError`` naming the bad one."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{name}: max_iter must be a positive int, got {max_iter!r}")
    if on_failure not in ("raise", "warn", "ignore"):
        raise ValueError(
            f"{name}: on_failure must be 'raise', 'warn' or 'ignore', got {on_failure!r}"
        )
    for label, tol in (("atol", atol), ("rtol", rtol)):
        if tol is None:
            continue
        if isinstance(tol, bool) or not isinstance(tol, (int, float)):
            raise ValueError(f"{name}: {label} must be a float >= 0 or None, got {tol!r}")
        if not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{name}: {label} must be a finite number >= 0, got {tol!r}")
    if atol == 0 and rtol == 0:
        raise ValueError(f"{name}: atol and rtol cannot both be 0 (the solve could never stop)")


class FlatProblem:
    """View a function on ``(*batch, *event)`` tensors as one on flat ``(B, N)`` tensors.

    Validates the solver's common arguments and counts the function evaluations.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        z0: Tensor,
        *,
        event_dims: int,
        atol: float | None,
        rtol: float | None,
        max_iter: int,
        on_failure: OnFailure,
        name: str,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"{name}: fn must be callable, got {type(fn).__name__}")
        if not isinstance(z0, Tensor) or not z0.is_floating_point():
            got = z0.dtype if isinstance(z0, Tensor) else type(z0).__name__
            raise TypeError(f"{name}: z0 must be a floating-point tensor, got {got}")
        if not isinstance(event_dims, int) or not 0 <= event_dims <= z0.dim():
            raise ValueError(
                f"{name}: event_dims must be an int in [0, z0.dim()={z0.dim()}], got {event_dims!r}"
            )
        check_common(name, atol=atol, rtol=rtol, max_iter=max_iter, on_failure=on_failure)
        self.atol, self.rtol = default_tolerances(z0.dtype, atol, rtol)
        if not bool(torch.isfinite(z0).all()):
            raise ValueError(f"{name}: the start point z0 contains NaN or Inf")
        self.fn = fn
        self.name = name
        self.max_iter = max_iter
        self.on_failure = on_failure
        split = z0.dim() - event_dims
        self.batch_shape = z0.shape[:split]
        self.event_shape = z0.shape[split:]
        self.z0 = z0.detach().reshape(-1, math.prod(self.event_shape))
        self.num_evals = 0
        self.sample_evals = 0

    def __call__(self, z: Tensor) -> Tensor:
        """Evaluate ``F`` on a flat ``(B, N)`` tensor."""
        out = self.fn(z.reshape(*self.batch_shape, *self.event_shape))
        self.num_evals += 1
        self.sample_evals += z.shape[0]
        if not isinstance(out, Tensor) or out.shape != (*self.batch_shape, *self.event_shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: fn must return a tensor of the start point's shape "
                f"{tuple((*self.batch_shape, *self.event_shape))}, got {got}"
            )
        return out.detach().reshape(z.shape)

    def result(self, tracker: Tracker) -> SolverResult:
        """Package the tracker's state as a :class:`SolverResult`."""
        return make_result(
            root=tracker.best,
            residual=tracker.best_residual,
            iterations=tracker.iterations,
            converged=tracker.converged,
            nonfinite=tracker.nonfinite,
            num_evals=self.num_evals,
            sample_evals=self.sample_evals,
            batch_shape=self.batch_shape,
            event_shape=self.event_shape,
            solver=self.name,
        )


class Tracker:
    """Per-sample convergence state of a flat ``(B, N)`` solve.

    A sample is *active* until its true residual satisfies ``||F(z)|| <= atol + rtol * ||z||``
    at an iterate that is also its best so far, or ``F`` returns a non-finite value for it;
    solvers must leave inactive samples unchanged.
    The best iterate (smallest finite residual) is kept per sample.
    """

    def __init__(self, z: Tensor, f: Tensor, atol: float, rtol: float) -> None:
        b = z.shape[0]
        self.atol, self.rtol = atol, rtol
        self.best = z.clone()
        self.best_residual = torch.full((b,), math.inf, dtype=z.dtype, device=z.device)
        self.iterations = torch.zeros(b, dtype=torch.long, device=z.device)
        self.converged = torch.zeros(b, dtype=torch.bool, device=z.device)
        self.nonfinite = torch.zeros(b, dtype=torch.bool, device=z.device)
        self.active = torch.ones(b, dtype=torch.bool, device=z.device)
        self.update(z, f, count=False)

    def update(self, z: Tensor, f: Tensor, *, count: bool = True) -> Tensor:
        """Record the iterate ``z`` with residual ``f`` for active samples; return the new mask."""
        active = self.active
        if count:
            self.iterations += active.long()
        res = torch.linalg.vector_norm(f, dim=-1)
        finite = torch.isfinite(res) & torch.isfinite(z).all(dim=-1)
        # Only the best iterate so far may be declared converged: a diverging iterate whose
        # huge norm inflates the relative tolerance never is.
        best_so_far = res <= self.best_residual
        better = active & finite & (res < self.best_residual)
        self.best = torch.where(better[:, None], z, self.best)
        self.best_residual = torch.where(better, res, self.best_residual)
        scale = torch.linalg.vector_norm(z, dim=-1)
        ok = finite & best_so_far & (res <= self.atol + self.rtol * scale)
        self.converged |= active & ok
        self.nonfinite |= active & ~finite
        self.active = active & ~ok & finite
        return self.active

    @property
    def done(self) -> bool:
        """True when no sample is active any more."""
        return not bool(self.active.any())
