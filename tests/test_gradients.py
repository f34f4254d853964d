"""Gradients that do not depend on the loss scale, readable adjoint solves, second derivatives.

float32 gradients through the implicit solves are compared with float64 gradients of the same
model at loss scales 1 and 1e-4: the adjoint stops relative to the incoming gradient, so the
relative error must not grow as the loss shrinks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cases import GRADIENT_CASES, SECOND_DERIVATIVE_CASES

from implicit_transforms import HigherOrderGradientError, InvertibleBlock
from implicit_transforms.blocks import resflow_block
from implicit_transforms.implicit import solve_implicit
from implicit_transforms.logdet import ExactLogDet
from implicit_transforms.solvers import Broyden, FixedPoint

CASES = {name: (case.factory, direction) for name, (case, direction) in GRADIENT_CASES.items()}


def _grads(
    block: InvertibleBlock,
    x: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
    direction: str,
    with_logdet: bool = True,
) -> torch.Tensor:
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    if with_logdet:
        run = block.inverse_and_logdet if direction == "inverse" else block.forward_and_logdet
        out, ld = run(x)
    else:  # the maps alone: no Jacobian is assembled, so the adjoint is iterative
        out = (block.inverse_map if direction == "inverse" else block.forward_map)(x)
        ld = torch.zeros(())
    loss = scale * ((out * weights).sum() + ld.sum())
    loss.backward()
    grads = [x.grad] + [p.grad for p in block.parameters() if p.grad is not None]
    return torch.cat([g.flatten() for g in grads]).double() / scale


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scale", [1.0, 1e-4])
@pytest.mark.parametrize("with_logdet", [True, False], ids=["exact-logdet", "map-only"])
def test_float32_gradients_match_float64_at_any_loss_scale(
    name: str, scale: float, with_logdet: bool
) -> None:
    factory, direction = CASES[name]
    ref = factory()
    # Saturate the layers (Lip = c^2 ~ 0.9) so that the adjoint solves do real work.
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(3.0)
    ref.eval()  # exact log-det: deterministic, so both precisions see the same function
    low = copy.deepcopy(ref).float()
    low.eval()
    x = 2 * torch.randn(16, 4)
    weights = torch.randn(16, 4)
    g64 = _grads(ref, x, weights, scale, direction, with_logdet)
    g32 = _grads(low, x.float(), weights.float(), scale, direction, with_logdet)
    rel = float((g32 - g64).norm() / g64.norm())
    assert rel < 1e-3, rel
    adjoint = low.last_adjoint_solve
    assert adjoint is not None and bool(adjoint.converged.all())
    if with_logdet:  # the exact log-det's Jacobian is the adjoint matrix: one linear solve
        assert adjoint.solver == "dense_solve" and adjoint.num_evals == 0
    else:  # the iterative adjoint worked at scale 1e-4 too
        assert int(adjoint.iterations.min()) >= 1


def test_adjoint_iterations_do_not_depend_on_the_loss_scale() -> None:
    block = resflow_block(3, [16])
    block.eval()
    y = torch.randn(8, 3)
    counts = []
    for scale in (1.0, 1e-6, 1e6):
        x, _ = block.inverse_and_logdet(y.clone().requires_grad_())
        (scale * x.pow(2).sum()).backward()
        assert block.last_adjoint_solve is not None
        counts.append(block.last_adjoint_solve.iterations.tolist())
    assert counts[0] == counts[1] == counts[2]


def test_zero_and_nonfinite_incoming_gradients() -> None:
    w = torch.tensor(0.5, requires_grad=True)
    y = torch.randn(3, 2)
    z, _ = solve_implicit(lambda t: t + w * torch.tanh(t) - y, y, solver=FixedPoint())
    upstream = torch.zeros(3, 2)
    upstream[1] = float("nan")
    (z * upstream).sum().backward()
    assert w.grad is not None and torch.isnan(w.grad)  # NaN propagates as in any backward
    w.grad = None
    z, _ = solve_implicit(lambda t: t + w * torch.tanh(t) - y, y, solver=FixedPoint())
    (z * 0.0).sum().backward()
    assert float(w.grad) == 0.0


def test_adjoint_failure_policy_follows_the_forward_solver() -> None:
    block = resflow_block(3, [16], solver=FixedPoint(on_failure="warn"))
    assert getattr(block.adjoint_solver, "on_failure", None) == "warn"
    block = resflow_block(3, [16], on_failure="ignore")
    assert getattr(block.adjoint_solver, "on_failure", None) == "ignore"
    hard = Broyden(max_iter=1, on_failure="warn")
    block = resflow_block(3, [16], adjoint_solver=hard)
    block.eval()
    x = block.inverse_map(torch.randn(4, 3))  # no log-det: the adjoint solver iterates
    with pytest.warns(Warning, match="did not reach the tolerance"):
        x.sum().backward()


def _second_derivative(block: InvertibleBlock, direction: str) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    run = block.inverse_and_logdet if direction == "inverse" else block.forward_and_logdet
    out, ld = run(x)
    (g,) = torch.autograd.grad((out.pow(2).sum() + ld.sum()), x, create_graph=True)
    g.sum().backward()


@pytest.mark.parametrize(
    ("factory", "direction"),
    [(case.factory, direction) for case, direction in SECOND_DERIVATIVE_CASES.values()],
    ids=list(SECOND_DERIVATIVE_CASES),
)
def test_second_derivatives_raise_our_error(factory, direction: str) -> None:  # type: ignore[no-untyped-def]
    block = factory()
    block.train()
    with pytest.raises(HigherOrderGradientError, match="second derivative"):
        _second_derivative(block, direction)


def test_second_derivatives_work_where_the_graph_is_exact() -> None:
    block = resflow_block(3, [8], logdet_train=ExactLogDet(), activation="elu")
    block.train()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def f(t: torch.Tensor) -> torch.Tensor:
        y, ld = block.forward_and_logdet(t)
        return y.pow(2).sum() + ld.sum()

    hess = torch.autograd.functional.hessian(f, x)
    assert torch.isfinite(hess).all() and hess.abs().sum() > 0
    assert torch.autograd.gradgradcheck(f, (x,))
