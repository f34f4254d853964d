"""The protocol every configured solver satisfies, and the base class of the configurations."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from implicit_transforms.solvers._common import check_common
from implicit_transforms.solvers.result import OnFailure, SolverResult, WarmState

__all__ = ["Solver", "SolverConfig"]

_C = TypeVar("_C", bound="SolverConfig")


@runtime_checkable
class Solver(Protocol):
    """A configured root finder: ``solver(F, z0, event_dims=k) -> SolverResult``.

    ``F`` maps ``(*batch, *event)`` to the same shape with ``dF/dz`` close to the identity
    (residual form ``z + g(z) - y``); samples are independent and solved to a per-sample
    tolerance. :class:`FixedPoint`, :class:`Anderson` and :class:`Broyden` implement it.

    Example:
        >>> from implicit_transforms.solvers import Broyden
        >>> isinstance(Broyden(), Solver)
        True
    """

    def __call__(
        self,
        fn: Callable[[Tensor], Tensor],
        z0: Tensor,
        *,
        event_dims: int = 1,
        warm_start: WarmState | None = None,
    ) -> SolverResult:
        """Solve ``fn(z) = 0`` from ``z0``.

        Args:
            fn: ``F``, maps ``(*batch, *event)`` to the same shape.
            z0: start point, shape ``(*batch, *event)``.
            event_dims: number of trailing dimensions forming one problem.
            warm_start: a related solve's :attr:`~SolverResult.warm_state`, used when the
                solver can (Broyden) and ignored otherwise.

        Returns:
            A :class:`~implicit_transforms.solvers.SolverResult`.
        """
        ...


@dataclass(frozen=True)
class SolverConfig:
    """Base of the frozen solver configurations: the fields are the keyword arguments of the
    pure solver function, checked when the configuration is built.

    Attributes:
        atol: absolute tolerance (``None``: the dtype's default, see
            :func:`~implicit_transforms.solvers.default_tolerance`).
        rtol: relative tolerance (same default).
        max_iter: maximum number of iterations.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` when a sample does not converge.

    Example:
        >>> from implicit_transforms.solvers import Anderson
        >>> Anderson(history=3).replace(on_failure="warn").options()["on_failure"]
        'warn'
        >>> Anderson(history=0)
        Traceback (most recent call last):
            ...
        ValueError: anderson: history must be a positive int, got 0
    """

    atol: float | None = None
    rtol: float | None = None
    max_iter: int = 100
    on_failure: OnFailure = "raise"

    _function: ClassVar[Callable[..., SolverResult]]
    _name: ClassVar[str]

    def __post_init__(self) -> None:
        check_common(
            self._name,
            atol=self.atol,
            rtol=self.rtol,
            max_iter=self.max_iter,
            on_failure=self.on_failure,
        )
        self._check()

    def _check(self) -> None:
        """Validate the solver-specific fields (subclasses)."""

    def options(self) -> dict[str, Any]:
        """The configuration as keyword arguments of the solver function."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with some fields changed, e.g. ``Broyden().replace(on_failure="warn")``.

        Args:
            **changes: new values of fields, checked as in the constructor.

        Returns:
            A new configuration of the same class.
        """
        return dataclasses.replace(self, **changes)

    def __call__(
        self,
        fn: Callable[[Tensor], Tensor],
        z0: Tensor,
        *,
        event_dims: int = 1,
        warm_start: WarmState | None = None,
    ) -> SolverResult:
        """Solve ``fn(z) = 0`` from ``z0`` with this configuration.

        Args:
            fn: ``F``, maps ``(*batch, *event)`` to the same shape.
            z0: start point, shape ``(*batch, *event)``.
            event_dims: number of trailing dimensions forming one problem.
            warm_start: see :class:`Solver`.

        Returns:
            A :class:`~implicit_transforms.solvers.SolverResult`.
        """
        return type(self)._function(
            fn, z0, event_dims=event_dims, warm_start=warm_start, **self.options()
        )
