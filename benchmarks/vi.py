"""Variational inference benchmark: flow guides from the blocks against Pyro's guides.

Four posteriors of different geometry, each with an exact or NUTS reference:

* ``funnel``: Neal's funnel in 10-D, ``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)`` (i = 1..9);
  normalised, so ``log Z = 0`` and the ELBO is ``-KL(q || p)``.
* ``logreg``: Bayesian logistic regression on scikit-learn's breast-cancer data (569 rows,
  30 standardised features and an intercept, ``w ~ N(0, I_31)``); reference: Pyro's NUTS,
  cached under ``results/vi/`` with its seed and settings.
* ``banana``: ``z1 ~ N(0, 1)``, ``z2 | z1 ~ N(z1^2 - 1, 0.3^2)``; ``log Z = 0``, exact moments.
* ``schools``: centred eight schools (``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``,
  ``theta_j ~ N(mu, tau^2)``, ``y_j ~ N(theta_j, sigma_j^2)``), a funnel in ``(log tau,
  theta)`` from real data; reference: the exact posterior by quadrature over ``log tau``
  (``mu`` and ``theta`` are Gaussian given ``tau``), ``log Z`` included.

Guides: ``AutoNormal``, ``AutoMultivariateNormal``, Pyro's IAF (``AutoIAFNormal``, 4
transforms), spline coupling (4 ``spline_coupling`` layers with reversals and an elementwise
affine layer, in ``AutoNormalizingFlow``), and the recipes ``AutoFlowStack`` with ResFlow (4
blocks) and ImpFlow (2 blocks); the four flows have equal parameter counts (within 3.5%;
the hidden sizes are solved for). Trained with Pyro's ``ClippedAdam`` and ``Adam`` (same lr), 8
vectorised particles, float32. Reported: ELBO +- s.e. over many particles (our guides in
evaluation mode: exact log-det), ms per SVI step and time to draw 10,000 latent samples as
ratios to IAF (measured in one process, round robin over the guides), posterior mean and sd
errors against the reference.

Run by hand: ``.venv/bin/python benchmarks/vi.py`` (1,500 steps: the run in
``benchmarks/README.md``: about 55 minutes on a shared 2-core machine); ``--section sweep``
trains the recipes with one design choice undone, ``--section ablations`` times the design
choices (direction, solver, training log-det), ``--section tables`` prints the tables.
Results (with the environment) go to ``--out`` (default ``benchmarks/results/vi``), or to the
file ``--output``; ``--smoke`` runs a section at toy settings in seconds. Timings are medians
of process CPU time, round robin (``_common.interleaved``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from implicit_transforms.plugins.pyro import AutoFlowStack, ElementwiseAffine
from pyro import poutine
from pyro.distributions.transforms import ComposeTransformModule, Permute, spline_coupling
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from torch.distributions import biject_to

from implicit_transforms.solvers import Broyden, FixedPoint

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Timed,
    count_parameters,
    environment,
    interleaved,
    one_thread,
    output_folder,
    parser,
    write_json,
)

Tensor = torch.Tensor
RESULTS = Path(__file__).resolve().parent / "results" / "vi"
PLATE_DIM = -2  # every model has at most one plate (dim -1); particles go to dim -2


# -- posteriors --------------------------------------------------------------------------------
@dataclass
class Posterior:
    """A model, its unconstrained latent coordinates and a reference."""

    name: str
    model: Callable[[], None]
    dim: int
    sites: list[str]  # latent sites in the order of the unconstrained vector
    labels: list[str]
    mean: Tensor | None = None
    sd: Tensor | None = None
    log_z: float | None = None
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def funnel() -> Posterior:
    def model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(9), torch.exp(v / 2)[..., None]).to_event(1))

    mean = torch.zeros(10)
    sd = torch.cat([torch.tensor([3.0]), torch.full((9,), math.exp(9 / 4))])
    return Posterior(
        "funnel", model, 10, ["v", "x"], ["v"] + [f"x{i}" for i in range(1, 10)],
        mean, sd, 0.0, "exact (analytic)",
    )  # fmt: skip


def banana() -> Posterior:
    def model() -> None:
        z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
        pyro.sample("z2", dist.Normal(z1**2 - 1.0, 0.3))

    sd = torch.tensor([1.0, math.sqrt(2.0 + 0.09)])
    return Posterior(
        "banana", model, 2, ["z1", "z2"], ["z1", "z2"], torch.zeros(2), sd, 0.0,
        "exact (analytic)",
    )  # fmt: skip


SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def schools_reference() -> tuple[Tensor, Tensor, float]:
    """Exact moments of ``(mu, log tau, theta_1..8)`` and ``log Z`` by quadrature over
    ``u = log tau`` (float64): given ``tau``, ``mu`` and ``theta`` are Gaussian."""
    y = torch.tensor(SCHOOLS_Y, dtype=torch.float64)
    s2 = torch.tensor(SCHOOLS_SIGMA, dtype=torch.float64) ** 2
    u = torch.linspace(-12.0, 8.0, 40001, dtype=torch.float64)
    tau2 = torch.exp(2 * u)[:, None]
    v = s2 + tau2  # y_j | mu, tau ~ N(mu, v_j)
    prec = (1 / v).sum(-1) + 1 / 25.0  # mu | tau, y: prior N(0, 25)
    m_mu = (y / v).sum(-1) / prec
    # log p(y | tau) = log N(y; 0, diag(v) + 25 11^T), by completing the square in mu
    log_lik = (
        -0.5 * (y**2 / v).sum(-1)
        + 0.5 * m_mu**2 * prec
        - 0.5 * torch.log(v).sum(-1)
        - 0.5 * torch.log(prec * 25.0)
        - 4 * math.log(2 * math.pi)
    )
    log_prior_u = math.log(2 / math.pi) + math.log(5.0) - torch.log(25.0 + tau2[:, 0]) + u
    log_w = log_lik + log_prior_u
    du = float(u[1] - u[0])
    log_z = float(torch.logsumexp(log_w, 0) + math.log(du))
    w = torch.softmax(log_w, 0)
    var_mu = 1 / prec
    # theta_j | mu, tau, y ~ N((y_j tau^2 + mu s_j^2) / v_j, tau^2 s_j^2 / v_j)
    a, b = tau2 / v, s2 / v
    m_th = a * y + b * m_mu[:, None]
    v_th = tau2 * s2 / v + b**2 * var_mu[:, None]
    means = torch.cat([(w * m_mu).sum()[None], (w * u).sum()[None], (w[:, None] * m_th).sum(0)])
    second = torch.cat(
        [
            (w * (var_mu + m_mu**2)).sum()[None],
            (w * u**2).sum()[None],
            (w[:, None] * (v_th + m_th**2)).sum(0),
        ]
    )
    return means.float(), (second - means**2).sqrt().float(), log_z


def schools() -> Posterior:
    y = torch.tensor(SCHOOLS_Y)
    sigma = torch.tensor(SCHOOLS_SIGMA)

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    mean, sd, log_z = schools_reference()
    labels = ["mu", "log_tau"] + [f"theta{j}" for j in range(1, 9)]
    return Posterior(
        "schools", model, 10, ["mu", "tau", "theta"], labels, mean, sd, log_z,
        "exact (quadrature over log tau, 40,001 points)",
    )  # fmt: skip


def logreg_data() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def logreg_model(x: Tensor, y: Tensor) -> Callable[[], None]:
    def model() -> None:
        w = pyro.sample("w", dist.Normal(torch.zeros(31), 1.0).to_event(1))
        logits = w[..., 1:] @ x.T + w[..., :1]
        if logits.dim() > 1:  # (particles, 1, N) under the particle plate
            logits = logits.squeeze(-2)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    return model


NUTS_SETTINGS = {"warmup": 1000, "samples": 4000, "seed": 0, "target_accept": 0.8}


def nuts_reference(model: Callable[[], None], refresh: bool) -> dict[str, Any]:
    """NUTS moments of ``w`` (cached in ``results/vi/nuts_logreg.json``)."""
    path = RESULTS / "nuts_logreg.json"
    if path.exists() and not refresh:
        cached = json.loads(path.read_text())
        if cached["settings"] == NUTS_SETTINGS:
            return cached
    from pyro.infer import MCMC, NUTS
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    pyro.set_rng_seed(NUTS_SETTINGS["seed"])
    kernel = NUTS(model, target_accept_prob=NUTS_SETTINGS["target_accept"], jit_compile=True)
    mcmc = MCMC(
        kernel,
        num_samples=NUTS_SETTINGS["samples"],
        warmup_steps=NUTS_SETTINGS["warmup"],
        num_chains=1,
        disable_progbar=True,
    )
    start = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - start
    w = mcmc.get_samples()["w"].double()
    halves = w.reshape(2, -1, w.shape[-1])
    out = {
        "settings": NUTS_SETTINGS,
        "mean": w.mean(0).tolist(),
        "sd": w.std(0).tolist(),
        "min_ess": float(effective_sample_size(w[None]).min()),
        "max_split_rhat": float(split_gelman_rubin(halves).max()),
        "seconds": seconds,
        "divergences": len(mcmc.diagnostics()["divergences"]["chain 0"]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def logreg(refresh: bool = False) -> Posterior:
    x, y = logreg_data()
    model = logreg_model(x, y)
    ref = nuts_reference(model, refresh)
    return Posterior(
        "logreg", model, 31, ["w"], ["b"] + [f"w{i}" for i in range(1, 31)],
        torch.tensor(ref["mean"]), torch.tensor(ref["sd"]), None,
        f"NUTS, {NUTS_SETTINGS['samples']} draws after {NUTS_SETTINGS['warmup']} warm-up, "
        f"seed {NUTS_SETTINGS['seed']} (min ESS {ref['min_ess']:.0f}, split R-hat "
        f"{ref['max_split_rhat']:.3f})",
        extra=ref,
    )  # fmt: skip


POSTERIORS: dict[str, Callable[[], Posterior]] = {
    "funnel": funnel,
    "logreg": logreg,
    "banana": banana,
    "schools": schools,
}


# -- guides at equal parameter counts ------------------------------------------------------------
def recipe_hidden(dim: int) -> int:
    """The width of every network of the recipes in this benchmark."""
    return max(32, 4 * dim)


def flow_guides(post: Posterior, recipe_changes: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Builders of every guide; the flows' widths give equal parameter counts."""
    d, h = post.dim, recipe_hidden(post.dim)
    model = post.model

    def ours(family: str) -> Callable[[], Any]:
        return lambda: AutoFlowStack(model, family, hidden_dims=[h, h], **recipe_changes)

    budget = _count_after_setup(ours("impflow")())

    def iaf(width: int) -> Any:
        return AutoIAFNormal(model, hidden_dim=[width, width], num_transforms=4)

    def spline(width: int) -> Any:
        def init(dim: int) -> ComposeTransformModule:
            parts: list[Any] = []
            rev = torch.arange(dim - 1, -1, -1)
            for k in range(4):
                parts.append(spline_coupling(dim, hidden_dims=[width, width], count_bins=8))
                if k < 3:
                    parts.append(Permute(rev))
            parts.append(ElementwiseAffine(dim))
            return ComposeTransformModule(parts)

        return AutoNormalizingFlow(model, init)

    w_iaf = _solve_width(lambda w: _count_after_setup(iaf(w)), budget, d)
    w_spline = _solve_width(lambda w: _count_after_setup(spline(w)), budget, 2)
    return {
        "AutoNormal": lambda: AutoNormal(model),
        "AutoMVN": lambda: AutoMultivariateNormal(model),
        "IAF x4": lambda: iaf(w_iaf),
        "spline x4": lambda: spline(w_spline),
        "ResFlow x4": ours("resflow"),
        "ImpFlow x2": ours("impflow"),
    }


