"""Exceptions and warnings raised by implicit-transforms.

Everything the library raises on purpose derives from one of the classes here, so callers
can catch (or, in tests, escalate) exactly what comes from this package.

Host libraries re-raise exceptions in their own way: Pyro's poutine, for instance, rebuilds
an exception as ``type(err)(message)`` with a single argument and chains the original as its
``__cause__``. Every exception here can therefore be built from one message and pickled, and
:attr:`ConvergenceError.result` is found through that chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from implicit_transforms.solvers.result import SolverResult

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "FunctionalTransformError",
    "HigherOrderGradientError",
    "ImplicitTransformsWarning",
    "LipschitzWarning",
    "TracingError",
]


class ImplicitTransformsWarning(UserWarning):
    """Base class of every warning this package emits.

    Example:
        Escalate the package's warnings (and only them) to errors, as its test suite does:

        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", ImplicitTransformsWarning)
    """


class ConvergenceWarning(ImplicitTransformsWarning):
    """A solve did not converge and the caller asked to be warned rather than stopped
    (``on_failure="warn"``).

    Example:
        >>> import torch, warnings
        >>> from implicit_transforms.solvers import fixed_point
        >>> y = torch.ones(1, 2, dtype=torch.float64)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     res = fixed_point(lambda z: z + 0.9 * torch.sin(z) - y, y, max_iter=2,
        ...                       on_failure="warn")
        >>> caught[0].category.__name__, res.status.name
        ('ConvergenceWarning', 'MAX_ITER')
    """


class LipschitzWarning(ImplicitTransformsWarning):
    """A residual network's certified Lipschitz bound is not below 1: the block may not be
    invertible (raised when a block goes to evaluation mode)."""


class ConvergenceError(RuntimeError):
    """A root-finding solve did not reach its tolerance.

    Raised by every solver under the default failure policy ``on_failure="raise"``, in the
    forward solve and in the adjoint solve of a backward pass alike; the message says which
    knob to turn (``max_iter``, the tolerances, the solver, the Lipschitz coefficient).

    Args:
        message: what failed and which knob to turn.
        result: the failed solve's :class:`~implicit_transforms.solvers.SolverResult`.

    Example:
        >>> import torch
        >>> from implicit_transforms.solvers import fixed_point
        >>> y = torch.ones(3, 2, dtype=torch.float64)
        >>> try:
        ...     fixed_point(lambda z: z + 0.9 * torch.sin(z) - y, y, max_iter=2)
        ... except ConvergenceError as err:
        ...     print(err.result.converged.tolist())
        [False, False, False]
    """

    def __init__(self, message: str = "", result: SolverResult | None = None) -> None:
        super().__init__(message)
        self._result = result

    @property
    def result(self) -> SolverResult | None:
        """The :class:`~implicit_transforms.solvers.SolverResult` of the failed solve (best
        iterate per sample, residuals, iteration counts, converged mask).

        Looked up along ``__cause__`` / ``__context__`` when this copy has none (a host that
        re-raised the error from its message alone); ``None`` if no chained
        ``ConvergenceError`` carries one.
        """
        if self._result is not None:
            return self._result
        cause = self.__cause__ or self.__context__
        seen: set[int] = {id(self)}
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, ConvergenceError) and cause._result is not None:
                return cause._result
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self._result))


class HigherOrderGradientError(RuntimeError):
    """A second derivative (``create_graph=True``) was requested through an operation whose
    gradient is computed by an implicit or stochastic identity that has no derivative of its
    own (an implicit-function-theorem solve, a Neumann-series log-det gradient).

    The explicit direction of a residual block with an
    :class:`~implicit_transforms.logdet.ExactLogDet` (or ``gradient="backprop"``) supports
    second derivatives.

    Example:
        >>> import torch
        >>> from implicit_transforms import Broyden, solve_implicit
        >>> x = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
        >>> z, _ = solve_implicit(lambda z: z + 0.5 * torch.tanh(z) - x, x.detach(),
        ...                       solver=Broyden())
        >>> torch.autograd.grad(z.sum(), x, create_graph=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        implicit_transforms.errors.HigherOrderGradientError: a second derivative ...
    """


class TracingError(RuntimeError):
    """A block was called under ``torch.jit.trace`` (Pyro's ``JitTrace_ELBO`` and its
    relatives trace the model and guide).

    A trace records one call's tensor operations and replays them. A block decides things in
    Python at every call from the values it sees: how many solver iterations a sample needs
    and whether it converged, the random length of the Russian-roulette series, whether its
    weights changed since their spectral norm was computed. A replayed trace would repeat the
    first call's decisions silently (unconverged solves, a biased log-det, a stale
    normalisation), so blocks refuse to be traced. Use Pyro's ``Trace_ELBO`` rather than
    ``JitTrace_ELBO`` with these blocks.
    """


class FunctionalTransformError(RuntimeError):
    """A block's solve or log-det was called under a ``torch.func`` transform (``grad``,
    ``jacrev``, ``vmap``, ...).

    The explicit maps (a residual block's ``forward_map``, the networks, the spectral layers)
    are pure and work under ``torch.func``. A solve attaches its gradient through the implicit
    function theorem and a log-det estimator takes vector-Jacobian products with
    ``torch.autograd``, which functorch transforms cannot see through; rather than return
    silently wrong derivatives these refuse.
    """
