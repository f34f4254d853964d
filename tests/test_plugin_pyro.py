"""Pyro plugin: conventions, caching, conditional transforms, SVI, weighted gradients."""

from __future__ import annotations

import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist
from implicit_transforms.plugins.pyro import (
    BlockTransformModule,
    FlowDistribution,
    ImpFlow,
    conditional_impflow,
    conditional_resflow,
    impflow,
    iresnet,
    monotone,
    resflow,
)
from pyro import poutine
from pyro.distributions.transforms import (
    ComposeTransformModule,
    Permute,
    affine_coupling,
    spline_coupling,
)
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, AutoNormalizingFlow

from implicit_transforms.solvers import FixedPoint

HELPERS = {"impflow": impflow, "resflow": resflow, "iresnet": iresnet, "monotone": monotone}


@pytest.fixture(autouse=True)
def _clear_param_store():  # type: ignore[no-untyped-def]
    pyro.clear_param_store()
    yield


@pytest.mark.parametrize("name", HELPERS)
def test_inverse_bypassing_cache_and_logdet_at_recovered_point(name: str) -> None:
    t = HELPERS[name](3, [16])
    t.eval()
    x = torch.randn(4, 3)
    y = t._call(x)
    x_rec = t._inverse(y)  # called directly: no cache
    assert torch.allclose(x_rec, x, atol=1e-10)
    t.clear_cache()
    assert torch.allclose(
        t.log_abs_det_jacobian(x_rec, y), t.log_abs_det_jacobian(x, y.clone()), atol=1e-10
    )
    assert t.bijective and t.domain.event_dim == 1 and t.codomain.event_dim == 1


@pytest.mark.parametrize("name", HELPERS)
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_shapes_for_batch_shapes(name: str, batch: tuple[int, ...]) -> None:
    t = HELPERS[name](2, [8])
    t.eval()
    base = dist.Normal(torch.zeros(*batch, 2), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [t])
    z = q.rsample((4,))
    assert z.shape == (4, *batch, 2)
    assert q.log_prob(z).shape == (4, *batch)
    assert q.log_prob(z.clone()).shape == (4, *batch)  # cache miss path


def test_cache_hit_and_miss_give_same_log_prob_and_cache_clears() -> None:
    t = impflow(2, [8])
    t.eval()
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    z = q.rsample((6,))
    hit = q.log_prob(z)
    assert t.num_inverse_solves == 0
    miss = q.log_prob(z.clone())
    assert t.num_inverse_solves == 1
    assert torch.allclose(hit, miss, atol=1e-9)
    t.clear_cache()
    assert t._cached_x_y == (None, None) and t._logdet_cache is None
    assert t.with_cache(1) is t
    uncached = t.with_cache(0)
    assert uncached.block is t.block and uncached._cache_size == 0


def test_residual_guide_path_performs_zero_solves() -> None:
    spy_calls = []

    class Spy(FixedPoint):
        def __call__(self, fn, z0, *, event_dims=1):  # type: ignore[no-untyped-def]
            spy_calls.append(1)
            return super().__call__(fn, z0, event_dims=event_dims)

    t = resflow(2, [16], solver=Spy())

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide() -> None:
        pyro.module("t", t)
        base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        pyro.sample("z", dist.TransformedDistribution(base, [t]))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    assert t.num_inverse_solves == 0 and spy_calls == []


def test_conditional_transforms_share_parameters() -> None:
    ct = conditional_impflow(2, 3, [8])
    ctx = torch.randn(3)
    t = ct.condition(ctx)
    assert isinstance(t, ImpFlow)
    assert set(map(id, t.parameters())) == set(map(id, ct.parameters()))
    cd = dist.ConditionalTransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [ct])
    z = cd.condition(ctx).rsample((4,))
    assert cd.condition(ctx).log_prob(z).shape == (4,)
    with pytest.raises(ValueError, match="context_features"):
        type(ct)(impflow(2, [8]).block)


