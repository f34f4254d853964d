"""Exceptions and warnings raised by implicit-transforms.

Everything the library raises on purpose derives from one of the classes here, so callers
can catch (or, in tests, escalate) exactly what comes from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from implicit_transforms.solvers.result import SolverResult

__all__ = ["ConvergenceError", "ConvergenceWarning", "ImplicitTransformsWarning"]


class ImplicitTransformsWarning(UserWarning):
    """Base class of every warning this package emits."""


class ConvergenceWarning(ImplicitTransformsWarning):
    """A solve did not converge and the caller asked to be warned rather than stopped."""


class ConvergenceError(RuntimeError):
    """A root-finding solve did not reach its tolerance.

    Attributes:
        result: the :class:`~implicit_transforms.solvers.SolverResult` of the failed solve
            (best iterate per sample, residuals, iteration counts, converged mask).
    """

    def __init__(self, message: str, result: SolverResult) -> None:
        super().__init__(message)
        self.result = result
