"""Implicit differentiation: gradcheck, agreement with unrolled iteration, constant memory."""

from __future__ import annotations

import pytest
import torch
from cases import SOLVER_OBJECTS
from torch import nn

from implicit_transforms import ConvergenceError
from implicit_transforms.implicit import attach_implicit_grad, solve_implicit
from implicit_transforms.solvers import Anderson, Broyden, FixedPoint


def _small_net(d: int, scale: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, d))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale / torch.linalg.matrix_norm(m.weight, ord=2))
    return net


SOLVERS = SOLVER_OBJECTS


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_gradcheck_inputs_and_weights(solver: str) -> None:
    d = 3
    w = (0.8 * torch.randn(d, d) / 3).requires_grad_()
    x = torch.randn(4, d, requires_grad=True)

    def root(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # ImpFlow-shaped: z + g_z(z) = x + g_x(x)
        residual = lambda z: z + torch.tanh(z @ w.T) - x - 0.5 * torch.sin(x)  # noqa: E731
        z, _ = solve_implicit(residual, x.detach(), solver=SOLVERS[solver])
        return z

    assert torch.autograd.gradcheck(root, (x, w), atol=1e-7)


def test_gradients_reach_module_parameters_without_copies() -> None:
    gz, gx = _small_net(3, 0.9), _small_net(3, 0.9)
    params_before = [id(p) for p in [*gz.parameters(), *gx.parameters()]]
    x = torch.randn(5, 3)
    target = x + gx(x)
    z, res = solve_implicit(lambda z: z + gz(z) - target, x, solver=Broyden())
    (z**2).sum().backward()
    assert [id(p) for p in [*gz.parameters(), *gx.parameters()]] == params_before
    for p in [*gz.parameters(), *gx.parameters()]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert bool(res.converged.all())


def test_matches_backprop_through_unrolled_fixed_point() -> None:
    g = _small_net(3, 0.6)
    y = torch.randn(4, 3, requires_grad=True)
    weights = torch.randn(4, 3)

    z, _ = solve_implicit(lambda z: z + g(z) - y, y.detach(), solver=FixedPoint())
    grads_implicit = torch.autograd.grad((weights * z).sum(), [y, *g.parameters()])

    z_unrolled = y
    for _ in range(200):
        z_unrolled = y - g(z_unrolled)
    grads_unrolled = torch.autograd.grad((weights * z_unrolled).sum(), [y, *g.parameters()])
    assert torch.allclose(z, z_unrolled, atol=1e-10)
    for a, b in zip(grads_implicit, grads_unrolled, strict=True):
        assert torch.allclose(a, b, atol=1e-8)


def _saved_tensor_count(fn) -> int:  # type: ignore[no-untyped-def]
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count


def test_memory_independent_of_iteration_count() -> None:
    g = _small_net(3, 0.95)
    y = torch.randn(4, 3, requires_grad=True)
    residual = lambda z: z + g(z) - y  # noqa: E731

    iterations = []

    def run(tol: float) -> None:
        _z, res = solve_implicit(
            residual, y.detach(), solver=FixedPoint(atol=tol, rtol=0, max_iter=5000)
        )
        iterations.append(int(res.iterations.max()))

    assert _saved_tensor_count(lambda: run(1e-2)) == _saved_tensor_count(lambda: run(1e-13))
    assert iterations[1] > 3 * iterations[0]


def test_adjoint_nonconvergence_is_not_silent() -> None:
    g = _small_net(3, 0.95)
    y = torch.randn(4, 3, requires_grad=True)
    z, _ = solve_implicit(
        lambda z: z + g(z) - y,
        y.detach(),
        solver=Broyden(),
        adjoint_solver=FixedPoint(max_iter=2, atol=1e-14, rtol=0.0),
    )
    with pytest.raises(ConvergenceError):
        z.sum().backward()


def test_no_grad_mode_returns_detached_root() -> None:
    g = _small_net(3, 0.5)
    y = torch.randn(2, 3)
    with torch.no_grad():
        z, _ = solve_implicit(lambda z: z + g(z) - y, y, solver=Broyden())
    assert not z.requires_grad
    root = attach_implicit_grad(lambda z: z + g(z) - y, z)
    assert root.requires_grad  # depends on g's parameters
    assert torch.equal(root.detach(), z)


def test_value_is_exactly_the_solver_root() -> None:
    g = _small_net(3, 0.5)
    y = torch.randn(2, 3, requires_grad=True)
    z, res = solve_implicit(lambda z: z + g(z) - y, y.detach(), solver=Anderson())
    assert torch.equal(z.detach(), res.root)
