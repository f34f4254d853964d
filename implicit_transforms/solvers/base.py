"""The protocol every configured solver satisfies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from implicit_transforms.solvers.result import SolverResult

__all__ = ["Solver"]


@runtime_checkable
class Solver(Protocol):
    """A configured root finder: ``solver(F, z0, event_dims=k) -> SolverResult``.

    ``F`` maps ``(*batch, *event)`` to the same shape with ``dF/dz`` close to the identity
    (residual form ``z + g(z) - y``); samples are independent and solved to a per-sample
    tolerance. :class:`FixedPoint`, :class:`Anderson` and :class:`Broyden` implement it.
    """

    def __call__(
        self, fn: Callable[[Tensor], Tensor], z0: Tensor, *, event_dims: int = 1
    ) -> SolverResult:
        """Solve ``fn(z) = 0`` from ``z0``."""
        ...
