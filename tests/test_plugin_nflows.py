"""nflows plugin: conventions, mixed models against exact slogdet, Flow API, a short fit."""

from __future__ import annotations

import pytest
import torch

nflows = pytest.importorskip("nflows")

from implicit_transforms.plugins.nflows import (
    BlockTransform,
    ImpFlowTransform,
    IResNetTransform,
    MonotoneTransform,
    ResFlowTransform,
)
from nflows.distributions import ConditionalDiagonalNormal, StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    InverseTransform,
    LULinear,
    MultiscaleCompositeTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
    ReversePermutation,
)
from nflows.transforms.reshape import SqueezeTransform

TRANSFORMS = {
    "impflow": ImpFlowTransform,
    "resflow": ResFlowTransform,
    "iresnet": IResNetTransform,
    "monotone": MonotoneTransform,
}


def _net_factory(hidden: int = 16, context: int | None = None):  # type: ignore[no-untyped-def]
    return lambda i, o: ResidualNet(
        i, o, hidden_features=hidden, context_features=context, num_blocks=1
    )


@pytest.mark.parametrize("name", TRANSFORMS)
def test_inverse_composition_is_identity(name: str) -> None:
    t = TRANSFORMS[name](3, [16])
    t.eval()
    x = torch.randn(5, 3)
    out, ld = CompositeTransform([InverseTransform(t), t])(x)
    assert torch.allclose(out, x, atol=1e-10) and torch.allclose(ld, torch.zeros(5), atol=1e-10)
    out, ld = CompositeTransform([t, InverseTransform(t)])(x)
    assert torch.allclose(out, x, atol=1e-10) and torch.allclose(ld, torch.zeros(5), atol=1e-10)