def _count_after_setup(guide: Any) -> int:
    pyro.clear_param_store()
    with torch.no_grad():
        guide()
    return count_parameters(guide)


def _solve_width(count: Callable[[int], int], budget: int, low: int) -> int:
    """The width in ``[low, 1024]`` whose parameter count is closest to ``budget``
    (counts grow with the width: bisection, then the better neighbour)."""
    lo, hi = low, 1024
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) < budget:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda w: abs(count(w) - budget))


# -- training and evaluation ------------------------------------------------------------------
OPTIMIZERS = {
    "ClippedAdam": lambda lr: pyro.optim.ClippedAdam({"lr": lr}),
    "Adam": lambda lr: pyro.optim.Adam({"lr": lr}),
}


def make_svi(post: Posterior, guide: Any, optimizer: str, lr: float) -> SVI:
    loss = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    return SVI(post.model, guide, OPTIMIZERS[optimizer](lr), loss)


def unconstrained_samples(post: Posterior, guide: Any, n: int) -> Tensor:
    """``(n, D)`` latent samples from the guide in the posterior's unconstrained coordinates."""
    with torch.no_grad(), pyro.plate("particles", n, dim=PLATE_DIM):
        trace = poutine.trace(guide).get_trace()
    parts = []
    for name in post.sites:
        site = trace.nodes[name]
        value = biject_to(site["fn"].support).inv(site["value"])
        parts.append(value.reshape(n, -1))
    return torch.cat(parts, -1)


