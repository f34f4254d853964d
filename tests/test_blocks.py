"""One property-test module over a registry of every block and configuration."""

from __future__ import annotations

import math

import pytest
import torch
from cases import CTX, PROPERTY_CASES, BlockCase, round_trip_bound

from implicit_transforms import (
    ConvergenceError,
    ImplicitBlock,
    InvertibleBlock,
    ResidualBlock,
)
from implicit_transforms.blocks import (
    impflow_block,
    iresnet_block,
    monotone_block,
    resflow_block,
)
from implicit_transforms.lipschitz import certify
from implicit_transforms.solvers import Broyden, FixedPoint, SolverResult, default_tolerance

Case = BlockCase
CASES = PROPERTY_CASES
IMPLICIT_CASES = [k for k in CASES if k.startswith(("impflow", "monotone"))]
"""Blocks whose forward map is a solve too (ImpFlow, Monotone Flows)."""


def _inputs(case: Case, batch: tuple[int, ...] = (4,), dtype: torch.dtype = torch.float64):
    x = torch.randn(*batch, *case.event, dtype=dtype)
    ctx = None if case.context is None else torch.randn(*batch, case.context, dtype=dtype)
    return x, ctx


def _block(name: str, dtype: torch.dtype = torch.float64) -> InvertibleBlock:
    block = CASES[name].factory().to(dtype)
    block.eval()
    return block


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_round_trip_float64(name: str, mode: str) -> None:
    case = CASES[name]
    block = _block(name)
    block.train(mode == "train")
    x, ctx = _inputs(case, batch=(2, 3))
    y, ld = block.forward_and_logdet(x, ctx)
    x_rec, ld_inv = block.inverse_and_logdet(y, ctx)
    assert y.shape == x.shape and ld.shape == (2, 3) and ld_inv.shape == (2, 3)
    assert float((x_rec - x).detach().abs().max()) < 1e-10
    assert isinstance(block.last_solve, SolverResult) and bool(block.last_solve.converged.all())


@pytest.mark.parametrize("name", CASES)
def test_round_trip_float32(name: str) -> None:
    case = CASES[name]
    block = _block(name, torch.float32)
    x, ctx = _inputs(case, dtype=torch.float32)
    y, ld = block.forward_and_logdet(x, ctx)
    x_rec, ld_inv = block.inverse_and_logdet(y, ctx)
    assert y.dtype == ld.dtype == x_rec.dtype == torch.float32
    # To tolerance: the solve stops at ||F|| <= tol (1 + ||x||), and ||x - x*|| <= ||F|| /
    # (1 - Lip) for a residual with a contractive part.
    tol = default_tolerance(torch.float32)
    lip = max(certify(net).bound for net in block.networks())
    bound = round_trip_bound(block, x, y, tol, lip).max()
    assert float((x_rec - x).flatten(1).norm(dim=1).max()) <= float(bound)
    assert float((ld + ld_inv).abs().max()) < 1e-4


