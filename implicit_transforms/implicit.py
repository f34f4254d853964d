"""Implicit differentiation of roots: gradients by the implicit function theorem.

A root ``z*`` of ``F(z, x; theta) = 0`` is found without building an autograd graph; the
returned tensor equals ``z*`` and back-propagates as if ``z*`` were a differentiable function
of everything ``F`` closes over. With ``g = dL/dz*`` the adjoint ``w`` solves

``w^T dF/dz = g``  (a linear system, vector-Jacobian products only),

and the gradients are ``dL/dx = -w^T dF/dx`` and ``dL/dtheta = -w^T dF/dtheta``. The adjoint
system is solved by a configured solver to a tolerance, so memory does not depend on how
many iterations either solve took.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from implicit_transforms.solvers import Broyden, Solver, SolverResult

__all__ = ["attach_implicit_grad", "solve_implicit"]


def attach_implicit_grad(
    residual: Callable[[Tensor], Tensor],
    root: Tensor,
    *,
    adjoint_solver: Solver | None = None,
    event_dims: int = 1,
) -> Tensor:
    r"""Return ``root`` with implicit-function-theorem gradients attached.

    ``residual`` is evaluated once more at ``root`` with autograd recording; a hook on that
    single evaluation replaces the incoming gradient ``g`` by the adjoint ``w`` solving
    ``(dF/dz)^T w = g``, written as the root-finding problem
    ``A(w) = w - w^T (I - dF/dz) - g = 0`` (whose fixed-point iteration is the Neumann series,
    converging at rate ``Lip(g_z)`` for residuals ``z + g_z(z) - y``). Autograd then carries
    ``w`` through ``-F`` to every tensor and parameter ``residual`` depends on: no network is
    copied, and parameters are found automatically.

    Args:
        residual: ``F``, maps ``(*batch, *event)`` to the same shape, ``dF/dz`` close to ``I``.
        root: a root of ``residual``, shape ``(*batch, *event)`` (its graph is ignored).
        adjoint_solver: solver for the adjoint system (default :class:`Broyden` with the
            dtype's tolerances: on this linear system it needs far fewer iterations than the
            Neumann/fixed-point iteration when ``Lip(g_z)`` is close to 1).
        event_dims: number of trailing dimensions forming one problem.

    Returns:
        A tensor equal to ``root`` whose gradients are the implicit ones. Without grad mode,
        or when ``residual`` does not depend on anything requiring grad, ``root`` detached.
    """
    root = root.detach()
    if not torch.is_grad_enabled():
        return root
    solver: Solver = Broyden(max_iter=200) if adjoint_solver is None else adjoint_solver
    z = root.clone().requires_grad_()
    f = residual(z)
    if not isinstance(f, Tensor) or f.shape != root.shape:
        raise ValueError(
            f"attach_implicit_grad: residual must return the root's shape {tuple(root.shape)}, "
            f"got {tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}"
        )
    step = z - f  # one fixed-point step: its graph carries -dF/dx and -dF/dtheta

    def adjoint(grad: Tensor | None) -> Tensor | None:
        if grad is None:  # an undefined gradient stays undefined
            return None

        def vjp(w: Tensor) -> Tensor:
            (out,) = torch.autograd.grad(step, z, w, retain_graph=True)
            return out

        def adjoint_residual(w: Tensor) -> Tensor:
            return w - vjp(w) - grad

        result = solver(adjoint_residual, grad.detach(), event_dims=event_dims)
        return result.root

    # The hook sits on a separate view node: the vector-Jacobian products above start from
    # `step` itself and must not trigger it again.
    out = step.view_as(step)
    out.register_hook(adjoint)
    # Exactly the solver's root in value, the implicit gradient in backward.
    return root + (out - out.detach())


def solve_implicit(
    residual: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    solver: Solver,
    adjoint_solver: Solver | None = None,
    event_dims: int = 1,
) -> tuple[Tensor, SolverResult]:
    r"""Solve ``residual(z) = 0`` from ``z0`` and attach implicit gradients to the root.

    The forward solve runs without autograd (see :func:`attach_implicit_grad` for the
    backward). Non-convergence follows the solver's ``on_failure`` policy.

    Args:
        residual: ``F``, maps ``(*batch, *event)`` to the same shape, ``dF/dz`` close to ``I``.
        z0: start point, shape ``(*batch, *event)``.
        solver: forward solver.
        adjoint_solver: solver for the backward linear system (default Broyden).
        event_dims: number of trailing dimensions forming one problem.

    Returns:
        ``(z, result)``: the differentiable root, shape ``(*batch, *event)``, and the forward
        :class:`~implicit_transforms.solvers.SolverResult`.

    Example:
        >>> import torch
        >>> from implicit_transforms.solvers import Broyden
        >>> x = torch.tensor([[0.5, -0.2]], dtype=torch.float64, requires_grad=True)
        >>> z, res = solve_implicit(lambda z: z + 0.5 * torch.tanh(z) - x, x.detach(),
        ...                         solver=Broyden())
        >>> z.sum().backward()
        >>> torch.allclose(x.grad, 1 / (1 + 0.5 / torch.cosh(z.detach()) ** 2))
        True
    """
    result = solver(residual, z0.detach(), event_dims=event_dims)
    z = attach_implicit_grad(
        residual, result.root, adjoint_solver=adjoint_solver, event_dims=event_dims
    )
    return z, result