def elbo_particles(post: Posterior, guide: Any, n: int) -> Tensor:
    """``log p(x, z) - log q(z)`` for ``n`` guide samples (one vectorised pass)."""
    with torch.no_grad(), pyro.plate("particles", n, dim=PLATE_DIM):
        g_trace = poutine.trace(guide).get_trace()
        m_trace = poutine.trace(poutine.replay(post.model, trace=g_trace)).get_trace()
    total = torch.zeros(n, dtype=torch.float64)
    for trace, sign in ((m_trace, 1.0), (g_trace, -1.0)):
        with torch.no_grad():
            trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                lp = site["log_prob"]
                lp = lp.expand(n, *lp.shape[1:]) if lp.dim() else lp.expand(n)
                total += sign * lp.reshape(n, -1).double().sum(-1)
    return total


def _eval_mode(guide: Any) -> None:
    guide.eval()


@dataclass
class Run:
    posterior: str
    guide: str
    optimizer: str
    params: int
    elbo: float
    elbo_se: float
    train_seconds: float
    mean_err: float | None = None
    sd_err: float | None = None
    sd_ratio_first: float | None = None
    diverged: str | None = None


def train_and_evaluate(
    post: Posterior,
    name: str,
    build: Callable[[], Any],
    optimizer: str,
    steps: int,
    lr: float,
    seed: int,
    n_elbo: int,
) -> tuple[Run, Any, SVI]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = build()
    svi = make_svi(post, guide, optimizer, lr)
    start = time.perf_counter()
    diverged = None
    try:
        for _ in range(steps):
            loss = svi.step()
            if not math.isfinite(loss):
                diverged = f"loss {loss}"
                break
    except (RuntimeError, ValueError) as err:
        diverged = f"{type(err).__name__}: {str(err)[:120]}"
    seconds = time.perf_counter() - start
    _eval_mode(guide)
    pyro.set_rng_seed(seed + 1)
    if diverged is None:
        vals = elbo_particles(post, guide, n_elbo).double()
        finite = vals[torch.isfinite(vals)]
        elbo = float(finite.mean()) if finite.numel() == vals.numel() else -math.inf
        se = float(finite.std() / math.sqrt(finite.numel()))
    else:
        elbo, se = -math.inf, math.nan
    run = Run(
        post.name, name, optimizer, count_parameters(guide), elbo, se, seconds, diverged=diverged
    )
    if diverged is None and post.mean is not None and post.sd is not None:
        z = unconstrained_samples(post, guide, 10_000).double()
        m, s = z.mean(0), z.std(0)
        ref_m, ref_s = post.mean.double(), post.sd.double()
        run.mean_err = float(((m - ref_m).abs() / ref_s).mean())
        run.sd_err = float(((s / ref_s) - 1).abs().mean())
        run.sd_ratio_first = float(s[0] / ref_s[0]) if post.name == "funnel" else None
        if post.name == "schools":
            run.sd_ratio_first = float(s[1] / ref_s[1])  # log tau
    return run, guide, svi


