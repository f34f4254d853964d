"""Bookkeeping shared by every solver: input checks, flattening, the per-sample stop test, and
the active set (samples leave the batch as they converge)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from implicit_transforms.solvers.result import OnFailure, SolverResult, make_result
from implicit_transforms.validation import validating_inputs

__all__ = [
    "ActiveSet",
    "FlatProblem",
    "Rowwise",
    "Tracker",
    "check_common",
    "default_check_every",
    "default_tolerance",
    "default_tolerances",
    "rowwise",
    "solver_tolerance",
]


_SCOPED_TOLERANCE: ContextVar[tuple[float | None, float | None] | None] = ContextVar(
    "implicit_transforms_solver_tolerance", default=None
)


def default_tolerance(dtype: torch.dtype) -> float:
    r"""The default solver tolerance of a dtype: ``eps^(3/4)``.

    .. math:: \mathrm{tol}(\text{dtype}) = \varepsilon_{\text{dtype}}^{3/4}

    ``eps`` is the machine epsilon: the tolerance is about 1.8e-12 in float64 and 6.4e-6 in
    float32 (used for both ``atol`` and ``rtol``).
    The evaluation of a residual ``z + g(z) - y`` is only accurate to a few ``eps`` times the
    size of its terms (more for wide networks), so a tolerance must sit well above ``eps``;
    ``eps^(3/4)`` leaves a factor of about 55 (float32) to 8000 (float64) of headroom while
    keeping round trips accurate to far more digits than the dtype's ``sqrt(eps)``. Inside
    :func:`solver_tolerance` the scoped value replaces it.

    Args:
        dtype: a floating-point dtype.

    Returns:
        ``eps(dtype) ** 0.75``.

    Example:
        >>> import torch
        >>> f"{default_tolerance(torch.float64):.1e}", f"{default_tolerance(torch.float32):.1e}"
        ('1.8e-12', '6.4e-06')
    """
    return float(torch.finfo(dtype).eps) ** 0.75


def default_tolerances(
    dtype: torch.dtype, atol: float | None, rtol: float | None
) -> tuple[float, float]:
    """Fill unset tolerances: the scope of :func:`solver_tolerance` if any, else
    :func:`default_tolerance` of ``dtype``. Tolerances set explicitly are kept."""
    base = default_tolerance(dtype)
    scoped = _SCOPED_TOLERANCE.get()
    scoped_atol, scoped_rtol = scoped if scoped is not None else (None, None)
    if atol is None:
        atol = base if scoped_atol is None else scoped_atol
    if rtol is None:
        rtol = base if scoped_rtol is None else scoped_rtol
    return atol, rtol


@contextmanager
def solver_tolerance(
    tol: float | None = None, *, atol: float | None = None, rtol: float | None = None
) -> Iterator[None]:
    """Within the scope, solves whose tolerances are left at their default use ``tol`` (or
    ``atol`` / ``rtol``) instead of the dtype's.

    Sampling is where this pays: a flow's inverse solves only need the accuracy the samples
    are used at, e.g. ``with solver_tolerance(1e-4): x = flow.sample(10_000)`` (measured
    round-trip error and time per tolerance in ``benchmarks/README.md``). A solver configured
    with an explicit ``atol`` / ``rtol`` keeps it.

    Args:
        tol: both tolerances.
        atol: absolute tolerance (overrides ``tol``).
        rtol: relative tolerance (overrides ``tol``).

    Returns:
        A context manager; the previous defaults come back when it exits (per thread and
        ``asyncio`` task: the scope is a context variable).

    Example:
        >>> import torch
        >>> from implicit_transforms.solvers import fixed_point
        >>> y = torch.ones(4, 2, dtype=torch.float64)
        >>> F = lambda z: z + 0.5 * torch.sin(z) - y
        >>> with solver_tolerance(1e-4):
        ...     loose = fixed_point(F, y)
        >>> tight = fixed_point(F, y)
        >>> int(loose.iterations.max()) < int(tight.iterations.max())
        True
    """
    a = tol if atol is None else atol
    r = tol if rtol is None else rtol
    check_common("solver_tolerance", atol=a, rtol=r, max_iter=1, on_failure="raise")
    token = _SCOPED_TOLERANCE.set((a, r))
    try:
        yield
    finally:
        _SCOPED_TOLERANCE.reset(token)


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


class Rowwise:
    """A residual that can be evaluated on a subset of the batch's samples.

    ``fn(z, rows)`` receives a flat batch ``z: (A, *event)`` of the samples whose indices (into
    the flattened batch of the start point) are ``rows: (A,)``, or ``rows=None`` for all of them
    in order, and returns ``F`` on those samples. Solvers then evaluate only the samples that
    have not converged yet. Called with one argument it evaluates every sample.

    Args:
        fn: ``fn(z, rows) -> F(z)`` of shape ``(A, *event)``.

    Example:
        A residual ``z + g(z) - y`` whose target ``y`` is indexed by the rows still solved;
        the first sample is solved at the start point, so it is never evaluated again:

        >>> import torch
        >>> from implicit_transforms.solvers import broyden
        >>> y = torch.linspace(-2.0, 2.0, 18, dtype=torch.float64).reshape(6, 3)
        >>> y[0] = 0.0
        >>> F = Rowwise(lambda z, rows: z + 0.5 * torch.tanh(z) - (y if rows is None else y[rows]))
        >>> res = broyden(F, y)
        >>> bool(res.converged.all()), res.sample_evals < res.num_evals * 6
        (True, True)
    """

    def __init__(self, fn: Callable[[Tensor, Tensor | None], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"rowwise: fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """``F`` on the samples ``rows`` (all when ``None``)."""
        return self.fn(z, rows)


def rowwise(fn: Callable[[Tensor, Tensor | None], Tensor]) -> Rowwise:
    """Mark ``fn(z, rows)`` as evaluable on a subset of samples (see :class:`Rowwise`).

    Args:
        fn: ``fn(z, rows) -> F(z)``; ``rows`` (``(A,)`` indices into the flattened batch, or
            ``None`` for every sample) says which samples ``z: (A, *event)`` holds.

    Returns:
        ``Rowwise(fn)``, usable as a decorator.

    Example:
        >>> import torch
        >>> y = torch.arange(4.0).reshape(2, 2)
        >>> @rowwise
        ... def F(z, rows):
        ...     return z - (y if rows is None else y[rows])
        >>> F(torch.zeros(1, 2), torch.tensor([1])).tolist()
        [[-2.0, -3.0]]
    """
    return Rowwise(fn)


def default_check_every(device: torch.device) -> int:
    """How many iterations a solver runs between reading convergence back to the host: every
    iteration on the CPU (reading is free there), every 4 on accelerators (each read is a
    device synchronisation).

    Args:
        device: the device of the solve's start point.

    Returns:
        ``1`` on the CPU, ``4`` elsewhere.

    Example:
        >>> import torch
        >>> default_check_every(torch.device("cpu"))
        1
    """
    return 1 if device.type == "cpu" else 4


class FlatProblem:
    """View a function on ``(*batch, *event)`` tensors as one on flat ``(rows, N)`` tensors.

    Validates the solver's common arguments and counts the evaluations: ``num_evals`` calls of
    ``F`` and ``sample_evals`` samples evaluated (a :class:`Rowwise` function is given only the
    samples still being solved; any other function is given the whole batch every time).
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
        check_every: int | None = None,
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
        if check_every is not None and (
            isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1
        ):
            raise ValueError(
                f"{name}: check_every must be a positive int or None, got {check_every!r}"
            )
        self.atol, self.rtol = default_tolerances(z0.dtype, atol, rtol)
        if validating_inputs() and not bool(torch.isfinite(z0).all()):
            raise ValueError(f"{name}: the start point z0 contains NaN or Inf")
        self.fn = fn
        self.rowwise = isinstance(fn, Rowwise)
        self.name = name
        self.max_iter = max_iter
        self.on_failure = on_failure
        self.check_every = default_check_every(z0.device) if check_every is None else check_every
        split = z0.dim() - event_dims
        self.batch_shape = z0.shape[:split]
        self.event_shape = z0.shape[split:]
        self.z0 = z0.detach().reshape(-1, math.prod(self.event_shape))
        self.num_evals = 0
        self.sample_evals = 0
        self._full: Tensor | None = None  # whole-batch input of a non-rowwise function

    def evaluate(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """``F`` on the flat samples ``z: (A, N)`` whose batch indices are ``rows``."""
        self.num_evals += 1
        if self.rowwise:
            self.sample_evals += z.shape[0]
            out = self.fn(z.reshape(z.shape[0], *self.event_shape), rows)  # type: ignore[call-arg]
            return self._checked(out, (z.shape[0], *self.event_shape)).reshape(z.shape)
        self.sample_evals += self.z0.shape[0]
        if rows is None:
            full = z
        else:
            if self._full is None:
                self._full = self.z0.clone()
            self._full[rows] = z
            full = self._full
        out = self.fn(full.reshape(*self.batch_shape, *self.event_shape))
        flat = self._checked(out, (*self.batch_shape, *self.event_shape)).reshape(full.shape)
        return flat if rows is None else flat[rows]

    def _checked(self, out: object, shape: tuple[int, ...]) -> Tensor:
        if not isinstance(out, Tensor) or tuple(out.shape) != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.name}: fn must return a tensor of shape {shape}, got {got}")
        return out.detach()


