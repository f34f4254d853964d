"""The result of a root-finding solve and the failure policy applied to it."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from implicit_transforms.errors import ConvergenceError, ConvergenceWarning

__all__ = ["OnFailure", "SolverResult", "SolverStatus", "WarmState", "apply_failure_policy"]

OnFailure = Literal["raise", "warn", "ignore"]
"""What a solver does when some sample did not converge: raise
:class:`~implicit_transforms.ConvergenceError` (default), emit a
:class:`~implicit_transforms.ConvergenceWarning`, or silently return the best iterate."""


class SolverStatus(enum.Enum):
    """Outcome of a whole (batched) solve; the value is a readable sentence.

    ``NONFINITE`` wins over ``MAX_ITER``: a batch with one non-finite sample reports it even if
    other samples merely ran out of iterations.

    Example:
        >>> SolverStatus.MAX_ITER.value
        'some samples did not reach the tolerance within max_iter iterations'
    """

    SUCCESS = "every sample converged"
    MAX_ITER = "some samples did not reach the tolerance within max_iter iterations"
    NONFINITE = "the function returned NaN or Inf for some samples"


@runtime_checkable
class WarmState(Protocol):
    """A solver's knowledge of ``F`` near the root, handed from one solve to a related one
    through the ``warm_start`` argument every solver takes.

    The one relation used in this package: the adjoint of an implicit solve has Jacobian
    ``(dF/dz)^T``, so it starts from :meth:`transpose` of the forward solve's state. A solver
    uses a state it understands (Broyden: an inverse-Jacobian approximation) and ignores any
    other, so no caller needs to know which solver it has.
    """

    def transpose(self) -> WarmState:
        """The state of the transposed system."""
        ...


@dataclass(frozen=True)
class SolverResult:
    r"""Per-sample outcome of a batched root-finding solve of ``F(z) = 0``.

    A sample has converged when its best iterate meets the stop test

    .. math:: \|F(z)\|_2 \le \mathrm{atol} + \mathrm{rtol}\,\|z\|_2

    over its event dimensions. The result is frozen; the solvers build it, users read it (or
    find it on a :class:`~implicit_transforms.ConvergenceError` as ``err.result``).

    Attributes:
        root: best iterate per sample (smallest residual seen), shape ``(*batch, *event)``.
        residual: ``||F(root)||_2`` per sample, shape ``batch``.
        iterations: number of iterations each sample was updated, shape ``batch``.
        converged: whether each sample met ``||F|| <= atol + rtol * ||z||``, shape ``batch``.
        nonfinite: whether ``F`` produced NaN/Inf for a sample, shape ``batch``.
        num_evals: number of (batched) calls of ``F``.
        sample_evals: number of per-sample evaluations of ``F`` (rows evaluated, summed over
            calls): the work measure, since one call may evaluate only part of the batch.
        status: overall :class:`SolverStatus`.
        solver: name of the solver that produced the result.
        warm_state: what the solver learnt about ``F`` that can start a related solve
            (:class:`WarmState`; Broyden's final inverse-Jacobian approximation), ``None``
            when the solver keeps nothing.

    Example:
        >>> import torch
        >>> from implicit_transforms.solvers import fixed_point
        >>> y = torch.ones(3, 2, dtype=torch.float64)
        >>> res = fixed_point(lambda z: z + 0.5 * torch.sin(z) - y, y)
        >>> res.root.shape, res.residual.shape, res.converged.tolist()
        (torch.Size([3, 2]), torch.Size([3]), [True, True, True])
        >>> res.message.startswith("fixed_point: every sample converged (3/3 samples")
        True
    """

    root: Tensor
    residual: Tensor
    iterations: Tensor
    converged: Tensor
    nonfinite: Tensor
    num_evals: int
    sample_evals: int
    status: SolverStatus
    solver: str
    warm_state: WarmState | None = None

    @property
    def inverse_jacobian(self) -> WarmState | None:
        """Broyden's name for :attr:`warm_state` (kept for earlier code)."""
        return self.warm_state

    @property
    def message(self) -> str:
        """A readable one-paragraph summary, with advice when the solve failed."""
        n = self.converged.numel()
        n_ok = int(self.converged.sum())
        worst = float(self.residual.max()) if n else 0.0
        max_it = int(self.iterations.max()) if n else 0
        text = (
            f"{self.solver}: {self.status.value} ({n_ok}/{n} samples converged, "
            f"worst residual {worst:.3e}, at most {max_it} iterations, {self.num_evals} calls of F, "
            f"{self.sample_evals} sample evaluations)."
        )
        if self.status is SolverStatus.MAX_ITER:
            text += (
                " To fix: raise max_iter, loosen atol/rtol, use a faster solver (anderson or "
                "broyden instead of fixed_point), or lower the Lipschitz coefficient of the "
                "residual networks (contraction rate Lip(g) close to 1 makes solves slow)."
            )
        elif self.status is SolverStatus.NONFINITE:
            text += (
                " Check the inputs for extreme values and that the networks are contractive "
                "(Lip(g) < 1); a model whose spectral normalisation underestimates sigma can "
                "diverge (see implicit_transforms.lipschitz.certify)."
            )
        return text

    @property
    def mean_iterations(self) -> float:
        """Mean number of iterations per sample."""
        return float(self.iterations.float().mean()) if self.iterations.numel() else 0.0


def apply_failure_policy(result: SolverResult, on_failure: OnFailure) -> SolverResult:
    """Raise, warn or pass through according to ``on_failure`` when ``result`` failed.

    Every solver ends with this call: it is the only way a solver fails.

    Args:
        result: the finished solve.
        on_failure: ``"raise"`` a :class:`~implicit_transforms.ConvergenceError`, ``"warn"``
            with a :class:`~implicit_transforms.ConvergenceWarning`, or ``"ignore"``.

    Returns:
        ``result`` itself, unless it raised.

    Raises:
        ConvergenceError: when ``result`` failed and ``on_failure == "raise"``.
        ValueError: for an unknown ``on_failure``.

    Example:
        >>> import torch
        >>> from implicit_transforms.solvers import fixed_point
        >>> y = torch.ones(2, 2, dtype=torch.float64)
        >>> res = fixed_point(lambda z: z + 0.9 * torch.sin(z) - y, y, max_iter=2,
        ...                   on_failure="ignore")
        >>> apply_failure_policy(res, "ignore") is res
        True
        >>> apply_failure_policy(res, "raise")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        implicit_transforms.errors.ConvergenceError: fixed_point: some samples did not reach ...
    """
    if result.status is SolverStatus.SUCCESS or on_failure == "ignore":
        return result
    if on_failure == "raise":
        raise ConvergenceError(result.message, result)
    if on_failure == "warn":
        warnings.warn(result.message, ConvergenceWarning, stacklevel=3)
        return result
    raise ValueError(f"on_failure must be 'raise', 'warn' or 'ignore', got {on_failure!r}")


def _status(converged: Tensor, nonfinite: Tensor) -> SolverStatus:
    if bool(nonfinite.any()):
        return SolverStatus.NONFINITE
    if bool(converged.all()):
        return SolverStatus.SUCCESS
    return SolverStatus.MAX_ITER


def make_result(
    *,
    root: Tensor,
    residual: Tensor,
    iterations: Tensor,
    converged: Tensor,
    nonfinite: Tensor,
    num_evals: int,
    sample_evals: int,
    batch_shape: torch.Size,
    event_shape: torch.Size,
    solver: str,
) -> SolverResult:
    """Reshape flat ``(B, N)`` solver state back to ``(*batch, *event)`` and build the result."""
    return SolverResult(
        root=root.reshape(*batch_shape, *event_shape),
        residual=residual.reshape(batch_shape),
        iterations=iterations.reshape(batch_shape),
        converged=converged.reshape(batch_shape),
        nonfinite=nonfinite.reshape(batch_shape),
        num_evals=num_evals,
        sample_evals=sample_evals,
        status=_status(converged, nonfinite),
        solver=solver,
    )
