r"""Implicit differentiation of roots: gradients by the implicit function theorem.

A root ``z*`` of ``F(z, x; theta) = 0`` is found without building an autograd graph; the
returned tensor equals ``z*`` and back-propagates as if ``z*`` were a differentiable function
of everything ``F`` closes over. With ``g = dL/dz*`` the adjoint ``w`` solves

``w^T dF/dz = g``  (a linear system, vector-Jacobian products only),

and the gradients are ``dL/dx = -w^T dF/dx`` and ``dL/dtheta = -w^T dF/dtheta``:

.. math::
    w^\top \frac{\partial F}{\partial z}\Big|_{z^\star} = \frac{\partial L}{\partial z^\star},
    \qquad
    \frac{\partial L}{\partial x} = -w^\top \frac{\partial F}{\partial x}, \qquad
    \frac{\partial L}{\partial \theta} = -w^\top \frac{\partial F}{\partial \theta}.

The adjoint system is solved by a configured solver to a tolerance **relative to the size of
the incoming gradient** (each sample's system is divided by ``||g||`` before the solve and the
solution multiplied back), so the accuracy of a gradient does not depend on the loss scale.
Memory does not depend on how many iterations either solve took.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from implicit_transforms.errors import HigherOrderGradientError
from implicit_transforms.recipes.families import ADJOINT_SOLVER
from implicit_transforms.solvers import OnFailure, Solver, SolverResult, dense_solve
from implicit_transforms.solvers.result import WarmState

__all__ = ["DEFAULT_ADJOINT", "attach_implicit_grad", "solve_implicit"]

DEFAULT_ADJOINT = ADJOINT_SOLVER
"""The adjoint solver when none is given (its value lives in the assembly table,
:data:`~implicit_transforms.recipes.families.ADJOINT_SOLVER`)."""

_NO_SECOND_DERIVATIVE = (
    "a second derivative (create_graph=True) was requested through an implicit solve; "
    "implicit-function-theorem gradients are first-order only. Differentiate once, or use "
    "a block direction without a solve (the explicit forward of a residual block with an "
    "ExactLogDet or gradient='backprop' estimator)"
)


def attach_implicit_grad(
    residual: Callable[[Tensor], Tensor],
    root: Tensor,
    *,
    adjoint_solver: Solver | None = None,
    event_dims: int = 1,
    on_solve: Callable[[SolverResult], None] | None = None,
    adjoint_start: WarmState | Callable[[], WarmState] | None = None,
    adjoint_matrix: Callable[[], Tensor | None] | None = None,
) -> Tensor:
    r"""Return ``root`` with implicit-function-theorem gradients attached.

    ``residual`` is evaluated once more at ``root`` with autograd recording; a hook on that
    single evaluation replaces the incoming gradient ``g`` by the adjoint ``w`` solving
    ``(dF/dz)^T w = g``, written as the root-finding problem
    ``A(w) = w - w^T (I - dF/dz) - g = 0`` (whose fixed-point iteration is the Neumann series,
    converging at rate ``Lip(g_z)`` for residuals ``z + g_z(z) - y``). Each sample's system is
    scaled by ``1 / ||g||`` (event norm) before the solve, so the adjoint solver's tolerances
    are relative to the incoming gradient and a loss multiplied by ``1e-4`` gets the same
    relative accuracy as at scale 1. Autograd then carries ``w`` through ``-F`` to every
    tensor and parameter ``residual`` depends on: no network is copied, and parameters are
    found automatically.

    Args:
        residual: ``F``, maps ``(*batch, *event)`` to the same shape, ``dF/dz`` close to ``I``.
        root: a root of ``residual``, shape ``(*batch, *event)`` (its graph is ignored).
        adjoint_solver: solver for the adjoint system (default :data:`DEFAULT_ADJOINT`,
            Broyden: on this linear system it needs far fewer iterations than the
            Neumann/fixed-point iteration when ``Lip(g_z)`` is close to 1). Its
            ``on_failure`` policy applies in the backward pass.
        event_dims: number of trailing dimensions forming one problem.
        on_solve: called with the adjoint solve's
            :class:`~implicit_transforms.solvers.SolverResult` (its ``root`` in the scaled
            units) in the backward pass.
        adjoint_start: a :class:`~implicit_transforms.solvers.WarmState` for the adjoint
            system ``(dF/dz)^T``, or a function building it in the backward pass, handed to the
            adjoint solver as ``warm_start`` (:func:`solve_implicit` passes the transpose of
            the forward solve's ``warm_state``, built only if a backward pass happens; solvers
            that cannot use it ignore it).
        adjoint_matrix: called in the backward pass; when it returns the full Jacobian
            ``dF/dz`` at the root, shape ``(*batch, N, N)`` with ``N = prod(event)`` (a block
            whose exact log-det assembled it), the adjoint is one batched linear solve
            (:func:`~implicit_transforms.solvers.dense_solve`, checked against the adjoint
            solver's failure policy) instead of an iterative solve; when it returns ``None``
            the adjoint solver runs.

    Returns:
        A tensor equal to ``root`` whose gradients are the implicit ones. Without grad mode,
        or when ``residual`` does not depend on anything requiring grad, ``root`` detached.

    Raises:
        HigherOrderGradientError: in a backward pass with ``create_graph=True``.

    Example:
        The root of ``z + 0.5 tanh(z) = x``, found by any means, gets ``dz/dx = 1 / (1 + 0.5
        sech^2 z)``:

        >>> import torch
        >>> from implicit_transforms.solvers import fixed_point
        >>> x = torch.tensor([[0.5, -0.2]], dtype=torch.float64, requires_grad=True)
        >>> F = lambda z: z + 0.5 * torch.tanh(z) - x
        >>> root = fixed_point(F, x.detach()).root
        >>> z = attach_implicit_grad(F, root)
        >>> z.sum().backward()
        >>> torch.allclose(x.grad, 1 / (1 + 0.5 / torch.cosh(root) ** 2))
        True
    """
    root = root.detach()
    if not torch.is_grad_enabled():
        return root
    solver: Solver = DEFAULT_ADJOINT if adjoint_solver is None else adjoint_solver
    z = root.clone().requires_grad_()
    f = residual(z)
    if not isinstance(f, Tensor) or f.shape != root.shape:
        raise ValueError(
            f"attach_implicit_grad: residual must return the root's shape {tuple(root.shape)}, "
            f"got {tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}"
        )
    step = z - f  # one fixed-point step: its graph carries -dF/dx and -dF/dtheta
    if not step.requires_grad:
        return root
    dims = tuple(range(root.dim() - event_dims, root.dim()))

    def adjoint(grad: Tensor | None) -> Tensor | None:
        if grad is None:  # an undefined gradient stays undefined
            return None
        if torch.is_grad_enabled():
            raise HigherOrderGradientError(_NO_SECOND_DERIVATIVE)
        grad = grad.detach()
        scale = torch.linalg.vector_norm(grad, dim=dims, keepdim=True) if dims else grad.abs()
        finite = torch.isfinite(scale)
        # Rows with a zero gradient have the zero adjoint (the scaled system is then 0 = 0);
        # rows with NaN/Inf keep them, as any other backward would.
        safe_scale = torch.where(finite & (scale > 0), scale, torch.ones_like(scale))
        target = torch.where(finite, grad / safe_scale, torch.zeros_like(grad))

        def adjoint_residual(w: Tensor) -> Tensor:
            (jtw,) = torch.autograd.grad(step, z, w, retain_graph=True)
            return w - jtw - target

        matrix = None if adjoint_matrix is None else adjoint_matrix()
        if matrix is not None:  # dF/dz is known: (dF/dz)^T w = target in one factorisation
            policy: OnFailure = getattr(solver, "on_failure", "raise")
            result = dense_solve(
                matrix, target, transpose=True, event_dims=event_dims, on_failure=policy
            )
        else:
            start = adjoint_start() if callable(adjoint_start) else adjoint_start
            # Solvers of the protocol take a warm start (and ignore what they cannot use); a
            # plain callable written before the protocol had it is still called without one.
            hint = {} if start is None else {"warm_start": start}
            result = solver(adjoint_residual, target, event_dims=event_dims, **hint)
        if on_solve is not None:
            on_solve(result)
        return torch.where(finite, result.root * safe_scale, grad)

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
    on_adjoint_solve: Callable[[SolverResult], None] | None = None,
    adjoint_matrix: Callable[[], Tensor | None] | None = None,
) -> tuple[Tensor, SolverResult]:
    r"""Solve ``residual(z) = 0`` from ``z0`` and attach implicit gradients to the root.

    The forward solve runs without autograd (see :func:`attach_implicit_grad` for the
    backward). Non-convergence follows the solver's ``on_failure`` policy in the forward pass
    and the adjoint solver's in the backward pass. When both are Broyden, the adjoint starts
    from the transpose of the forward solve's final inverse-Jacobian approximation.

    Args:
        residual: ``F``, maps ``(*batch, *event)`` to the same shape, ``dF/dz`` close to ``I``.
        z0: start point, shape ``(*batch, *event)``.
        solver: forward solver.
        adjoint_solver: solver for the backward linear system (default
            :data:`DEFAULT_ADJOINT`).
        event_dims: number of trailing dimensions forming one problem.
        on_adjoint_solve: receives the adjoint solve's result in the backward pass.
        adjoint_matrix: the full ``dF/dz`` at the root when known (see
            :func:`attach_implicit_grad`): the adjoint is then one linear solve.

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
    # The forward Broyden's H approximates (dF/dz)^{-1}; the adjoint system's Jacobian is
    # (dF/dz)^T, so H^T is a warm start for it.
    state = result.warm_state
    start = None if state is None else state.transpose  # built in the backward pass
    z = attach_implicit_grad(
        residual,
        result.root,
        adjoint_solver=adjoint_solver,
        event_dims=event_dims,
        on_solve=on_adjoint_solve,
        adjoint_start=start,
        adjoint_matrix=adjoint_matrix,
    )
    return z, result