def time_round_robin(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median CPU seconds of each callable, measured in turn (so load hits them alike).

    Pyro's parameter store is global and two guides may use the same parameter names, so it
    is emptied before each call (untimed): each guide then registers its own parameters.
    """
    timed = {k: Timed(fn, before=pyro.clear_param_store) for k, fn in fns.items()}
    return interleaved(timed, rounds, warmup)


def sample_10k(post: Posterior, guide: Any) -> Callable[[], Any]:
    return lambda: unconstrained_samples(post, guide, 10_000)


# -- sections ------------------------------------------------------------------------------------
def main_section(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"settings": _settings(args), "posteriors": {}}
    for pname in args.posteriors.split(","):
        post = POSTERIORS[pname]() if pname != "logreg" else logreg(args.refresh_nuts)
        guides = flow_guides(post, {})
        chosen = {k: v for k, v in guides.items() if not args.guides or k in args.guides}
        runs: list[Run] = []
        trained: dict[str, tuple[Any, SVI]] = {}
        for opt in args.optimizers.split(","):
            for gname, build in chosen.items():
                run, guide, svi = train_and_evaluate(
                    post, gname, build, opt, args.steps, args.lr, args.seed, args.n_elbo
                )
                runs.append(run)
                print(_fmt_run(run), flush=True)
                if opt == "Adam":
                    trained[gname] = (guide, svi)
        timing: dict[str, Any] = {}
        if trained and not args.no_timing:
            timing = time_steps_and_samples(post, trained, args.timing_rounds)
            print(json.dumps(timing, indent=1), flush=True)
        out["posteriors"][pname] = {
            "dim": post.dim,
            "reference": post.reference,
            "log_z": post.log_z,
            "runs": [vars(r) for r in runs],
            "timing": timing,
        }
    return out


def time_steps_and_samples(
    post: Posterior, trained: dict[str, tuple[Any, SVI]], rounds: int
) -> dict[str, Any]:
    """ms per SVI step and seconds per 10k samples, interleaved; ratios to IAF."""
    for guide, _ in trained.values():
        guide.train()
    step_fns = {n: (lambda s=svi: s.step()) for n, (_, svi) in trained.items()}
    steps = time_round_robin(step_fns, rounds)
    for guide, _ in trained.values():
        guide.eval()
    sample_fns = {n: sample_10k(post, g) for n, (g, _) in trained.items()}
    samples = time_round_robin(sample_fns, max(3, rounds // 5), warmup=1)
    ref = "IAF x4"
    return {
        "ms_per_step": {k: 1000 * v for k, v in steps.items()},
        "step_ratio_to_iaf": {k: v / steps[ref] for k, v in steps.items()} if ref in steps else {},
        "s_per_10k_samples": samples,
        "sample_ratio_to_iaf": {k: v / samples[ref] for k, v in samples.items()}
        if ref in samples
        else {},
    }


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def _fmt_run(r: Run) -> str:
    extra = ""
    if r.mean_err is not None:
        extra = f" mean err {r.mean_err:.3f} sd err {r.sd_err:.3f}"
    if r.sd_ratio_first is not None:
        extra += f" sd ratio {r.sd_ratio_first:.3f}"
    if r.diverged:
        extra += f" DIVERGED {r.diverged}"
    return (
        f"{r.posterior:8s} {r.optimizer:11s} {r.guide:11s} params {r.params:7d} "
        f"ELBO {r.elbo:9.3f} ± {r.elbo_se:.3f} train {r.train_seconds:6.1f}s{extra}"
    )


class _Variant(AutoFlowStack):
    """A recipe with one design choice undone (for the sweep only)."""

    def __init__(self, model: Callable[[], None], family: str, tweak: str, **kw: Any) -> None:
        super().__init__(model, family, **kw)
        self.tweak = tweak

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        assert self.transform is not None
        parts = list(self.transform.parts)
        if self.tweak == "affine-last-only":
            parts = [p for i, p in enumerate(parts) if i % 2 == 0 or i == len(parts) - 1]
            self.transform = ComposeTransformModule(parts, cache_size=1)
        elif self.tweak == "random-init":
            with torch.no_grad():
                for part in parts:
                    for net in getattr(getattr(part, "block", None), "networks", list)():
                        last = net.layers[-1]
                        torch.nn.init.kaiming_uniform_(last.weight, a=math.sqrt(5))
                        bound = 1.0 / math.sqrt(last.weight.shape[1])
                        torch.nn.init.uniform_(last.bias, -bound, bound)


SWEEP = {
    "recipe": ("", {}),
    "sin": ("", {"activation": "sin"}),
    "elu": ("", {"activation": "elu"}),
    "affine-last-only": ("affine-last-only", {}),
    "random-init": ("random-init", {}),
    "init-scale-1": ("", {"init_scale": 1.0}),
    "roulette": ("", {"n_exact_terms": 2}),
    "coeff-0.99": ("", {"coeff": 0.99}),
    "coeff-0.9": ("", {"coeff": 0.9}),
}


def sweep_section(args: argparse.Namespace) -> dict[str, Any]:
    """Each design choice of the recipes undone once, same budget and steps."""
    out: dict[str, Any] = {"settings": _settings(args), "runs": []}
    families = [f for f in ("resflow", "impflow") if not args.guides or f in args.guides]
    variants = args.variants.split(",") if args.variants else list(SWEEP)
    for pname in args.posteriors.split(","):
        post = POSTERIORS[pname]() if pname != "logreg" else logreg(args.refresh_nuts)
        h = recipe_hidden(post.dim)
        for family in families:
            for variant in variants:
                tweak, changes = SWEEP[variant]
                kw = {"hidden_dims": [h, h], **changes}

                def build(
                    kw: dict[str, Any] = kw, tweak: str = tweak, f: str = family, p: Any = post
                ) -> Any:
                    return _Variant(p.model, f, tweak, **kw)

                for opt in args.optimizers.split(","):
                    run, _, _ = train_and_evaluate(
                        post, f"{family}:{variant}", build, opt, args.steps, args.lr,
                        args.seed, args.n_elbo,
                    )  # fmt: skip
                    print(_fmt_run(run), flush=True)
                    out["runs"].append(vars(run))
    return out


def ablation_section(args: argparse.Namespace) -> dict[str, Any]:
    """Speed of the design choices at the same trained weights, timed round robin.

    The ResFlow and ImpFlow recipes are trained for ``--steps`` steps (Adam) on each
    posterior; copies of the trained guides then differ in one setting each:

    * direction (ResFlow): ``explicit="sample"`` (the explicit map samples) against
      ``"score"`` (the explicit map scores, sampling solves);
    * the ImpFlow solver: Anderson (the recipe) against Broyden (the family default) and
      fixed point;
    * the training log-det: exact (the recipe for D <= 64) against the family's roulette.
    """
    out: dict[str, Any] = {"settings": _settings(args), "posteriors": {}}
    for pname in args.posteriors.split(","):
        post = POSTERIORS[pname]() if pname != "logreg" else logreg(args.refresh_nuts)
        h = recipe_hidden(post.dim)
        variants: dict[str, tuple[str, dict[str, Any]]] = {
            "ResFlow explicit=sample (recipe)": ("resflow", {}),
            "ResFlow explicit=score": ("resflow", {"explicit": "score"}),
            "ResFlow roulette log-det": ("resflow", {"n_exact_terms": 2}),
            "ImpFlow Anderson (recipe)": ("impflow", {}),
            "ImpFlow Broyden": ("impflow", {"solver": Broyden()}),
            "ImpFlow fixed point": ("impflow", {"solver": FixedPoint()}),
            "ImpFlow roulette log-det": ("impflow", {"n_exact_terms": 2}),
        }
        trained: dict[str, tuple[Any, SVI]] = {}
        states: dict[str, dict[str, Tensor]] = {}
        for name, (family, changes) in variants.items():
            pyro.clear_param_store()
            pyro.set_rng_seed(args.seed)
            guide = AutoFlowStack(post.model, family, hidden_dims=[h, h], **changes)
            svi = make_svi(post, guide, "Adam", args.lr)
            if family not in states:  # train the recipe once per family, copy its weights
                start = time.perf_counter()
                for _ in range(args.steps):
                    svi.step()
                print(f"{pname}: trained {family} in {time.perf_counter() - start:.1f}s")
                states[family] = {k: v.detach().clone() for k, v in guide.state_dict().items()}
            else:
                svi.step()  # build it, then take the trained weights
                guide.load_state_dict(states[family])
            trained[name] = (guide, svi)
        steps = time_round_robin({n: s.step for n, (_, s) in trained.items()}, args.timing_rounds)
        for guide, _ in trained.values():
            guide.eval()
        samples = time_round_robin(
            {n: sample_10k(post, g) for n, (g, _) in trained.items()},
            max(3, args.timing_rounds // 5),
            warmup=1,
        )
        iters = {}
        for n, (g, _) in trained.items():
            unconstrained_samples(post, g, 10_000)
            solves = [p.block.last_solve for p in g.transform.parts if hasattr(p, "block")]
            iters[n] = [
                float(r.iterations.float().mean()) if r is not None else 0.0 for r in solves
            ]
        out["posteriors"][pname] = {
            "ms_per_step": {k: 1000 * v for k, v in steps.items()},
            "s_per_10k_samples": samples,
            "mean_sampling_iterations_per_block": iters,
        }
        print(json.dumps(out["posteriors"][pname], indent=1), flush=True)
    return out


def print_tables(path: Path) -> None:
    """The markdown tables of ``benchmarks/README.md`` from a main-section result file."""
    data = json.loads(path.read_text())
    posts = data["posteriors"]
    guides = [r["guide"] for r in next(iter(posts.values()))["runs"] if r["optimizer"] == "Adam"]
    opts = ["ClippedAdam", "Adam"]

    def run(p: str, g: str, o: str) -> dict[str, Any]:
        return next(r for r in posts[p]["runs"] if r["guide"] == g and r["optimizer"] == o)

    head = " | ".join(f"{p} (D={v['dim']})" for p, v in posts.items())
    print(f"| guide | {head} |\n|---|" + "---|" * len(posts))
    logz = " | ".join("" if v["log_z"] is None else f"{v['log_z']:.3f}" for v in posts.values())
    print(f"| log Z (upper bound) | {logz} |")
    for g in guides:
        cells = []
        for p in posts:
            vals = [run(p, g, o) for o in opts]
            cells.append(
                " / ".join(f"{r['elbo']:.3f} ± {r['elbo_se']:.3f}" for r in vals)
                + f" ({vals[1]['params']})"
            )
        print(f"| {g} | " + " | ".join(cells) + " |")
    print()
    print(f"| guide | {head} |\n|---|" + "---|" * len(posts))
    for g in guides:
        cells = []
        for p in posts:
            r = run(p, g, "Adam")
            cell = f"{r['mean_err']:.3f} / {r['sd_err']:.3f}"
            if r["sd_ratio_first"] is not None:
                cell += f" / {r['sd_ratio_first']:.2f}"
            cells.append(cell)
        print(f"| {g} | " + " | ".join(cells) + " |")
    print()
    print(f"| guide | {head} |\n|---|" + "---|" * len(posts))
    for g in guides:
        cells = []
        for v in posts.values():
            t = v["timing"]
            cells.append(f"{t['step_ratio_to_iaf'][g]:.2f} / {t['sample_ratio_to_iaf'][g]:.2f}")
        print(f"| {g} | " + " | ".join(cells) + " |")
    iaf = " | ".join(
        f"{v['timing']['ms_per_step']['IAF x4']:.1f} ms / "
        f"{1000 * v['timing']['s_per_10k_samples']['IAF x4']:.1f} ms"
        for v in posts.values()
    )
    print(f"| (IAF x4 absolute) | {iaf} |")


def parse() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--section", default="main", choices=["main", "ablations", "sweep", "tables"])
    p.add_argument("--posteriors", default="funnel,logreg,banana,schools")
    p.add_argument("--guides", default="", help="comma-separated guide names (default all)")
    p.add_argument("--optimizers", default="ClippedAdam,Adam")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-elbo", type=int, default=4096)
    p.add_argument("--timing-rounds", type=int, default=20)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--refresh-nuts", action="store_true")
    p.add_argument("--variants", default="", help="sweep: comma-separated variant names")
    p.add_argument("--output", default=None, help="the result file (default: OUT/SECTION.json)")
    args = p.parse_args()
    if args.smoke:
        args.posteriors, args.steps, args.n_elbo, args.timing_rounds = "banana", 3, 64, 1
    return args


def main() -> None:
    args = parse()
    one_thread()
    torch.set_default_dtype(torch.float32)
    if args.section == "tables":
        folder = args.out if args.out is not None else RESULTS
        print_tables(Path(args.output) if args.output else folder / "main.json")
        return
    folder = output_folder(args, RESULTS, "vi")
    if args.section == "main":
        out = main_section(args)
    elif args.section == "sweep":
        out = sweep_section(args)
    elif args.section == "ablations":
        out = ablation_section(args)
    else:
        raise SystemExit(f"section {args.section} not implemented")
    path = Path(args.output) if args.output else folder / f"{args.section}.json"
    env = environment(pyro=pyro.__version__, dtype=str(torch.get_default_dtype()))
    write_json(path, out, env)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