class Tracker:
    """Per-sample convergence state of the samples still being solved (``(A, N)`` rows).

    A sample is *active* until its true residual satisfies ``||F(z)|| <= atol + rtol * ||z||``
    at an iterate that is also its best so far, or ``F`` returns a non-finite value for it;
    solvers must leave inactive samples unchanged. The best iterate (smallest finite residual)
    is kept per sample.
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

    _FIELDS = ("best", "best_residual", "iterations", "converged", "nonfinite", "active")

    def update(self, z: Tensor, f: Tensor, *, count: bool = True) -> Tensor:
        """Record the iterate ``z`` with residual ``f`` for active samples; return the new mask
        (no host synchronisation)."""
        active = self.active
        if count:
            self.iterations += active.long()
        res = torch.linalg.vector_norm(f, dim=-1)
        scale = torch.linalg.vector_norm(z, dim=-1)  # not finite iff z is not
        finite = torch.isfinite(res) & torch.isfinite(scale)
        # Only the best iterate so far may be declared converged: a diverging iterate whose
        # huge norm inflates the relative tolerance never is.
        best_so_far = res <= self.best_residual
        better = active & finite & (res < self.best_residual)
        self.best = torch.where(better[:, None], z, self.best)
        self.best_residual = torch.where(better, res, self.best_residual)
        ok = finite & best_so_far & (res <= self.atol + self.rtol * scale)
        self.converged |= active & ok
        self.nonfinite |= active & ~finite
        self.active = active & ~ok & finite
        return self.active

    def keep(self, mask: Tensor) -> None:
        """Keep only the samples in ``mask`` (compaction)."""
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name)[mask])


class ActiveSet:
    """The samples still being solved, compacted, and the results of those that finished.

    Solvers hold their per-sample state (iterates, histories, inverse-Jacobian memories) for
    the active samples only. After every :meth:`update` the set may *settle* (every
    ``check_every`` iterations: the only host synchronisation of the loop): finished samples
    move to the result and the state shrinks, so later iterations, and the evaluations of a
    :class:`Rowwise` function, cost in proportion to what is still unconverged.
    """

    def __init__(self, prob: FlatProblem) -> None:
        self.prob = prob
        z = prob.z0
        b = z.shape[0]
        self.rows: Tensor | None = None  # batch indices of the active samples (None: all)
        self.z = z
        self.f = prob.evaluate(z, None)
        self.tracker = Tracker(z, self.f, prob.atol, prob.rtol)
        self.root = z.clone()
        self.residual = torch.full((b,), math.inf, dtype=z.dtype, device=z.device)
        self.iterations = torch.zeros(b, dtype=torch.long, device=z.device)
        self.converged = torch.zeros(b, dtype=torch.bool, device=z.device)
        self.nonfinite = torch.zeros(b, dtype=torch.bool, device=z.device)
        self.done = b == 0
        self._since_check = 0
        self._finished_hooks: list[Callable[[Tensor, Tensor], None]] = []
        self._settle(force=True)

    @property
    def active(self) -> Tensor:
        """Mask of the rows (of the current compacted state) that are still iterating."""
        return self.tracker.active

    def evaluate(self, z: Tensor) -> Tensor:
        """``F`` on the current rows."""
        return self.prob.evaluate(z, self.rows)

    def on_finish(self, hook: Callable[[Tensor, Tensor], None]) -> None:
        """Call ``hook(leaving, batch_rows)`` before finished samples leave the state."""
        self._finished_hooks.append(hook)

    def update(self, z: Tensor, f: Tensor) -> Tensor | None:
        """Record an iteration; return the mask of rows to keep when the set shrank (the solver
        then compacts its own state with it), else ``None``."""
        self.z, self.f = z, f
        self.tracker.update(z, f)
        self._since_check += 1
        if self._since_check < self.prob.check_every:
            return None
        return self._settle()

    def _batch_rows(self) -> Tensor:
        if self.rows is None:
            return torch.arange(self.z.shape[0], device=self.z.device)
        return self.rows

    def _settle(self, force: bool = False) -> Tensor | None:
        self._since_check = 0
        active = self.tracker.active
        if not force and bool(active.all()):
            return None
        leaving = ~active
        if not bool(leaving.any()):
            return None
        rows = self._batch_rows()
        for hook in self._finished_hooks:
            hook(leaving, rows[leaving])
        self._write(leaving, rows)
        self.tracker.keep(active)
        self.z, self.f = self.z[active], self.f[active]
        self.rows = rows[active]
        self.done = not bool(active.any())
        return active

    def _write(self, mask: Tensor, rows: Tensor) -> None:
        t, idx = self.tracker, rows[mask]
        self.root[idx] = t.best[mask]
        self.residual[idx] = t.best_residual[mask]
        self.iterations[idx] = t.iterations[mask]
        self.converged[idx] = t.converged[mask]
        self.nonfinite[idx] = t.nonfinite[mask]

    def result(self) -> SolverResult:
        """Write the samples still held (if any) and package the whole batch's result."""
        if self.z.shape[0]:
            everything = torch.ones(self.z.shape[0], dtype=torch.bool, device=self.z.device)
            rows = self._batch_rows()
            for hook in self._finished_hooks:
                hook(everything, rows)
            self._write(everything, rows)
        prob = self.prob
        return make_result(
            root=self.root,
            residual=self.residual,
            iterations=self.iterations,
            converged=self.converged,
            nonfinite=self.nonfinite,
            num_evals=prob.num_evals,
            sample_evals=prob.sample_evals,
            batch_shape=prob.batch_shape,
            event_shape=prob.event_shape,
            solver=prob.name,
        )