def _exact_logdet(
    block: InvertibleBlock, x: torch.Tensor, ctx: torch.Tensor | None, inverse: bool
) -> torch.Tensor:
    fn = block.inverse_and_logdet if inverse else block.forward_and_logdet
    out = []
    for i in range(x.shape[0]):
        c = None if ctx is None else ctx[i : i + 1]
        f = lambda t: fn(t.reshape(1, *x.shape[1:]), c)[0].reshape(-1)  # noqa: B023, E731
        jac = torch.autograd.functional.jacobian(f, x[i].reshape(-1))
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("name", CASES)
def test_logdet_matches_exact_slogdet_of_autograd_jacobian(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    x, ctx = _inputs(case, batch=(3,))
    y, ld = block.forward_and_logdet(x, ctx)
    assert torch.allclose(ld, _exact_logdet(block, x, ctx, inverse=False), atol=1e-9)
    _x_rec, ld_inv = block.inverse_and_logdet(y, ctx)
    assert torch.allclose(ld_inv, -ld, atol=1e-9)
    assert torch.allclose(ld_inv, _exact_logdet(block, y.detach(), ctx, inverse=True), atol=1e-9)
    assert torch.allclose(block.logdet(x, ctx), ld, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_reach_every_parameter(name: str, direction: str) -> None:
    case = CASES[name]
    block = _block(name)
    block.train()
    x, ctx = _inputs(case)
    fn = block.forward_and_logdet if direction == "forward" else block.inverse_and_logdet
    out, ld = fn(x, ctx)
    (out.pow(2).sum() + ld.sum()).backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert float(p.grad.abs().sum()) > 0, pname


@pytest.mark.parametrize("name", IMPLICIT_CASES)
def test_implicit_block_gradcheck(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    x, ctx = _inputs(case, batch=(2,))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: block.forward_and_logdet(t, ctx), (x,), atol=1e-6)
    y = block.forward_and_logdet(x, ctx)[0].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: block.inverse_and_logdet(t, ctx), (y,), atol=1e-6)


def test_residual_inverse_gradcheck() -> None:
    block = _block("resflow-mlp")
    y = torch.randn(2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block.inverse_and_logdet(t), (y,), atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_state_dict_round_trip(name: str) -> None:
    case = CASES[name]
    a = _block(name)
    x, ctx = _inputs(case)
    a.forward_and_logdet(x, ctx)  # materialise size-dependent buffers
    torch.manual_seed(999)
    b = _block(name)
    b.load_state_dict(a.state_dict())
    ya, la = a.forward_and_logdet(x, ctx)
    yb, lb = b.forward_and_logdet(x, ctx)
    assert torch.equal(ya, yb) and torch.equal(la, lb)


@pytest.mark.parametrize("name", CASES)
def test_dtype_and_device_follow_input(name: str, device: torch.device) -> None:
    case = CASES[name]
    block = _block(name, torch.float32).to(device)
    x, ctx = _inputs(case, dtype=torch.float32)
    x = x.to(device)
    ctx = None if ctx is None else ctx.to(device)
    y, ld = block.forward_and_logdet(x, ctx)
    x_rec, _ = block.inverse_and_logdet(y, ctx)
    for t in (y, ld, x_rec):
        assert t.dtype == torch.float32 and t.device.type == device.type


@pytest.mark.parametrize("name", [k for k in CASES if CASES[k].context])
def test_context_broadcasts_over_leading_batch_shapes(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    x = torch.randn(5, 2, *case.event)
    ctx = torch.randn(2, CTX)  # broadcast over the leading 5
    y, ld = block.forward_and_logdet(x, ctx)
    y2, ld2 = block.forward_and_logdet(x, ctx.expand(5, 2, CTX))
    assert torch.equal(y, y2) and torch.equal(ld, ld2)
    assert ld.shape == (5, 2)
    # The context really conditions the map.
    y3, _ = block.forward_and_logdet(x, ctx + 1.0)
    assert not torch.allclose(y, y3)


class _SpySolver:
    def __init__(self) -> None:
        self.calls = 0
        self.inner = FixedPoint()

    def __call__(self, fn, z0, *, event_dims: int = 1):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner(fn, z0, event_dims=event_dims)


@pytest.mark.parametrize("name", [k for k in CASES if k not in IMPLICIT_CASES])
def test_explicit_direction_never_calls_a_solver(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    assert isinstance(block, ResidualBlock)
    spy = _SpySolver()
    block.solver = spy
    block.adjoint_solver = spy
    x, ctx = _inputs(case)
    for mode in (True, False):
        block.train(mode)
        y, ld = block.forward_and_logdet(x.requires_grad_(), ctx)
        (y.sum() + ld.sum()).backward()
        block.logdet(x, ctx)
    assert spy.calls == 0
    block.inverse_and_logdet(y.detach(), ctx)
    assert spy.calls == 1


def test_estimators_are_explicit_settings() -> None:
    block = resflow_block(8, [8])  # above the exact-training threshold, at most 64 elements
    x = torch.randn(4, 8)
    block.eval()
    assert torch.equal(block.logdet(x), block.logdet(x))  # exact in evaluation
    block.train()
    assert not torch.equal(block.logdet(x), block.logdet(x))  # roulette in training


def test_implicit_block_is_steeper_than_its_residual_parts() -> None:
    """One ImpFlow block composes x + g_x(x) with the inverse of z + g_z(z)."""
    block = _block("impflow-mlp")
    assert isinstance(block, ImplicitBlock)
    x = torch.randn(3, 3)
    z, _ = block.forward_and_logdet(x)
    lhs = z + block.net_z(z)
    rhs = x + block.net_x(x)
    assert torch.allclose(lhs, rhs, atol=1e-11)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_wrong_feature_size(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    bad = list(case.event)
    bad[0] += 1
    with pytest.raises(ValueError, match=r"x must have shape \(\*, "):
        block.forward_and_logdet(torch.randn(2, *bad), _inputs(case, (2,))[1])
    with pytest.raises(ValueError, match=r"y must have shape"):
        block.inverse_and_logdet(torch.randn(2, *bad), _inputs(case, (2,))[1])


@pytest.mark.parametrize("name", CASES)
def test_nan_and_inf_inputs(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    x, ctx = _inputs(case)
    x[0].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        block.forward_and_logdet(x, ctx)
    x[0].view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        block.inverse_and_logdet(x, ctx)


def test_context_errors() -> None:
    block = _block("resflow-mlp-context")
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"context must have shape \(\*, 2\)"):
        block.forward_and_logdet(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="pass a context"):
        block.forward_and_logdet(x)
    with pytest.raises(ValueError, match="does not broadcast"):
        block.forward_and_logdet(x, torch.randn(3, 2))
    with pytest.raises(ValueError, match="without context_features"):
        _block("resflow-mlp").forward_and_logdet(x, torch.randn(4, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        block.forward_and_logdet(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 2))


@pytest.mark.parametrize("factory", [iresnet_block, resflow_block, impflow_block, monotone_block])
@pytest.mark.parametrize("coeff", [1.0, 1.2])
def test_coeff_at_least_one_rejected(factory, coeff: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"coeff must be in \(0, 1\)"):
        factory(3, [8], coeff=coeff)


@pytest.mark.parametrize("name", ["resflow-mlp", "impflow-mlp", "monotone-mlp"])
def test_nonconvergence_raises(name: str) -> None:
    block = _block(name)
    block.solver = FixedPoint(max_iter=1) if name.startswith("resflow") else Broyden(max_iter=1)
    x = torch.randn(4, 3) * 3
    y, _ = block.forward_and_logdet(x) if name.startswith("resflow") else (x, None)
    with pytest.raises(ConvergenceError, match="max_iter"):
        block.inverse_and_logdet(y)


def test_mismatched_networks_rejected() -> None:
    from implicit_transforms.lipschitz import LipschitzMLP

    with pytest.raises(ValueError, match="same event shape"):
        ImplicitBlock(LipschitzMLP(3, [4]), LipschitzMLP(2, [4]))
    with pytest.raises(TypeError, match="LipschitzNet"):
        ResidualBlock(torch.nn.Linear(3, 3))  # type: ignore[arg-type]


def test_exact_default_for_small_events_only() -> None:
    small = _block("resflow-mlp")
    assert type(small.estimator(3)).__name__ == "ExactLogDet"
    assert small.estimator(10_000) is small.logdet_train
    assert math.isfinite(float(small.logdet(torch.randn(1, 3))))


def test_factories_take_activation_and_training_estimator() -> None:
    from implicit_transforms.lipschitz.activations import Sine
    from implicit_transforms.logdet import ExactLogDet

    for factory in (iresnet_block, resflow_block, impflow_block, monotone_block):
        block = factory(2, [8], activation="sin", logdet_train=ExactLogDet())
        assert any(isinstance(m, Sine) for m in block.modules()), factory.__name__
        assert isinstance(block.logdet_train, ExactLogDet)
        x = torch.randn(5, 2, dtype=torch.float64)
        block = block.double()
        _, ld = block.forward_and_logdet(x)
        jac = torch.stack(
            [
                torch.autograd.functional.jacobian(lambda v, b=block: b(v[None])[0][0], xi)
                for xi in x
            ]
        )
        assert torch.allclose(ld, torch.linalg.slogdet(jac)[1], atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_output_only_maps_match_and_skip_the_logdet(name: str) -> None:
    case = CASES[name]
    block = _block(name)
    x, ctx = _inputs(case)
    y, _ = block.forward_and_logdet(x, ctx)
    calls = {"n": 0}
    estimator = block.estimator

    def counting(numel: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return estimator(numel)

    block.estimator = counting  # type: ignore[method-assign]
    assert torch.equal(block.forward_map(x, ctx), y)
    x_back = block.inverse_map(y, ctx)
    assert torch.allclose(x_back, x, atol=1e-10)
    assert calls["n"] == 0
