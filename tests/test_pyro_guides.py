"""Guide recipes for Pyro: layers, stacks, the autoguide, scoring, training, the JIT path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist
from guide_checks import exact_log_q, perturb
from implicit_transforms.plugins.pyro import (
    AutoFlowStack,
    BlockTransformModule,
    ConditionalElementwiseAffine,
    ElementwiseAffine,
    FlowDistribution,
    InverseBlockTransformModule,
    conditional_flow_stack,
    flow_stack,
    recipe_options,
)
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow, init_to_value

from implicit_transforms import TracingError
from implicit_transforms.blocks import impflow_block, resflow_block
from implicit_transforms.logdet import ExactLogDet, RouletteLogDet
from implicit_transforms.solvers import Anderson, Broyden

FAMILIES = ["impflow", "resflow", "iresnet"]


@pytest.fixture(autouse=True)
def _clear_param_store():  # type: ignore[no-untyped-def]
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()  # leave no float64 parameters for a later test's guide to adopt


# -- layers ----------------------------------------------------------------------------------
def test_elementwise_affine_round_trip_logdet_and_cache() -> None:
    t = ElementwiseAffine(3, init_loc=torch.tensor([1.0, -2.0, 0.5]), init_scale=0.5)
    x = torch.randn(4, 3)
    y = t(x)
    assert torch.allclose(y, torch.tensor([1.0, -2.0, 0.5]) + 0.5 * x)
    assert torch.allclose(t._inverse(y), x, atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda v: t._call(v), x[0])
    assert torch.allclose(
        t.log_abs_det_jacobian(x, y), torch.linalg.slogdet(jac).logabsdet.expand(4)
    )
    other = t.with_cache(0)
    assert other.loc is t.loc and other.log_scale is t.log_scale and t.with_cache(1) is t


def test_elementwise_affine_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="init_scale must be positive"):
        ElementwiseAffine(2, init_scale=-1.0)
    with pytest.raises(ValueError, match=r"init_loc must be a float or a vector of shape \(2,\)"):
        ElementwiseAffine(2, init_loc=torch.zeros(3))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        ElementwiseAffine(0)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\), got \(4, 3\)"):
        ElementwiseAffine(2)(torch.zeros(4, 3))


def test_conditional_affine_starts_at_init_for_every_context_and_has_exact_logdet() -> None:
    ct = ConditionalElementwiseAffine(2, 3, [8], init_loc=1.0, init_scale=2.0)
    ctx = torch.randn(5, 3)
    x = torch.randn(5, 2)
    assert torch.allclose(ct.condition(ctx)(x), 1.0 + 2.0 * x)
    perturb(ct)
    t = ct.condition(ctx)
    y = t(x)
    ld = t.log_abs_det_jacobian(x, y)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: ct.condition(ctx[i])(v), x[i])
        assert torch.allclose(ld[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-12)
    with pytest.raises(ValueError, match=r"context must have shape \(\*, 3\), got \(5, 2\)"):
        ct.condition(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"context must have shape \(\*, 3\), got NoneType"):
        ct.condition(None)  # type: ignore[arg-type]


# -- stacks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_stack_starts_as_the_diagonal_gaussian(family: str) -> None:
    loc, scale = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.1, 1.0, 3.0])
    t = flow_stack(3, family, blocks=2, hidden_dims=[8], init_loc=loc, init_scale=scale)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z = q.rsample((6,))
    assert torch.allclose(q.log_prob(z), dist.Normal(loc, scale).to_event(1).log_prob(z))
    kinds = [type(p).__name__ for p in t.parts]
    assert kinds == ["BlockTransformModule", "ElementwiseAffine"] * 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_log_density_is_exact_in_both_modes(family: str, mode: str) -> None:
    """The recipes' log q(z) equals the exact one from the autograd Jacobian, in training mode
    too (where Pyro leaves a guide after SVI), for samples (cache hits) and for values the
    guide did not produce (inverse solves)."""
    t = flow_stack(3, family, blocks=2, hidden_dims=[8], init_scale=0.7)
    perturb(t)
    t.train(mode == "train")
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
    z = q.rsample((4,))
    exact = exact_log_q(t, z)
    assert torch.allclose(q.log_prob(z), exact, atol=1e-9)
    assert torch.allclose(q.log_prob(z.detach().clone()), exact, atol=1e-9)


def test_above_64_dimensions_training_mode_is_stochastic_and_documented() -> None:
    assert isinstance(recipe_options(64).logdet_train, ExactLogDet)
    assert recipe_options(65).logdet_train is None  # the family's roulette estimator
    t = flow_stack(65, "resflow", blocks=1, hidden_dims=[8])
    block = t.parts[0].block
    assert isinstance(block.logdet_train, RouletteLogDet)


def test_recipe_options_fill_only_unset_fields() -> None:
    opts = recipe_options(3, activation="sin", coeff=0.9)
    assert opts.activation == "sin" and opts.coeff == 0.9
    assert isinstance(opts.logdet_train, ExactLogDet)
    # a setting of the stochastic estimator means the user wants it
    assert recipe_options(3, n_probes=4).logdet_train is None
    assert recipe_options(3, logdet_train=RouletteLogDet()).logdet_train is not None
    with pytest.raises(TypeError, match="unknown block option"):
        recipe_options(3, coef=0.9)
    with pytest.raises(ValueError, match="family must be one of"):
        recipe_options(3, "glow")


def test_recipe_solver_for_impflow_keeps_the_failure_policy() -> None:
    assert isinstance(recipe_options(3, "impflow").solver, Anderson)
    assert recipe_options(3, "resflow").solver is None  # the family's fixed point
    warn = recipe_options(3, "impflow", on_failure="warn")
    assert warn.solver is not None and warn.solver.on_failure == "warn"  # type: ignore[attr-defined]
    mine = Broyden(max_iter=7)
    assert recipe_options(3, "impflow", solver=mine).solver is mine
    block = flow_stack(2, "impflow", blocks=1, hidden_dims=[8], on_failure="warn").parts[0].block
    assert isinstance(block.solver, Anderson) and block.solver.on_failure == "warn"


@pytest.mark.parametrize("family", ["resflow", "impflow"])
def test_sampling_does_no_logdet_work_until_asked(family: str) -> None:
    calls: list[int] = []

    class Counting(ExactLogDet):
        def __call__(self, g, x, *, event_dims=1):  # type: ignore[no-untyped-def]
            calls.append(x.shape[0])
            return super().__call__(g, x, event_dims=event_dims)

    t = flow_stack(2, family, blocks=1, hidden_dims=[8], logdet_eval=Counting())
    perturb(t)
    t.eval()
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), t)
    z = q.sample((7,))
    assert calls == []
    lp = q.log_prob(z)  # cache hit: the log-det from the pair, no solve
    assert calls and torch.allclose(lp, exact_log_q(t, z), atol=1e-9)


@pytest.mark.parametrize("family", ["resflow", "impflow"])
def test_forward_and_inverse_maps_alone_match_the_full_maps(family: str) -> None:
    block = (resflow_block if family == "resflow" else impflow_block)(2, [8])
    perturb(block)
    x = torch.randn(5, 2)
    y, _ = block.forward_and_logdet(x)
    assert torch.allclose(block.forward_map(x), y)
    assert torch.allclose(block.inverse_map(y), block.inverse_and_logdet(y)[0])
    assert block.estimator(2) is block.logdet_train  # the stand-in estimator is gone again


def test_explicit_score_puts_the_explicit_map_on_log_prob() -> None:
    t = flow_stack(2, "resflow", blocks=2, hidden_dims=[8], explicit="score")
    perturb(t)
    parts = [p for p in t.parts if isinstance(p, BlockTransformModule)]
    assert all(isinstance(p, InverseBlockTransformModule) for p in parts)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), t)
    data = torch.randn(6, 2)
    solves = [p.block.last_solve for p in parts]
    lp = q.log_prob(data)  # density estimation: no solve
    assert [p.block.last_solve for p in parts] == solves
    assert torch.allclose(lp, exact_log_q(t, data), atol=1e-9)
    z = q.rsample((3,))  # sampling solves
    assert all(p.block.last_solve is not None for p in parts)
    assert torch.allclose(q.log_prob(z), exact_log_q(t, z), atol=1e-9)
    assert q.sample((2,)).shape == (2, 2)


def test_stack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        flow_stack(2, "maf")
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        flow_stack(2, "resflow", blocks=0)
    with pytest.raises(ValueError, match="explicit must be 'sample' or 'score'"):
        flow_stack(2, "resflow", explicit="forward")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_dim must be a positive int"):
        flow_stack(0)
    with pytest.raises(TypeError, match="unknown block option"):
        flow_stack(2, "resflow", activaton="sin")
    t = flow_stack(3, "resflow", blocks=1, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3\), got \(4, 2\)"):
        t(torch.zeros(4, 2))


# -- conditional stacks ----------------------------------------------------------------------
def test_conditional_stack_shapes_context_errors_and_exact_density() -> None:
    ct = conditional_flow_stack(2, 3, "resflow", blocks=2, hidden_dims=[8])
    perturb(ct)
    ct.eval()
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    cd = dist.ConditionalTransformedDistribution(base, [ct])
    ctx = torch.randn(5, 3)
    q = cd.condition(ctx)
    z = q.rsample()
    assert z.shape == (5, 2)
    t = ct.condition(ctx)
    assert torch.allclose(q.log_prob(z.clone()), q.log_prob(z), atol=1e-9)
    for i in range(5):  # per context, against the autograd Jacobian
        ti = ct.condition(ctx[i])
        assert torch.allclose(q.log_prob(z)[i], exact_log_q(ti, z[i : i + 1])[0], atol=1e-9)
    assert t is not None
    with pytest.raises(ValueError, match="context"):
        cd.condition(None).rsample((2,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"context must have shape \(\*, 3\)"):
        cd.condition(torch.zeros(5, 4)).rsample()


def test_amortised_guide_learns_the_posterior_mean_of_each_observation() -> None:
    """z_i ~ N(0, 1), x_i ~ N(z_i, 0.5^2): q(z_i | x_i) should approach N(0.8 x_i, 0.2)."""
    torch.set_default_dtype(torch.float32)  # as a Pyro user would run it
    pyro.set_rng_seed(0)
    x = torch.linspace(-2.0, 2.0, 16)
    ct = conditional_flow_stack(1, 1, "resflow", blocks=1, hidden_dims=[16], init_scale=0.5)

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[:, None])

    def guide(x: torch.Tensor) -> None:
        pyro.module("ct", ct)
        base = dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z", dist.ConditionalTransformedDistribution(base, [ct]).condition(x[:, None])
            )

    svi = SVI(
        model,
        guide,
        pyro.optim.ClippedAdam({"lr": 0.03}),
        Trace_ELBO(num_particles=8, vectorize_particles=True),
    )
    first = sum(svi.evaluate_loss(x) for _ in range(10)) / 10
    for _ in range(150):
        svi.step(x)
    last = sum(svi.evaluate_loss(x) for _ in range(10)) / 10
    assert last < first - 5.0
    q = dist.ConditionalTransformedDistribution(
        dist.Normal(torch.zeros(16, 1), 1.0).to_event(1), [ct]
    ).condition(x[:, None])
    with torch.no_grad():
        means = q.sample((2000,)).mean(0)[:, 0]
    assert torch.allclose(means, 0.8 * x, atol=0.2)


# -- the autoguide: training with both optimizers, reload, JIT ----------------------------------
def _gaussian_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.factor("lik", dist.Normal(torch.tensor([2.0, -1.0]), 0.5).log_prob(z).sum(-1))


def _elbo(guide: AutoFlowStack) -> float:
    pyro.set_rng_seed(1)
    loss = Trace_ELBO(num_particles=512, vectorize_particles=True)
    return -float(loss.loss(_gaussian_model, guide))


@pytest.mark.parametrize("family", ["resflow", "impflow"])
@pytest.mark.parametrize("optim", ["ClippedAdam", "Adam"])
def test_autoguide_trains_with_pyro_optimizers(family: str, optim: str) -> None:
    torch.set_default_dtype(torch.float32)
    pyro.set_rng_seed(0)
    guide = AutoFlowStack(_gaussian_model, family, hidden_dims=[8])
    opt = getattr(pyro.optim, optim)({"lr": 0.05})
    svi = SVI(_gaussian_model, guide, opt, Trace_ELBO(num_particles=4, vectorize_particles=True))
    svi.step()
    before = _elbo(guide)
    for _ in range(40):
        assert math.isfinite(svi.step())
    after = _elbo(guide)
    # the posterior is N((1.6, -0.8), 0.447^2 I); log Z = log N((2, -1); 0, 1.25 I)
    log_z = float(dist.Normal(0.0, math.sqrt(1.25)).log_prob(torch.tensor([2.0, -1.0])).sum())
    assert after > before + 1.0 and after <= log_z + 0.05
    assert guide.transform is not None and guide.transform.parts[-1].loc.dtype == torch.float32


def test_autoguide_starts_at_init_values_with_init_scale() -> None:
    def model() -> None:
        pyro.sample("a", dist.Normal(3.0, 1.0))
        pyro.sample("b", dist.LogNormal(0.0, 1.0))

    init = init_to_value(values={"a": torch.tensor(2.5), "b": torch.tensor(2.0)})
    guide = AutoFlowStack(
        model, "resflow", blocks=1, hidden_dims=[8], init_loc_fn=init, init_scale=0.2
    )
    guide()
    post = guide.get_posterior()
    assert guide.latent_dim == 2
    z = post.rsample((5,))
    loc = torch.tensor([2.5, math.log(2.0)])  # b lives on the log scale
    expect = dist.Normal(loc, 0.2).to_event(1).log_prob(z)
    assert torch.allclose(post.log_prob(z), expect)


def test_autoguide_with_predictive_and_plates() -> None:
    def model(data: torch.Tensor) -> None:
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("obs", dist.Normal(0.0, scale), obs=data)

    data = 2.0 * torch.randn(20)
    guide = AutoFlowStack(model, "impflow", hidden_dims=[8])
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.05}),
        Trace_ELBO(num_particles=4, vectorize_particles=True),
    )
    for _ in range(5):
        svi.step(data)
    draws = Predictive(model, guide=guide, num_samples=7, return_sites=["scale"])(data)
    assert draws["scale"].shape[0] == 7 and bool((draws["scale"] > 0).all())


def test_autoguide_rejects_bad_settings_at_construction() -> None:
    with pytest.raises(ValueError, match="init_scale must be a positive float"):
        AutoFlowStack(_gaussian_model, init_scale=0.0)
    with pytest.raises(TypeError, match="unknown block option"):
        AutoFlowStack(_gaussian_model, coef=0.5)
    with pytest.raises(ValueError, match="family must be one of"):
        AutoFlowStack(_gaussian_model, "nsf")
    with pytest.raises(RuntimeError, match="call the guide once"):
        AutoFlowStack(_gaussian_model).get_posterior()


def test_save_and_reload_through_the_param_store(tmp_path: Path) -> None:
    pyro.set_rng_seed(0)
    guide = AutoFlowStack(_gaussian_model, "impflow", hidden_dims=[8])
    svi = SVI(_gaussian_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(10):
        svi.step()
    z = torch.randn(5, 2)
    expected = guide.get_posterior().log_prob(z).detach()
    pyro.get_param_store().save(tmp_path / "params.pt")

    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # a fresh guide starts from other weights...
    fresh = AutoFlowStack(_gaussian_model, "impflow", hidden_dims=[8])
    fresh()
    perturb(fresh)
    assert not torch.allclose(fresh.get_posterior().log_prob(z), expected)
    pyro.get_param_store().load(tmp_path / "params.pt")  # ...and takes the saved ones
    fresh()
    assert torch.allclose(fresh.get_posterior().log_prob(z), expected, atol=1e-10)
    # and training goes on with the loaded tensors (the ones the guide uses)
    svi = SVI(_gaussian_model, fresh, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step()
    assert not torch.allclose(fresh.get_posterior().log_prob(z), expected)


_QUIET_JIT = pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.trace.*:DeprecationWarning"
)


@_QUIET_JIT
def test_jit_elbo_fails_with_our_error() -> None:
    guide = AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8])
    svi = SVI(_gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    with pytest.raises(TracingError, match="Trace_ELBO"):
        svi.step()
    # the blocks refuse any trace, whoever asks
    block = resflow_block(2, [8])
    with pytest.raises(TracingError, match=r"torch\.jit\.trace"):
        torch.jit.trace(lambda x: block(x)[0], torch.zeros(3, 2))


def test_a_stale_parameter_store_gives_a_clear_error() -> None:
    def model3() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8])()  # D = 2
    message = r"with shape \(8, 2\) .*, but this guide's parameter has shape \(8, 3\).*clear_param"
    with pytest.raises(ValueError, match=message):
        AutoFlowStack(model3, "resflow", blocks=1, hidden_dims=[8])()  # D = 3, same names
    pyro.clear_param_store()
    AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8])()  # float64
    torch.set_default_dtype(torch.float32)  # the conftest fixture restores float64
    message = r"dtype torch\.float64, but .* dtype torch\.float32.*clear_param"
    with pytest.raises(ValueError, match=message):
        AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8])()


@_QUIET_JIT
def test_jit_elbo_with_pyro_autonormalizingflow_fails_inside_pyro() -> None:
    """Pyro's AutoNormalizingFlow stores a parameter twice, so JitTrace_ELBO trips Pyro's own
    assertion before any transform runs, ours or Pyro's (pyro-ppl/pyro#3132). If Pyro fixes
    it, our TracingError is what users will see instead."""
    guide = AutoNormalizingFlow(_gaussian_model, lambda d: flow_stack(d, "resflow", blocks=1))
    svi = SVI(_gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    with pytest.raises((AssertionError, TracingError)):
        svi.step()


def test_flow_distribution_sample_uses_the_maps_alone() -> None:
    t = flow_stack(2, "impflow", blocks=1, hidden_dims=[8])
    perturb(t)
    blocks = [p for p in t.parts if isinstance(p, BlockTransformModule)]
    fd = FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), blocks)
    torch.manual_seed(3)
    s = fd.sample((4,))
    torch.manual_seed(3)
    r, _ = fd.rsample_and_log_prob((4,))
    assert not s.requires_grad and torch.allclose(s, r.detach())


def test_certify_before_the_first_call_says_to_run_the_guide() -> None:
    from implicit_transforms.lipschitz import certify

    for guide in (
        AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8]),
        AutoNormalizingFlow(_gaussian_model, lambda d: flow_stack(d, "resflow", blocks=1)),
    ):
        with pytest.raises(ValueError, match=r"run the guide once first .*then certify"):
            certify(guide)
        guide()
        assert certify(guide).contractive


def test_median_and_quantiles_explain_what_to_do_instead() -> None:
    guide = AutoFlowStack(_gaussian_model, "resflow", blocks=1, hidden_dims=[8])
    guide()
    with pytest.raises(NotImplementedError, match=r"no closed-form median.*median\(0\)\.values"):
        guide.median()
    with pytest.raises(NotImplementedError, match=r"no closed-form quantiles.*torch\.quantile"):
        guide.quantiles([0.25, 0.75])
    # the advice works
    samples = Predictive(_gaussian_model, guide=guide, num_samples=50, return_sites=["z"])()
    z = samples["z"]
    assert z.median(0).values.shape == z.shape[1:]
    assert torch.quantile(z, torch.tensor([0.25, 0.75]), dim=0).shape == (2, *z.shape[1:])
