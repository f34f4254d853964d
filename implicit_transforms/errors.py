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
    """Base class of every warning this package emits."""


class ConvergenceWarning(ImplicitTransformsWarning):
    """A solve did not converge and the caller asked to be warned rather than stopped."""


class LipschitzWarning(ImplicitTransformsWarning):
    """A residual network's certified Lipschitz bound is not below 1: the block may not be
    invertible (raised when a block goes to evaluation mode)."""


class ConvergenceError(RuntimeError):
    """A root-finding solve did not reach its tolerance.

    Args:
        message: what failed and which knob to turn.
        result: the failed solve's :class:`~implicit_transforms.solvers.SolverResult`.

    Attributes:
        result: the :class:`~implicit_transforms.solvers.SolverResult` of the failed solve
            (best iterate per sample, residuals, iteration counts, converged mask), or
            ``None`` when the error was rebuilt from its message alone and no chained
            ``ConvergenceError`` carries one.
    """

    def __init__(self, message: str = "", result: SolverResult | None = None) -> None:
        super().__init__(message)
        self._result = result

    @property
    def result(self) -> SolverResult | None:
        """The solve's result; looked up along ``__cause__`` when this copy has none."""
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
    own (an implicit-function-theorem solve, a Neumann-series log-det gradient)."""


class TracingError(RuntimeError):
    """A block was called under ``torch.jit.trace`` (Pyro's ``JitTrace_ELBO`` and its
    relatives trace the model and guide).

    A trace records one call's tensor operations and replays them. A block decides things in
    Python at every call from the values it sees: how many solver iterations a sample needs
    and whether it converged, the random length of the Russian-roulette series, whether its
    weights changed since their spectral norm was computed. A replayed trace would repeat the
    first call's decisions silently (unconverged solves, a biased log-det, a stale
    normalisation), so blocks refuse to be traced.
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
