"""The one-solve adjoint: where the exact log-det holds ``dF/dz``, the backward pass solves the
adjoint system in one factorisation; it must give the iterative adjoint's gradients."""

from __future__ import annotations

import pytest
import torch

from implicit_transforms import ConvergenceError, ConvergenceWarning, InvertibleBlock
from implicit_transforms.blocks import impflow_block, iresnet_block, monotone_block, resflow_block
from implicit_transforms.logdet import ExactLogDet
from implicit_transforms.solvers import dense_solve


def _grads(
    block: InvertibleBlock, x: torch.Tensor, direction: str, ctx: torch.Tensor | None
) -> torch.Tensor:
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    run = block.inverse_and_logdet if direction == "inverse" else block.forward_and_logdet
    out, ld = run(x, ctx)
    (out.sin().sum() + (ld * torch.linspace(0.5, 1.5, ld.numel())).sum()).backward()
    grads = [x.grad] + [p.grad for p in block.parameters() if p.grad is not None]
    return torch.cat([g.flatten() for g in grads])


def _saturated(block: InvertibleBlock) -> InvertibleBlock:
    with torch.no_grad():  # Lip close to c^2: the adjoint system is far from the identity
        for p in block.parameters():
            p.mul_(3.0)
    return block.double()


@pytest.mark.parametrize(
    ("factory", "direction"),
    [
        (lambda: impflow_block(3, [16, 16]), "forward"),
        (lambda: impflow_block(3, [16, 16]), "inverse"),
        (lambda: resflow_block(3, [16, 16]), "inverse"),
        (lambda: iresnet_block(3, [16, 16]), "inverse"),
        (lambda: impflow_block(4, [16], context_features=2), "forward"),
        (lambda: monotone_block(3, [16, 16]), "forward"),
        (lambda: monotone_block(3, [16, 16]), "inverse"),
    ],
    ids=[
        "impflow-forward",
        "impflow-inverse",
        "resflow-inverse",
        "iresnet-inverse",
        "context",
        "monotone-forward",
        "monotone-inverse",
    ],
)
def test_one_solve_adjoint_equals_the_iterative_one(factory, direction: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    block = _saturated(factory())
    block.eval()  # exact log-det in both runs
    ctx = None
    if block.context_features:
        ctx = torch.randn(8, block.context_features, dtype=torch.float64)
    x = torch.randn(8, block._event_template[0], dtype=torch.float64)
    direct = _grads(block, x, direction, ctx)
    assert block.last_adjoint_solve is not None
    assert block.last_adjoint_solve.solver == "dense_solve"
    assert block.last_adjoint_solve.num_evals == 0
    block.logdet_eval = _NotExact(ExactLogDet())  # same values, but no Jacobian handed over
    iterative = _grads(block, x, direction, ctx)
    assert block.last_adjoint_solve.solver != "dense_solve"
    assert int(block.last_adjoint_solve.iterations.max()) >= 2  # real iterative work
    torch.testing.assert_close(direct, iterative, rtol=1e-8, atol=1e-10)


class _NotExact:
    """The exact log-det behind another type: the blocks then solve the adjoint iteratively."""

    def __init__(self, inner: ExactLogDet) -> None:
        self.inner = inner

    def __call__(self, g, x, *, event_dims=1):  # type: ignore[no-untyped-def]
        return self.inner(g, x, event_dims=event_dims)


def test_training_with_the_exact_logdet_uses_the_one_solve_adjoint() -> None:
    block = impflow_block(2, [16, 16])  # D = 2 trains with the exact log-det by default
    block.train()
    z, ld = block.forward_and_logdet(torch.randn(32, 2))
    (z.pow(2).sum() - ld.sum()).backward()
    assert block.last_adjoint_solve is not None
    assert block.last_adjoint_solve.solver == "dense_solve"
    assert bool(block.last_adjoint_solve.converged.all())


def test_dense_solve_solves_both_orientations_in_float32_and_float64() -> None:
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        m = torch.eye(5, dtype=dtype) + 0.3 * torch.randn(7, 5, 5, dtype=dtype)
        t = torch.randn(7, 5, dtype=dtype)
        w = dense_solve(m, t).root
        torch.testing.assert_close((m @ w[..., None])[..., 0], t)
        wt = dense_solve(m, t, transpose=True).root
        torch.testing.assert_close((m.mT @ wt[..., None])[..., 0], t)


def test_dense_solve_keeps_event_shapes_and_empty_batches() -> None:
    m = 2 * torch.eye(6, dtype=torch.float64).expand(3, 4, 6, 6)
    t = torch.ones(3, 4, 2, 3, dtype=torch.float64)
    res = dense_solve(m, t, event_dims=2)
    assert res.root.shape == t.shape and res.residual.shape == (3, 4)
    torch.testing.assert_close(res.root, t / 2)
    empty = dense_solve(torch.empty(0, 2, 2), torch.empty(0, 2))
    assert empty.root.shape == (0, 2) and empty.converged.numel() == 0


def test_dense_solve_failure_is_never_silent() -> None:
    m = torch.eye(2).expand(3, 2, 2).clone()
    m[1, 0, 0] = float("nan")
    t = torch.ones(3, 2)
    with pytest.raises(ConvergenceError, match="NaN or Inf"):
        dense_solve(m, t)
    with pytest.warns(ConvergenceWarning):
        res = dense_solve(m, t, on_failure="warn")
    assert res.nonfinite.tolist() == [False, True, False]
    singular = torch.zeros(1, 2, 2)
    with pytest.raises(ConvergenceError):
        dense_solve(singular, torch.ones(1, 2))


def test_dense_solve_rejects_a_mismatched_matrix() -> None:
    with pytest.raises(ValueError, match=r"matrix must have shape \(4, 3, 3\)"):
        dense_solve(torch.eye(2).expand(4, 2, 2), torch.ones(4, 3))
    with pytest.raises(ValueError, match="on_failure"):
        dense_solve(torch.eye(2)[None], torch.ones(1, 2), on_failure="loud")  # type: ignore[arg-type]
