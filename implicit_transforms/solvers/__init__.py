"""Batched root-finding solvers with per-sample convergence.

Each solver is a pure function ``solver(F, z0, *, atol, rtol, max_iter, ...) -> SolverResult``
plus a frozen configuration class of the same name in CamelCase for composing into blocks.
"""

from implicit_transforms.solvers.anderson import Anderson, anderson
from implicit_transforms.solvers.base import Solver
from implicit_transforms.solvers.broyden import Broyden, broyden
from implicit_transforms.solvers.fixed_point import FixedPoint, fixed_point
from implicit_transforms.solvers.result import OnFailure, SolverResult, SolverStatus

__all__ = [
    "Anderson",
    "Broyden",
    "FixedPoint",
    "OnFailure",
    "Solver",
    "SolverResult",
    "SolverStatus",
    "anderson",
    "broyden",
    "fixed_point",
]