def test_compose_with_pyro_flows_and_autonormalizingflow_and_predictive() -> None:
    def model(data: torch.Tensor) -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=data)

    def init_transform_fn(dim: int) -> ComposeTransformModule:
        return ComposeTransformModule(
            [spline_coupling(dim), resflow(dim, [16]), Permute(torch.tensor([1, 0])),
             affine_coupling(dim), impflow(dim, [16])]
        )  # fmt: skip

    data = torch.randn(10, 2) + 1.0
    guide = AutoNormalizingFlow(model, init_transform_fn)
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 1e-2}),
        Trace_ELBO(num_particles=3, vectorize_particles=True),
    )
    for _ in range(5):
        assert torch.isfinite(torch.tensor(svi.step(data)))
    samples = Predictive(model, guide=guide, num_samples=7)(data)
    assert samples["z"].shape[0] == 7


def test_scaled_and_weighted_elbo_gradients_match_plain_autograd() -> None:
    """Neumann-gradient log-dets must honour per-sample weights (the reference-code bug)."""
    t = resflow(2, [8], generator=torch.Generator())  # a generator keeps the roulette estimator
    t.train()
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    x = base.sample((6,))
    weights = torch.tensor([3.0, 0.0, 1.0, -1.0, 0.5, 2.0])
    params = list(t.parameters())

    # Deterministic reference: same random draws via a seeded generator for both passes.
    gen_state = torch.Generator().manual_seed(5)
    t.block.logdet_train.generator = gen_state  # type: ignore[attr-defined]
    y = t(x)
    lq = base.log_prob(x) - t.log_abs_det_jacobian(x, y)
    g_plugin = torch.autograd.grad((weights * lq).sum(), params, materialize_grads=True)

    t.clear_cache()
    t.block.logdet_train.generator = torch.Generator().manual_seed(5)  # type: ignore[attr-defined]
    grads_per_sample = []
    for i in range(6):
        t.block.logdet_train.generator = torch.Generator().manual_seed(5)  # type: ignore[attr-defined]
        _yi, ld = t.block.forward_and_logdet(x)
        grads_per_sample.append(
            torch.autograd.grad(-ld[i] * weights[i], params, materialize_grads=True)
        )
    ref = [sum(gs[k] for gs in grads_per_sample) for k in range(len(params))]
    for a, b in zip(g_plugin, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-10)

    # poutine.scale flows through as a per-site scalar: gradients scale linearly.
    def guide() -> None:
        pyro.module("t", t)
        pyro.sample("z", dist.TransformedDistribution(base, [t]))

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def loss_grad(scale: float) -> list[torch.Tensor]:
        t.block.logdet_train.generator = torch.Generator().manual_seed(9)  # type: ignore[attr-defined]
        pyro.set_rng_seed(0)
        loss = Trace_ELBO().differentiable_loss(
            poutine.scale(model, scale), poutine.scale(guide, scale)
        )
        return list(torch.autograd.grad(loss, params, materialize_grads=True))

    for a, b in zip(loss_grad(2.5), loss_grad(1.0), strict=True):
        assert torch.allclose(a, 2.5 * b, atol=1e-10)


def test_flow_distribution_one_pass_and_zuko_to_pyro() -> None:
    from pyro.contrib.zuko import ZukoToPyro

    ts = [impflow(2, [8]), resflow(2, [8])]
    for t in ts:
        t.eval()
    fd = FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), ts)
    z, lq = fd.rsample_and_log_prob((5,))
    assert torch.allclose(lq, fd.log_prob(z), atol=1e-9)
    wrapped = ZukoToPyro(fd)
    value = wrapped((3,))  # samples and log-densities in one pass, cached by ZukoToPyro
    assert value.shape == (3, 2)
    assert torch.allclose(wrapped.log_prob(value), fd.log_prob(value), atol=1e-9)
    with pytest.raises(TypeError, match="blocks or BlockTransformModules"):
        FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [torch.nn.Linear(2, 2)])


