"""normflows plugin, in normflows' idioms: its flows and base distributions, its training loop
(``forward_kld`` + a torch optimizer), its direction (``forward`` = base to data)."""

from __future__ import annotations

import math

import pytest
import torch

nf = pytest.importorskip("normflows")

from implicit_transforms.plugins.normflows import (
    BlockFlow,
    ConditionalImpFlow,
    ConditionalIResNet,
    ConditionalMonotone,
    ConditionalResFlow,
    ImpFlow,
    IResNet,
    Monotone,
    ResFlow,
    implicit_flow,
)

FLOWS = {"impflow": ImpFlow, "resflow": ResFlow, "iresnet": IResNet, "monotone": Monotone}
CONDITIONAL = {
    "impflow": ConditionalImpFlow,
    "resflow": ConditionalResFlow,
    "iresnet": ConditionalIResNet,
    "monotone": ConditionalMonotone,
}


def _mixed(name: str, d: int = 2) -> nf.NormalizingFlow:
    """Our block among normflows' own layers (listed base to data, as normflows does)."""
    b = torch.tensor([1.0, 0.0] * (d // 2))
    flows = [
        nf.flows.MaskedAffineFlow(
            b, nf.nets.MLP([d, 16, d], init_zeros=True), nf.nets.MLP([d, 16, d], init_zeros=True)
        ),
        FLOWS[name](d, [16]),
        nf.flows.Permute(d, mode="swap"),
        nf.flows.AutoregressiveRationalQuadraticSpline(d, 1, 16),
        nf.flows.ActNorm(d),
        FLOWS[name](d, [16]),
        nf.flows.CoupledRationalQuadraticSpline(d, 1, 16),
    ]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(d), flows)


def _data_to_base(model: nf.NormalizingFlow, context: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    def f(x: torch.Tensor) -> torch.Tensor:
        z = x.unsqueeze(0)
        for flow in reversed(model.flows):
            z = flow.inverse(z)[0] if context is None else flow.inverse(z, context=context)[0]
        return z.squeeze(0)

    return f


def _exact_log_prob(model, x, context=None):  # type: ignore[no-untyped-def]
    """log q0(f(x)) + log|det df/dx| with the full Jacobian of the data-to-base map."""
    out = []
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]
        f = _data_to_base(model, ctx)
        jac = torch.autograd.functional.jacobian(f, x[i]).reshape(x[i].numel(), -1)
        z = f(x[i]).unsqueeze(0)
        base = model.q0.log_prob(z) if ctx is None else model.q0.log_prob(z, context=ctx)
        out.append(base[0] + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _train(model, x, steps, context=None):  # type: ignore[no-untyped-def]
    """normflows' training loop (its README): forward_kld, Adam, skip non-finite losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.forward_kld(x) if context is None else model.forward_kld(x, context)
        if ~(torch.isnan(loss) | torch.isinf(loss)):
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("name", FLOWS)
def test_log_prob_matches_slogdet(name: str) -> None:
    x = torch.randn(256, 2) * 1.5
    model = _train(_mixed(name), x, 5).eval()  # trained a little: every layer non-trivial
    pts = x[:4]
    assert torch.allclose(model.log_prob(pts), _exact_log_prob(model, pts), atol=1e-8)
    assert torch.allclose(-model.log_prob(pts).mean(), model.forward_kld(pts), atol=1e-10)


@pytest.mark.parametrize("name", FLOWS)
def test_direction_forward_is_base_to_data(name: str) -> None:
    """normflows' forward(z) is the block's inverse (a solve), inverse(x) its explicit map."""
    layer = FLOWS[name](3, [16]).eval()
    x = torch.randn(5, 3)
    z, ld_inv = layer.inverse(x)
    assert torch.equal(z, layer.block.forward_map(x))
    back, ld_fwd = layer.forward(z)
    assert torch.allclose(back, x, atol=1e-9)
    assert torch.allclose(ld_fwd, -ld_inv, atol=1e-9)
    assert ld_inv.shape == (5,)


@pytest.mark.parametrize("name", FLOWS)
def test_round_trip_and_sample_log_prob(name: str) -> None:
    model = _train(_mixed(name), torch.randn(128, 2), 3).eval()
    x = torch.randn(16, 2)
    assert torch.allclose(model.forward(model.inverse(x)), x, atol=1e-8)
    samples, log_q = model.sample(64)
    assert samples.shape == (64, 2) and torch.isfinite(samples).all()
    assert torch.allclose(log_q, model.log_prob(samples), atol=1e-8)


@pytest.mark.parametrize("name", FLOWS)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = _mixed(name)
    model.forward_kld(torch.randn(64, 2)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    ours = [p for f in model.flows if isinstance(f, BlockFlow) for p in f.parameters()]
    assert ours and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours)


def test_training_lowers_forward_kld() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    model = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(2, trainable=False),
        [ResFlow(2, [32]), nf.flows.Permute(2, mode="swap"), ImpFlow(2, [32])],
    )
    before = float(model.forward_kld(x).detach())
    _train(model, x, 150)
    assert float(model.forward_kld(x).detach()) < before - 0.3


@pytest.mark.parametrize("name", FLOWS)
def test_reverse_kld_reaches_every_parameter(name: str) -> None:
    model = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(2),
        [FLOWS[name](2, [16])],
        p=nf.distributions.target.TwoMoons(),
    )
    loss = model.reverse_kld(32)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flows.parameters())


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_flow(name: str) -> None:
    ctx_dim, d = 3, 2
    encoder = nf.nets.MLP([ctx_dim, 8, 2 * d])
    flows = [
        CONDITIONAL[name](d, ctx_dim, [16]),
        nf.flows.Permute(d, mode="swap"),
        nf.flows.AutoregressiveRationalQuadraticSpline(d, 1, 16, num_context_channels=ctx_dim),
        ImpFlow(d, [16]),  # an unconditional block in a conditional flow ignores the context
    ]
    model = nf.ConditionalNormalizingFlow(
        nf.distributions.base.ConditionalDiagGaussian(d, encoder), flows
    )
    x, c = torch.randn(128, d), torch.randn(128, ctx_dim)
    _train(model, x, 3, context=c).eval()
    pts, ctx = x[:3], c[:3]
    assert torch.allclose(model.log_prob(pts, ctx), _exact_log_prob(model, pts, ctx), atol=1e-8)
    other = model.log_prob(pts, ctx + 1.0)
    assert not torch.allclose(other, model.log_prob(pts, ctx))
    assert torch.allclose(model.forward(model.inverse(pts, ctx), ctx), pts, atol=1e-8)
    samples, log_q = model.sample(3, context=ctx)
    assert torch.allclose(log_q, model.log_prob(samples, ctx), atol=1e-8)
    with pytest.raises(ValueError, match="context"):
        flows[0].inverse(pts)


@pytest.mark.parametrize("name", ["resflow", "impflow"])
def test_images(name: str) -> None:
    shape = (2, 4, 4)
    flows = [
        FLOWS[name](shape, 8),
        nf.flows.ActNorm((2, 1, 1)),
        nf.flows.Permute(2, mode="swap"),
        FLOWS[name](shape, 8),
    ]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(shape), flows)
    x = torch.randn(32, *shape)
    _train(model, x, 2).eval()
    pts = x[:2]
    assert torch.allclose(model.log_prob(pts), _exact_log_prob(model, pts), atol=1e-8)
    samples, log_q = model.sample(4)
    assert samples.shape == (4, *shape)
    assert torch.allclose(log_q, model.log_prob(samples), atol=1e-8)


def test_float32_training_step() -> None:
    """float32 at a realistic loss scale (data of spread 5), as normflows users train."""
    model = _mixed("impflow").float()
    x = (torch.randn(256, 2) * 5).float()
    _train(model, x, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="InvertibleBlock"):
        BlockFlow(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_context_channels"):
        ConditionalResFlow(2, 0)
    with pytest.raises(TypeError, match="unknown block option"):
        ResFlow(2, [8], coef=0.5)


def test_implicit_flow_is_the_trainer_default() -> None:
    model = implicit_flow(2)
    kinds = [type(f).__name__ for f in reversed(model.flows)]  # data to base
    assert kinds == ["ActNorm", "CoupledRationalQuadraticSpline", "ActNorm", "BlockFlow"] * 2
    blocks = [f.block for f in model.flows if isinstance(f, BlockFlow)]
    assert all(type(b.logdet_train).__name__ == "ExactLogDet" for b in blocks)
    x = torch.randn(128, 2)
    _train(model, x, 2).eval()
    pts = x[:3]
    assert torch.allclose(model.log_prob(pts), _exact_log_prob(model, pts), atol=1e-8)
    assert math.isfinite(float(model.forward_kld(x).detach()))


def test_empty_batch() -> None:
    """Empty batches pass through our layers (normflows' own splines refuse them: a reshape
    with -1 on zero elements)."""
    flows = [ResFlow(2, [8]), nf.flows.Permute(2, mode="swap"), ImpFlow(2, [8])]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), flows).eval()
    assert model.log_prob(torch.empty(0, 2)).shape == (0,)
    assert model.forward(torch.empty(0, 2)).shape == (0, 2)
