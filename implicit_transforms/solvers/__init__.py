"""Batched root-finding solvers with per-sample convergence.

Each solver is a pure function ``solver(F, z0, *, atol, rtol, max_iter, ...) -> SolverResult``
plus a frozen configuration class of the same name in CamelCase for composing into blocks.
Default tolerances follow the dtype (:func:`default_tolerance`); no solver raises anything but
its failure policy's :class:`~implicit_transforms.ConvergenceError` (or a ``ValueError`` /
``TypeError`` for bad arguments).
"""

from implicit_transforms.solvers._common import (
    Rowwise,
    default_check_every,
    default_tolerance,
    rowwise,
    solver_tolerance,
)
from implicit_transforms.solvers.anderson import Anderson, anderson, default_regularization
from implicit_transforms.solvers.base import Solver, SolverConfig
from implicit_transforms.solvers.broyden import Broyden, InverseJacobian, broyden
from implicit_transforms.solvers.direct import dense_solve
from implicit_transforms.solvers.fixed_point import FixedPoint, fixed_point
from implicit_transforms.solvers.result import OnFailure, SolverResult, SolverStatus, WarmState

__all__ = [
    "Anderson",
    "Broyden",
    "FixedPoint",
    "InverseJacobian",
    "OnFailure",
    "Rowwise",
    "Solver",
    "SolverConfig",
    "SolverResult",
    "SolverStatus",
    "WarmState",
    "anderson",
    "broyden",
    "default_check_every",
    "default_regularization",
    "default_tolerance",
    "dense_solve",
    "fixed_point",
    "rowwise",
    "solver_tolerance",
]
