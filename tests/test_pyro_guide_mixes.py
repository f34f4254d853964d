"""Mixed guide recipes (issue 23): Pyro's IAF layers alternating with residual or implicit
blocks, in ``flow_stack``, ``conditional_flow_stack`` and ``AutoFlowStack``; and the
``"monotone"`` family in the recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist
from guide_checks import exact_log_q, perturb
from implicit_transforms.plugins.pyro import AutoFlowStack, conditional_flow_stack, flow_stack
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.infer import SVI, Trace_ELBO

from implicit_transforms.recipes import FAMILIES, GUIDE_MIXES

MIXES = sorted(GUIDE_MIXES)


@pytest.fixture(autouse=True)
def _clear_param_store():  # type: ignore[no-untyped-def]
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _kinds(parts: list[object]) -> list[str]:
    return [type(p).__name__ for p in parts]


# -- the table and the layouts ----------------------------------------------------------------
def test_every_mix_names_a_family_and_iaf_comes_first() -> None:
    for name, mix in GUIDE_MIXES.items():
        assert mix.name == name and mix.family in FAMILIES
        assert mix.unit[0] == "iaf" and set(mix.unit) == {"iaf", "block"}
        assert name not in FAMILIES


@pytest.mark.parametrize("mix", MIXES)
def test_stack_layout_follows_the_table(mix: str) -> None:
    t = flow_stack(3, mix, hidden_dims=[8])
    layers = GUIDE_MIXES[mix].layers()
    expect = ["AffineAutoregressive" if k == "iaf" else "BlockTransformModule" for k in layers]
    assert _kinds(list(t.parts)) == [*expect, "ElementwiseAffine"]
    two = flow_stack(3, mix, blocks=2, hidden_dims=[8])
    assert len(two.parts) == 2 * len(GUIDE_MIXES[mix].unit) + 1


@pytest.mark.parametrize("mix", MIXES)
def test_stack_starts_as_the_diagonal_gaussian(mix: str) -> None:
    loc, scale = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.1, 1.0, 3.0])
    t = flow_stack(3, mix, hidden_dims=[8], init_loc=loc, init_scale=scale)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z = q.rsample((6,))
    assert torch.allclose(q.log_prob(z), dist.Normal(loc, scale).to_event(1).log_prob(z))


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_log_density_is_exact(mix: str, mode: str) -> None:
    """log q(z) of the guide's own samples (cache hits) and of fresh values (inverse solves)
    equals the autograd-Jacobian one, float64."""
    t = flow_stack(3, mix, hidden_dims=[8], init_scale=0.7)
    perturb(t)
    t.train(mode == "train")
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z = q.rsample((4,))
    exact = exact_log_q(t, z)
    assert torch.allclose(q.log_prob(z), exact, atol=1e-9)
    assert torch.allclose(q.log_prob(z.detach().clone()), exact, atol=1e-9)


def test_bad_names_list_the_valid_ones() -> None:
    valid = sorted([*FAMILIES, *GUIDE_MIXES])
    message = r"family must be one of \[.*'iaf-impflow', 'iaf-resflow'.*'resflow'.*got 'iaf-nsf'"
    with pytest.raises(ValueError, match=message):
        flow_stack(3, "iaf-nsf")
    with pytest.raises(ValueError, match=message):
        conditional_flow_stack(3, 2, "iaf-nsf")
    with pytest.raises(ValueError, match=message):
        AutoFlowStack(lambda: None, "iaf-nsf")
    assert all(f"'{v}'" in str(valid) for v in GUIDE_MIXES)


def test_mixes_sample_explicitly_only() -> None:
    with pytest.raises(ValueError, match=r"IAF layers.*explicit='score'"):
        flow_stack(3, "iaf-resflow", explicit="score")


# -- the monotone family in the recipes ---------------------------------------------------------
def test_monotone_stack_builds_with_default_blocks_and_exact_density() -> None:
    t = flow_stack(3, "monotone", hidden_dims=[8], init_scale=0.7)
    assert _kinds(list(t.parts)) == ["BlockTransformModule", "ElementwiseAffine"] * 4
    perturb(t, 0.1)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z = q.rsample((3,))
    assert torch.allclose(q.log_prob(z), exact_log_q(t, z), atol=1e-8)


# -- conditional ------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", MIXES)
def test_conditional_mix_layout_and_exact_density(mix: str) -> None:
    ct = conditional_flow_stack(2, 3, mix, hidden_dims=[8], init_scale=0.5)
    kinds = _kinds(list(ct.transforms))
    layers = GUIDE_MIXES[mix].layers()
    assert kinds.count("ConditionalAffineAutoregressive") == layers.count("iaf")
    assert kinds[0] == "ConditionalAffineAutoregressive"
    assert kinds[-1] == "ConditionalElementwiseAffine"
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    ctx = torch.randn(4, 3)
    start = dist.ConditionalTransformedDistribution(base, [ct]).condition(ctx)
    z0 = start.rsample()
    assert torch.allclose(
        start.log_prob(z0), dist.Normal(0.0, 0.5).expand([2]).to_event(1).log_prob(z0)
    )
    perturb(ct)
    ct.eval()
    q = dist.ConditionalTransformedDistribution(base, [ct]).condition(ctx)
    z = q.rsample()
    assert z.shape == (4, 2)
    for i in range(4):
        ti = ct.condition(ctx[i])
        assert torch.allclose(q.log_prob(z)[i], exact_log_q(ti, z[i : i + 1])[0], atol=1e-9)
    assert any(isinstance(p, ConditionalAffineAutoregressive) for p in ct.transforms)


# -- the autoguide ----------------------------------------------------------------------------
def _funnel() -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(2), torch.exp(v / 2)[..., None]).to_event(1))


@pytest.mark.parametrize("mix", MIXES)
def test_autoguide_scores_its_samples_exactly(mix: str) -> None:
    guide = AutoFlowStack(_funnel, mix, hidden_dims=[8])
    guide()
    perturb(guide)
    post = guide.get_posterior()
    z = post.rsample((5,))
    assert torch.allclose(post.log_prob(z), exact_log_q(guide.get_transform(), z), atol=1e-9)
    assert any(isinstance(p, AffineAutoregressive) for p in guide.get_transform().parts)


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("optim", ["ClippedAdam", "Adam"])
def test_autoguide_trains_and_every_parameter_gets_a_gradient(mix: str, optim: str) -> None:
    torch.set_default_dtype(torch.float32)  # as a Pyro user runs it
    pyro.set_rng_seed(0)
    guide = AutoFlowStack(_funnel, mix, hidden_dims=[8])
    opt = getattr(pyro.optim, optim)({"lr": 0.01})
    loss = Trace_ELBO(num_particles=8, vectorize_particles=True)
    svi = SVI(_funnel, guide, opt, loss)
    losses = [svi.step() for _ in range(5)]  # past the start, where zero layers block gradients
    assert all(math.isfinite(v) for v in losses)
    params = dict(pyro.get_param_store().named_parameters())
    for p in params.values():
        p.grad = None
    loss.loss_and_grads(_funnel, guide)
    no_grad = [
        name for name, p in params.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert not no_grad, f"no gradient reaches {no_grad}"
    assert all(bool(torch.isfinite(p.grad).all()) for p in params.values())


@pytest.mark.parametrize("mix", MIXES)
def test_autoguide_parameter_count_is_close_to_iaf_x4(mix: str) -> None:
    """At the same hidden sizes, a mix has about the parameters of Pyro's IAF x4 (four
    networks each): the benchmark compares at equal counts after solving widths."""
    from pyro.infer.autoguide import AutoIAFNormal

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(10), 1.0).to_event(1))

    def count(guide: object) -> int:
        pyro.clear_param_store()
        guide()  # type: ignore[operator]
        return sum(p.numel() for p in pyro.get_param_store().values())

    ours = count(AutoFlowStack(model, mix, hidden_dims=[40, 40]))
    iaf = count(AutoIAFNormal(model, hidden_dim=[40, 40], num_transforms=4))
    assert 0.75 < ours / iaf < 1.1


def test_mix_save_and_reload_through_the_param_store(tmp_path: Path) -> None:
    pyro.set_rng_seed(0)
    guide = AutoFlowStack(_funnel, "iaf-impflow", hidden_dims=[8])
    svi = SVI(_funnel, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    z = torch.randn(5, 3)
    expected = guide.get_posterior().log_prob(z).detach()
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    fresh = AutoFlowStack(_funnel, "iaf-impflow", hidden_dims=[8])
    fresh()
    perturb(fresh)
    assert not torch.allclose(fresh.get_posterior().log_prob(z), expected)
    pyro.get_param_store().load(tmp_path / "params.pt")
    fresh()
    assert torch.allclose(fresh.get_posterior().log_prob(z), expected, atol=1e-8)


def test_autoguide_start_scale_comes_from_the_table() -> None:
    """A mix starts as wide as Pyro's IAF guide (its table entry), a block family as
    ``AutoNormal`` (``GUIDE_INIT_SCALE``); an explicit ``init_scale`` wins."""
    from implicit_transforms.recipes import GUIDE_INIT_SCALE

    for name, scale in [("iaf-resflow", GUIDE_MIXES["iaf-resflow"].init_scale),
                        ("resflow", GUIDE_INIT_SCALE), ("iaf-impflow", 1.0)]:  # fmt: skip
        pyro.clear_param_store()
        guide = AutoFlowStack(_funnel, name, hidden_dims=[8])
        guide()
        assert guide.get_transform().parts[-1].log_scale.exp().allclose(torch.tensor(scale))
    pyro.clear_param_store()
    guide = AutoFlowStack(_funnel, "iaf-impflow", hidden_dims=[8], init_scale=0.3)
    guide()
    assert guide.get_transform().parts[-1].log_scale.exp().allclose(torch.tensor(0.3))


@pytest.mark.parametrize("mix", MIXES)
def test_float32_gradients_follow_a_small_loss_scale(mix: str) -> None:
    """A float32 mix's gradient at loss scale 1e-4 is 1e-4 times the gradient at scale 1 (the
    implicit and log-det gradients hold their accuracy relative to the incoming gradient)."""
    t = flow_stack(3, mix, hidden_dims=[8])
    perturb(t)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    grads = []
    for scale in (1.0, 1e-4):
        t.zero_grad()
        (scale * q.log_prob(t(z0.clone())).sum()).backward()  # a new input: no cache hit
        grads.append(torch.cat([p.grad.flatten() for p in t.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], 1e-4 * grads[0], rtol=1e-3, atol=1e-9)