def _mixed(features: int = 2, context: int | None = None) -> CompositeTransform:
    mask = torch.tensor([1, 0] * (features // 2))
    return CompositeTransform(
        [
            ActNorm(features),
            AffineCouplingTransform(mask, _net_factory(context=context)),
            ImpFlowTransform(features, [16], context_features=context),
            ReversePermutation(features),
            PiecewiseRationalQuadraticCouplingTransform(
                1 - mask, _net_factory(context=context), tails="linear", tail_bound=4.0, num_bins=4
            ),
            ResFlowTransform(features, [16], context_features=context),
            LULinear(features),
            IResNetTransform(features, [16], context_features=context),
            RandomPermutation(features),
        ]
    )


def test_mixed_model_logdet_matches_exact_slogdet() -> None:
    transform = _mixed(4)
    transform.eval()
    x = torch.randn(3, 4)
    out, ld = transform(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda t: transform(t[None])[0][0], x[i])
        assert torch.allclose(ld[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-9)
    back, ld_inv = transform.inverse(out)
    assert torch.allclose(back, x, atol=1e-9) and torch.allclose(ld_inv, -ld, atol=1e-9)


def test_flow_api_without_context() -> None:
    flow = Flow(_mixed(2), StandardNormal([2]))
    flow.eval()
    x = torch.randn(6, 2)
    lp = flow.log_prob(x)
    assert lp.shape == (6,)
    s = flow.sample(7)
    assert s.shape == (7, 2)
    s, lp_s = flow.sample_and_log_prob(4)
    assert torch.allclose(lp_s, flow.log_prob(s), atol=1e-8)
    noise = flow.transform_to_noise(x)
    assert noise.shape == x.shape


def test_flow_api_with_context_and_embedding() -> None:
    embedding = torch.nn.Linear(5, 3)
    flow = Flow(
        _mixed(2, context=3),
        ConditionalDiagonalNormal([2], context_encoder=torch.nn.Linear(3, 4)),
        embedding,
    )
    flow.eval()
    ctx = torch.randn(4, 5)
    x = torch.randn(4, 2)
    assert flow.log_prob(x, context=ctx).shape == (4,)
    samples = flow.sample(6, context=ctx)
    assert samples.shape == (4, 6, 2)  # nflows' [context, n, D]
    s, lp = flow.sample_and_log_prob(3, context=ctx)
    assert s.shape == (4, 3, 2) and lp.shape == (4, 3)
    ctx_rep = ctx[:, None].expand(4, 3, 5).reshape(12, 5)
    assert torch.allclose(
        lp.reshape(-1), flow.log_prob(s.reshape(12, 2), context=ctx_rep), atol=1e-8
    )


def test_images_in_multiscale_composite() -> None:
    c, h, w = 1, 4, 4
    multiscale = MultiscaleCompositeTransform(num_transforms=2, split_dim=1)
    shape = (c, h, w)
    for _ in range(2):
        level = CompositeTransform(
            [SqueezeTransform(), ResFlowTransform((4 * shape[0], shape[1] // 2, shape[2] // 2), 4)]
        )
        shape = multiscale.add_transform(level, (4 * shape[0], shape[1] // 2, shape[2] // 2))
    flow = Flow(multiscale, StandardNormal([c * h * w]))
    flow.eval()
    x = torch.randn(3, c, h, w)
    lp = flow.log_prob(x)
    assert lp.shape == (3,) and bool(torch.isfinite(lp).all())
    noise, _ld = multiscale(x)
    back, _ = multiscale.inverse(noise)
    assert torch.allclose(back, x, atol=1e-9)


def test_image_block_direct() -> None:
    t = ImpFlowTransform((2, 3, 3), 4)
    t.eval()
    x = torch.randn(2, 2, 3, 3)
    y, ld = t(x)
    assert ld.shape == (2,)
    back, ld_inv = t.inverse(y)
    assert torch.allclose(back, x, atol=1e-9) and torch.allclose(ld, -ld_inv, atol=1e-9)
    assert t.last_solve is not None


def _two_moons(n: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(n, generator=gen) * torch.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.08 * torch.randn(n, 2, generator=gen)


def test_short_maximum_likelihood_fit_improves_test_nll() -> None:
    gen = torch.Generator().manual_seed(0)
    train, test = _two_moons(2048, gen), _two_moons(512, gen)
    flow = Flow(
        CompositeTransform(
            [
                ImpFlowTransform(2, [32, 32]),
                AffineCouplingTransform(torch.tensor([1, 0]), _net_factory(32)),
                ResFlowTransform(2, [32, 32]),
            ]
        ),
        StandardNormal([2]),
    )
    flow.eval()
    with torch.no_grad():
        before = float(-flow.log_prob(test).mean())
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    flow.train()
    for step in range(150):
        batch = train[torch.randint(0, 2048, (128,), generator=gen)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), step
    flow.eval()
    with torch.no_grad():
        after = float(-flow.log_prob(test).mean())
    assert after < before - 0.3, (before, after)


def test_block_transform_validates() -> None:
    with pytest.raises(TypeError, match="InvertibleBlock"):
        BlockTransform(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coeff"):
        ResFlowTransform(2, coeff=1.5)


# -- Flow.sample discards the log-det: it is deferred, never computed --------------------------


def _count_logdets(transform: CompositeTransform) -> dict[str, int]:
    """Count the log-det estimator calls of every block of ``transform`` (no stand-ins: the
    block's own estimator runs)."""
    calls = {"n": 0}
    for layer in transform._transforms:
        if isinstance(layer, BlockTransform):
            estimator = layer.block.estimator

            def counting(numel: int, estimator=estimator):  # type: ignore[no-untyped-def]
                calls["n"] += 1
                return estimator(numel)

            layer.block.estimator = counting  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_flow_sample_computes_no_logdet_and_sample_and_log_prob_stays_exact(grad: bool) -> None:
    transform = _mixed(2)
    flow = Flow(transform, StandardNormal([2]))
    flow.eval()
    calls = _count_logdets(transform)
    with torch.set_grad_enabled(grad):
        samples = flow.sample(64)
    assert samples.shape == (64, 2) and calls["n"] == 0
    with torch.set_grad_enabled(grad):
        s, lp = flow.sample_and_log_prob(32)
    assert calls["n"] == 3  # one log-det per block, from the pair: no second solve
    calls["n"] = 0
    assert torch.allclose(lp, flow.log_prob(s), atol=1e-9)
    assert calls["n"] == 3


def test_conditional_flow_sample_computes_no_logdet() -> None:
    transform = _mixed(2, context=3)
    flow = Flow(transform, ConditionalDiagonalNormal([2], context_encoder=torch.nn.Linear(3, 4)))
    flow.eval()
    calls = _count_logdets(transform)
    ctx = torch.randn(4, 3)
    assert flow.sample(5, context=ctx).shape == (4, 5, 2) and calls["n"] == 0
    s, lp = flow.sample_and_log_prob(5, context=ctx)
    ctx_rep = ctx[:, None].expand(4, 5, 3).reshape(20, 3)
    assert torch.allclose(lp.reshape(-1), flow.log_prob(s.reshape(20, 2), ctx_rep), atol=1e-9)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_deferred_logdet_gives_the_inverse_logdet_and_its_gradient(name: str) -> None:
    from implicit_transforms.plugins.nflows.deferred import DeferredLogDet

    t = TRANSFORMS[name](3, [16])
    t.eval()
    z = torch.randn(6, 3)
    x, ld = t.inverse(z)
    assert isinstance(ld, DeferredLogDet) and not ld.computed
    assert ld.shape == (6,) and ld.dtype == z.dtype and not ld.computed  # metadata is free
    params = [p for p in t.parameters() if p.requires_grad]
    got = torch.autograd.grad((ld * torch.arange(6.0)).sum(), params, allow_unused=True)
    x_ref, ld_ref = t.block.inverse_and_logdet(z)
    want = torch.autograd.grad((ld_ref * torch.arange(6.0)).sum(), params, allow_unused=True)
    assert torch.allclose(ld, ld_ref, atol=1e-12) and torch.equal(x, x_ref)
    for g, w in zip(got, want, strict=True):
        assert (g is None and w is None) or torch.allclose(g, w, atol=1e-10)


def test_deferred_logdet_in_place_adds() -> None:
    t = ResFlowTransform(2, [8])
    t.eval()
    z = torch.randn(4, 2)
    _, ld = t.inverse(z)
    exact = t.block.inverse_and_logdet(z)[1]
    total = torch.ones(4)
    total += ld  # nflows' cascade: deferred, rebinds total
    assert not ld.computed
    total += torch.ones(4)  # a plain term after it
    assert not ld.computed and torch.allclose(total, exact + 2, atol=1e-12)
    _, ld = t.inverse(z)
    acc = torch.ones(4)
    acc.add_(ld)  # an explicit in-place call changes acc itself
    assert torch.allclose(acc, exact + 1, atol=1e-12)


def test_deferred_logdet_refuses_when_the_block_changed() -> None:
    t = ResFlowTransform(2, [8])
    t.eval()
    z = torch.randn(4, 2)
    _, ld = t.inverse(z)
    with torch.no_grad():
        next(t.parameters()).add_(0.1)
    with pytest.raises(RuntimeError, match="changed in between"):
        ld.sum()
    x, ld = t.inverse(z)
    x.mul_(2.0)
    with pytest.raises(RuntimeError, match="changed in between"):
        float(ld[0])
    _, ld = t.inverse(z)
    t.train()
    with pytest.raises(RuntimeError, match="training mode"):
        ld + 1