@pytest.mark.slow
def test_svi_fit_on_banana_beats_mean_field() -> None:
    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.factor("banana", dist.Normal(z[..., 0] ** 2, 0.3).log_prob(z[..., 1]))

    def fit(guide, steps: int = 500) -> float:  # type: ignore[no-untyped-def]
        pyro.set_rng_seed(0)
        svi = SVI(
            model,
            guide,
            pyro.optim.Adam({"lr": 1e-2}),
            Trace_ELBO(num_particles=8, vectorize_particles=True),
        )
        for _ in range(steps):
            svi.step()
        return -sum(svi.evaluate_loss() for _ in range(20)) / 20

    pyro.clear_param_store()
    elbo_mf = fit(AutoNormal(model))
    pyro.clear_param_store()
    flow_guide = AutoNormalizingFlow(
        model, lambda d: ComposeTransformModule([resflow(d, [24, 24]), impflow(d, [24, 24])])
    )
    elbo_flow = fit(flow_guide)
    print(f"ELBO mean-field {elbo_mf:.3f}  flow {elbo_flow:.3f}")
    assert elbo_flow > elbo_mf + 0.05


def test_block_transform_module_validates() -> None:
    with pytest.raises(TypeError, match="InvertibleBlock"):
        BlockTransformModule(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_size"):
        BlockTransformModule(resflow(2).block, cache_size=2)
    ct = conditional_resflow(2, 1)
    assert ct.condition(torch.zeros(1)).block is ct.block


def test_sampling_skips_the_logdet_and_scoring_stays_exact() -> None:
    t = impflow(3, [16])
    t.eval()
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [t])
    calls = {"n": 0}
    estimator = t.block.estimator

    def counting(numel: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return estimator(numel)

    t.block.estimator = counting  # type: ignore[method-assign]
    with torch.no_grad():
        z = q.sample((50,))
        assert calls["n"] == 0  # sampling: the solve only
        lp = q.log_prob(z)  # cache hit: the pair is known, the log-det is computed now
    assert calls["n"] == 1 and t.num_inverse_solves == 0
    t.clear_cache()
    with torch.no_grad():
        lp_solved = q.log_prob(z.clone())  # cache miss: inverse solve, then the log-det
    assert torch.allclose(lp, lp_solved, atol=1e-9)


# -- FlowDistribution means what TransformedDistribution means ---------------------------------


def _perturbed(module):  # type: ignore[no-untyped-def]
    """Move every parameter away from its start (flow stacks start as the identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _flow_kinds() -> dict[str, object]:
    from implicit_transforms.plugins.pyro import (
        ConditionalInverseBlockTransformModule,
        InverseBlockTransformModule,
        conditional_flow_stack,
        flow_stack,
    )

    ctx = torch.randn(3)
    stack = flow_stack(2, "resflow", blocks=2, hidden_dims=[8])
    score_stack = flow_stack(2, "impflow", blocks=1, hidden_dims=[8], explicit="score")
    conditional = conditional_flow_stack(2, 3, "resflow", blocks=2, hidden_dims=[8])
    return {
        "blocks": [resflow(2, [8]), impflow(2, [8]).block],
        "inverse": [InverseBlockTransformModule(resflow(2, [8]).block)],
        "inverse-impflow": [InverseBlockTransformModule(impflow(2, [8]).block), resflow(2, [8])],
        "conditional-inverse": [
            ConditionalInverseBlockTransformModule(conditional_resflow(2, 3, [8]).block).condition(
                ctx
            )
        ],
        "flow_stack": _perturbed(stack),
        "flow_stack-score": [_perturbed(score_stack)],
        "conditional_flow_stack": _perturbed(conditional).condition(ctx),
        "torch-transforms": [
            dist.transforms.AffineTransform(0.5, 2.0, event_dim=1),
            resflow(2, [8]).inv,
            dist.transforms.TanhTransform(),
            ComposeTransformModule([impflow(2, [8]), Permute(torch.tensor([1, 0]))]),
        ],
    }


FLOW_KINDS = list(_flow_kinds())


def _eval(transforms) -> None:  # type: ignore[no-untyped-def]
    for t in transforms if isinstance(transforms, list) else [transforms]:
        if isinstance(t, torch.distributions.transforms._InverseTransform):
            t = t.inv
        if isinstance(t, torch.nn.Module):
            t.eval()
        for part in getattr(t, "parts", []):
            if isinstance(part, torch.nn.Module):
                part.eval()


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_distribution_is_the_transformed_distribution(kind: str) -> None:
    """Same shapes, samples (fixed seed), reparameterised samples and log-densities as Pyro's
    TransformedDistribution; the one-pass log q is its log_prob of the sample. Every value is
    scored through fresh tensors, so no cache answers in place of an inverse."""
    transforms = _flow_kinds()[kind]
    _eval(transforms)
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    parts = transforms if isinstance(transforms, list) else [transforms]
    td = dist.TransformedDistribution(
        base,
        [
            p if isinstance(p, torch.distributions.Transform) else BlockTransformModule(p)
            for p in parts
        ],
    )
    fd = FlowDistribution(base, transforms)
    assert (fd.batch_shape, fd.event_shape) == (td.batch_shape, td.event_shape)

    torch.manual_seed(1)
    s_fd = fd.sample((6,))
    torch.manual_seed(1)
    s_td = td.sample((6,))
    assert torch.allclose(s_fd, s_td, atol=1e-12, rtol=0)

    torch.manual_seed(2)
    r_fd = fd.rsample((6,))
    torch.manual_seed(2)
    r_td = td.rsample((6,))
    assert torch.allclose(r_fd, r_td, atol=1e-12, rtol=0)

    z = s_td.clone()
    assert torch.allclose(fd.log_prob(z.clone()), td.log_prob(z.clone()), atol=1e-8, rtol=0)

    z, log_q = fd.rsample_and_log_prob((6,))
    assert log_q.shape == (6,)
    assert torch.allclose(log_q, td.log_prob(z.detach().clone()), atol=1e-7, rtol=0)


def test_flow_distribution_refuses_what_it_cannot_mean() -> None:
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(TypeError, match=r"call \.condition\(context\) on it first"):
        FlowDistribution(base, [conditional_resflow(2, 3, [8])])
    with pytest.raises(TypeError, match=r"blocks or BlockTransformModules .*got Linear"):
        FlowDistribution(base, [resflow(2, [8]), torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("family", ["impflow", "resflow"])
def test_rsample_then_log_prob_solves_once_and_reuses_the_sampling_logdet(family: str) -> None:
    """Pyro's guide pattern (``rsample`` with gradients, then ``log_prob`` of that sample) on
    the direction that solves while sampling: the inverse is a cache hit and the log-det the
    one computed during the sampling solve (one solve and one log-det per draw, not two)."""
    from implicit_transforms.plugins.pyro import InverseBlockTransformModule

    solves = []

    class Spy(FixedPoint):
        def __call__(self, fn, z0, *, event_dims=1):  # type: ignore[no-untyped-def]
            solves.append(1)
            return super().__call__(fn, z0, event_dims=event_dims)

    helper = HELPERS[family]
    t = InverseBlockTransformModule(helper(3, [16], solver=Spy()).block)
    t.eval()
    calls = {"n": 0}
    estimator = t.block.estimator

    def counting(numel: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return estimator(numel)

    t.block.estimator = counting  # type: ignore[method-assign]
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [t])
    z = q.rsample((20,))
    n_solves = len(solves)
    lp = q.log_prob(z)
    assert n_solves >= 1 and len(solves) == n_solves  # scoring: no solve
    assert calls["n"] == 1 and t.num_inverse_solves == 0  # one log-det, from the sampling pass
    lp.sum().backward()  # the reused log-det carries the parameters' gradients
    assert all(p.grad is not None for p in t.parameters())
    t.clear_cache()
    with torch.no_grad():
        exact = q.log_prob(z.detach().clone())  # cache miss: solved and computed again
    assert torch.allclose(lp.detach(), exact, atol=1e-9)
