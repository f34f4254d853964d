"""The fast paths give the same answers as the plain ones, and do less work.

Solvers evaluate only the unconverged samples of a ``Rowwise`` residual; they read convergence
back to the host only every ``check_every`` iterations; an adjoint Broyden solve starts from
the forward solve's inverse Jacobian; networks can be evaluated through ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from cases import SOLVERS

from implicit_transforms import solver_tolerance
from implicit_transforms.blocks import impflow_block, resflow_block
from implicit_transforms.implicit import solve_implicit
from implicit_transforms.solvers import (
    Anderson,
    Broyden,
    FixedPoint,
    SolverStatus,
    broyden,
    fixed_point,
    rowwise,
)


def _mixed_difficulty(batch: int = 12, d: int = 5):
    """Samples whose contraction rates range from 0.1 to 0.99: they converge at very different
    iterations. Returns the plain residual, its rowwise twin and the start point."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch, d, d, generator=gen)
    rates = torch.linspace(0.1, 0.99, batch)
    a = rates[:, None, None] * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    y = torch.randn(batch, d, generator=gen)

    def plain(z: torch.Tensor) -> torch.Tensor:
        return z + torch.tanh(torch.einsum("bij,bj->bi", a, z)) - y

    def rows_fn(z: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        sub_a, sub_y = (a, y) if rows is None else (a[rows], y[rows])
        return z + torch.tanh(torch.einsum("bij,bj->bi", sub_a, z)) - sub_y

    return plain, rowwise(rows_fn), y


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_active_rows_give_bit_identical_roots_with_fewer_evaluations(solver: str) -> None:
    plain, rows_fn, y = _mixed_difficulty()
    whole = SOLVERS[solver](plain, y, max_iter=3000)
    active = SOLVERS[solver](rows_fn, y, max_iter=3000)
    assert whole.status is SolverStatus.SUCCESS and active.status is SolverStatus.SUCCESS
    assert torch.equal(whole.root, active.root)
    assert torch.equal(whole.iterations, active.iterations)
    assert torch.equal(whole.residual, active.residual)
    assert whole.num_evals == active.num_evals
    # Whole batch: every call evaluates 12 samples; active rows: only the unconverged ones.
    assert whole.sample_evals == 12 * whole.num_evals
    assert active.sample_evals == int(active.iterations.sum()) + 12
    assert active.sample_evals < whole.sample_evals


@pytest.mark.parametrize("check_every", [2, 5])
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_deferred_convergence_checks_change_nothing_but_the_syncs(
    solver: str, check_every: int
) -> None:
    _plain, rows_fn, y = _mixed_difficulty()
    every = SOLVERS[solver](rows_fn, y, max_iter=3000)
    deferred = SOLVERS[solver](rows_fn, y, max_iter=3000, check_every=check_every)
    assert torch.equal(every.root, deferred.root)
    assert torch.equal(every.iterations, deferred.iterations)
    assert bool(deferred.converged.all())
    # Finished samples wait for the next check inside the batch: a little more work.
    assert deferred.sample_evals >= every.sample_evals


def test_configs_take_check_every() -> None:
    _plain, rows_fn, y = _mixed_difficulty()
    for cfg in (
        FixedPoint(max_iter=3000, check_every=3),
        Anderson(check_every=3),
        Broyden(check_every=3),
    ):
        assert bool(cfg(rows_fn, y).converged.all())
    with pytest.raises(ValueError, match="check_every"):
        fixed_point(rows_fn, y, check_every=0)


def test_rowwise_blocks_match_whole_batch_blocks() -> None:
    """Blocks hand the solver rowwise residuals: same roots as solving the whole batch."""
    block = impflow_block(3, [16], coeff=0.95)
    block.eval()
    x = 3 * torch.randn(20, 3)
    z, _ = block.forward_and_logdet(x)
    with torch.no_grad():
        target = x + block.net_x(x)
        whole = broyden(lambda t: t + block.net_z(t) - target, target)
    assert torch.equal(z.detach(), whole.root)
    assert block.last_solve is not None
    assert block.last_solve.sample_evals < whole.sample_evals


def test_adjoint_starts_from_the_forward_inverse_jacobian() -> None:
    w = torch.tensor(0.9, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=gen)
    a = a / torch.linalg.matrix_norm(a, ord=2)
    y = torch.randn(32, 6, generator=gen)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return z + w * torch.tanh(z @ a.T) - y

    grads, counts = [], []
    for warm in (True, False):
        z, forward = solve_implicit(fn, y, solver=Broyden(), adjoint_solver=Broyden())
        assert forward.warm_state is not None
        stats = []
        if not warm:  # the same solve without the hint
            from implicit_transforms.implicit import attach_implicit_grad

            z = attach_implicit_grad(
                fn, forward.root, adjoint_solver=Broyden(), on_solve=stats.append
            )
        else:
            from implicit_transforms.implicit import attach_implicit_grad

            z = attach_implicit_grad(
                fn,
                forward.root,
                adjoint_solver=Broyden(),
                on_solve=stats.append,
                adjoint_start=forward.warm_state.transpose(),
            )
        (g,) = torch.autograd.grad((z * torch.linspace(-1, 1, 6)).sum(), w)
        grads.append(g)
        counts.append(stats[0].sample_evals)
    assert torch.allclose(grads[0], grads[1], rtol=1e-9)
    assert counts[0] < counts[1]


def test_solver_tolerance_scopes_the_default() -> None:
    block = resflow_block(3, [16])
    block.eval()
    y = torch.randn(64, 3)
    with torch.no_grad():
        block.inverse_and_logdet(y)
        tight = block.last_solve
        with solver_tolerance(1e-4):
            block.inverse_and_logdet(y)
            loose = block.last_solve
        block.inverse_and_logdet(y)
        again = block.last_solve
    assert tight is not None and loose is not None and again is not None
    assert loose.num_evals < tight.num_evals == again.num_evals
    assert float(loose.residual.max()) <= 1e-4 * (1 + float(y.norm(dim=1).max()) * 2)
    explicit = FixedPoint(atol=1e-12, rtol=1e-12)
    with solver_tolerance(1e-2):
        kept = explicit(lambda z: z + 0.5 * torch.sin(z) - y, y)
    assert float(kept.residual.max()) <= 1e-12 * (1 + float(kept.root.norm(dim=1).max()))
    with pytest.raises(ValueError, match="atol"):
        with solver_tolerance(-1.0):
            pass


def test_compiled_network_evaluation_has_no_graph_breaks_and_matches_eager() -> None:
    import torch._dynamo as dynamo

    block = impflow_block(2, [8], activation="sin", context_features=3)
    net = block.net_z
    x, ctx = torch.randn(5, 2), torch.randn(5, 3)
    weights = [layer.prepare(None) for layer in net.layers]
    explained = dynamo.explain(net.evaluate)(x, weights, net._context_bias(ctx, x))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    block.eval()
    eager_z, eager_ld = block.forward_and_logdet(x, ctx)
    compiled = impflow_block(2, [8], activation="sin", context_features=3, compile=True)
    compiled.load_state_dict(block.state_dict())
    compiled.eval()
    z, ld = compiled.forward_and_logdet(x, ctx)
    assert torch.allclose(z, eager_z, atol=1e-12) and torch.allclose(ld, eager_ld, atol=1e-10)
    calls = {"n": 0}
    inner = compiled.net_x._compiled
    assert inner is not None

    def counting(*args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return inner(*args)

    compiled.net_x._compiled = counting
    back, _ = compiled.inverse_and_logdet(z, ctx)  # the solve's evaluations have no graph
    assert torch.allclose(back, x, atol=1e-9)
    assert calls["n"] >= 2


def test_input_validation_switch() -> None:
    from implicit_transforms import ConvergenceError, input_validation, set_input_validation

    block = resflow_block(2, [8])
    bad = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        block.forward_and_logdet(bad)
    with input_validation(False):
        y, _ = block.forward_and_logdet(bad)  # no host read: NaN flows through as in torch
        assert torch.isnan(y).any()
        with pytest.raises(ConvergenceError, match="NaN or Inf"):  # a solve still reports it
            block.inverse_and_logdet(bad)
    with pytest.raises(ValueError, match="NaN or Inf"):  # restored
        block.forward_and_logdet(bad)
    with pytest.raises(TypeError, match="bool"):
        set_input_validation("no")  # type: ignore[arg-type]


def test_accelerator_path_on_cpu_matches() -> None:
    """check_every=4 (the CUDA default) through a whole block, with the adjoint warm start:
    same values and gradients as reading convergence every iteration."""
    torch.manual_seed(3)
    block = impflow_block(3, [16], coeff=0.95)
    block.eval()  # exact log-det: both runs compute the same function
    x = 2 * torch.randn(10, 3)
    outs = []
    for check in (1, 4):
        block.solver = Broyden(check_every=check)
        block.adjoint_solver = Broyden(check_every=check, max_iter=200)
        block.zero_grad()
        xi = x.clone().requires_grad_()
        z, ld = block.forward_and_logdet(xi)
        (z.pow(2).sum() + ld.sum()).backward()
        outs.append((z.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-10)
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        assert torch.allclose(a, b, atol=1e-10)
