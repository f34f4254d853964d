"""Guide sweep (issue 23): the Pyro recipes and the mixed IAF + block recipes against
Pyro's IAF x4, over step budgets, learning rates and optimizers, at equal parameter counts.

Recipes: ``iaf`` (Pyro's ``AutoIAFNormal``, 4 transforms, the baseline of
``benchmarks/vi.py``), ``impflow`` and ``resflow`` (``AutoFlowStack`` with ImpFlow x2 and
ResFlow x4), ``iaf-impflow`` and ``iaf-resflow`` (the mixes of
:data:`~implicit_transforms.recipes.families.GUIDE_MIXES`). The parameter budget is
``benchmarks/vi.py``'s (ImpFlow x2 with two hidden layers of ``max(32, 4 D)``); every other
recipe's hidden width is solved for the closest count.

Posteriors: ``benchmarks/vi.py``'s (``funnel``, ``banana``, ``schools``, ``logreg``) and two
more: ``schools_nc`` (the same eight schools, non-centred: ``theta = mu + tau theta~``, the
same ``log Z``, no funnel) and ``horseshoe`` (sparse linear regression, 6 coefficients, two of
them non-zero, 30 observations, horseshoe prior ``beta_j ~ N(0, tau^2 lambda_j^2)``,
``tau, lambda_j ~ HalfCauchy(1)``; no reference, ELBOs compare with each other only).

Each (posterior, optimizer, lr, recipe) is trained once for the largest budget and evaluated
at every budget on the way (a constant learning rate: the run to 500 steps is the first 500
steps of the run to 1,500). Reported: the ELBO of ``--n-elbo`` particles (float64 sums, our
guides in evaluation mode), per recipe its best and worst setting and each setting's gap to
the recipe's own best, and the median CPU ms per SVI step (round robin, fresh guides) as a
ratio to IAF. Results go to ``--out`` (default ``benchmarks/results/vi_sweep``):
``vi_sweep.json`` (rewritten after each posterior) and ``vi_sweep.md``.

Run by hand: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/vi_sweep.py
--posteriors funnel,schools`` (about 12 minutes per posterior and optimizer on a shared
2-core machine); ``--smoke`` runs toy settings in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from implicit_transforms.plugins.pyro import AutoFlowStack
from pyro.infer.autoguide import AutoIAFNormal

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    environment,
    markdown_table,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)
from vi import (
    POSTERIORS,
    SCHOOLS_SIGMA,
    SCHOOLS_Y,
    Posterior,
    _count_after_setup,
    _solve_width,
    elbo_particles,
    logreg,
    make_svi,
    recipe_hidden,
    schools_reference,
    time_round_robin,
)

RESULTS = Path(__file__).resolve().parent / "results" / "vi_sweep"
RECIPES = ["iaf", "impflow", "resflow", "iaf-impflow", "iaf-resflow"]
BASELINE = "iaf"


# -- two more posteriors ------------------------------------------------------------------------
def schools_nc() -> Posterior:
    """Non-centred eight schools: ``theta_j = mu + tau theta~_j``, ``theta~_j ~ N(0, 1)``."""
    y = torch.tensor(SCHOOLS_Y)
    sigma = torch.tensor(SCHOOLS_SIGMA)

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * raw, sigma), obs=y)

    _, _, log_z = schools_reference()  # a change of latent variables keeps p(y)
    labels = ["mu", "log_tau"] + [f"theta_raw{j}" for j in range(1, 9)]
    return Posterior(
        "schools_nc", model, 10, ["mu", "tau", "theta_raw"], labels, None, None, log_z,
        "log Z exact (quadrature, as schools); no moments",
    )  # fmt: skip


def horseshoe() -> Posterior:
    """Sparse regression with a horseshoe prior (13 unconstrained latents)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=gen)
    beta = torch.tensor([2.0, -1.5, 0.0, 0.0, 0.0, 0.0])
    y = x @ beta + 0.5 * torch.randn(30, generator=gen)

    def model() -> None:
        tau = pyro.sample("tau", dist.HalfCauchy(1.0))
        with pyro.plate("coefs", 6):
            lam = pyro.sample("lam", dist.HalfCauchy(1.0))
            b = pyro.sample("beta", dist.Normal(0.0, tau * lam))
        with pyro.plate("data", 30):
            pyro.sample("y", dist.Normal(b @ x.T, 0.5), obs=y)

    labels = ["log_tau"] + [f"log_lam{j}" for j in range(6)] + [f"beta{j}" for j in range(6)]
    return Posterior(
        "horseshoe", model, 13, ["tau", "lam", "beta"], labels, None, None, None,
        "none (ELBOs compare with each other)",
    )  # fmt: skip


def posterior(name: str) -> Posterior:
    """A posterior of ``benchmarks/vi.py`` or of this sweep, by name."""
    extra: dict[str, Callable[[], Posterior]] = {"schools_nc": schools_nc, "horseshoe": horseshoe}
    if name == "logreg":
        return logreg(False)
    if name in extra:
        return extra[name]()
    if name in POSTERIORS:
        return POSTERIORS[name]()
    raise SystemExit(f"unknown posterior {name!r}: one of {sorted([*POSTERIORS, *extra])}")


# -- recipes at equal parameter counts ----------------------------------------------------------
def recipe_builders(post: Posterior, names: list[str]) -> dict[str, Callable[[], Any]]:
    """Builders of each recipe; the hidden widths give ``vi.py``'s parameter budget."""
    d, h, model = post.dim, recipe_hidden(post.dim), post.model

    def ours(name: str, width: int) -> Any:
        return AutoFlowStack(model, name, hidden_dims=[width, width])

    def iaf(width: int) -> Any:
        return AutoIAFNormal(model, hidden_dim=[width, width], num_transforms=4)

    def build(name: str, width: int) -> Any:
        return iaf(width) if name == BASELINE else ours(name, width)

    budget = _count_after_setup(ours("impflow", h))
    out: dict[str, Callable[[], Any]] = {}
    for name in names:
        width = h
        if name != "impflow":  # the budget's own recipe keeps its width

            def count(w: int, n: str = name) -> int:
                return _count_after_setup(build(n, w))

            width = _solve_width(count, budget, d)
        out[name] = partial(build, name, width)
    return out


# -- training ------------------------------------------------------------------------------------
def train_at_budgets(
    post: Posterior,
    build: Callable[[], Any],
    optimizer: str,
    lr: float,
    budgets: list[int],
    seed: int,
    n_elbo: int,
) -> tuple[list[dict[str, Any]], int]:
    """Train once to ``max(budgets)`` steps, evaluating the ELBO at every budget."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = build()
    svi = make_svi(post, guide, optimizer, lr)
    out: list[dict[str, Any]] = []
    done, seconds, diverged = 0, 0.0, None
    params = 0
    for budget in sorted(budgets):
        start = time.process_time()
        try:
            while done < budget and diverged is None:
                loss = svi.step()
                done += 1
                if not math.isfinite(loss):
                    diverged = f"loss {loss} at step {done}"
        except (RuntimeError, ValueError) as err:
            diverged = f"{type(err).__name__} at step {done}: {str(err)[:120]}"
        seconds += time.process_time() - start
        params = sum(p.numel() for p in pyro.get_param_store().values())
        elbo, se = -math.inf, math.nan
        if diverged is None:
            guide.eval()
            pyro.set_rng_seed(seed + 1)
            vals = elbo_particles(post, guide, n_elbo)
            guide.train()
            if bool(torch.isfinite(vals).all()):
                elbo, se = float(vals.mean()), float(vals.std() / math.sqrt(vals.numel()))
        out.append(
            {"steps": budget, "elbo": elbo, "elbo_se": se, "cpu_seconds": seconds,
             "diverged": diverged}
        )  # fmt: skip
    return out, params


def step_times(builders: dict[str, Callable[[], Any]], post: Posterior, rounds: int) -> Any:
    """Median CPU ms per SVI step (Adam, lr 1e-3) of fresh guides, round robin."""
    svis = {}
    for name, build in builders.items():
        pyro.clear_param_store()
        svi = make_svi(post, build(), "Adam", 1e-3)
        svi.step()
        svis[name] = svi
    ms = {
        k: 1000 * v
        for k, v in time_round_robin({n: s.step for n, s in svis.items()}, rounds).items()
    }
    return {"ms_per_step": ms, "ratio_to_iaf": {k: v / ms[BASELINE] for k, v in ms.items()}}


# -- tables --------------------------------------------------------------------------------------
def _setting(r: dict[str, Any]) -> str:
    return f"{r['optimizer']} lr {r['lr']:g} {r['steps']} steps"


def summarise(runs: list[dict[str, Any]], timing: dict[str, Any]) -> dict[str, Any]:
    """Per posterior and recipe: best and worst setting, largest gap to the own best."""
    out: dict[str, Any] = {}
    for p in dict.fromkeys(r["posterior"] for r in runs):
        per: dict[str, Any] = {}
        for name in dict.fromkeys(r["recipe"] for r in runs if r["posterior"] == p):
            mine = [r for r in runs if r["posterior"] == p and r["recipe"] == name]
            best = max(mine, key=lambda r: r["elbo"])
            worst = min(mine, key=lambda r: r["elbo"])
            per[name] = {
                "params": best["params"],
                "best": best["elbo"],
                "best_setting": _setting(best),
                "worst": worst["elbo"],
                "worst_setting": _setting(worst),
                "max_gap": best["elbo"] - worst["elbo"],
                "step_ratio_to_iaf": timing.get(p, {}).get("ratio_to_iaf", {}).get(name),
            }
        out[p] = per
    return out


def overview(summary: dict[str, Any]) -> str:
    """Recipes x posteriors: ``best / worst`` ELBO over the settings (the README's table),
    then the step time as a ratio to IAF."""
    posts = list(summary)
    names = list(dict.fromkeys(n for per in summary.values() for n in per))
    rows = []
    for name in names:
        cells = []
        for p in posts:
            s = summary[p].get(name)
            cells.append("" if s is None else f"{s['best']:.3f} / {s['worst']:.3f}")
        ratios = [summary[p][name]["step_ratio_to_iaf"] for p in posts if name in summary[p]]
        ratios = [r for r in ratios if r is not None]
        span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else ""
        rows.append([name, *cells, span])
    return markdown_table(["recipe", *posts, "step time / IAF"], rows)


def tables(summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The markdown of ``vi_sweep.md``: the overview, one summary table, then every cell per
    posterior."""
    rows = []
    for p, per in summary.items():
        iaf_best = per.get(BASELINE, {}).get("best")
        for name, s in per.items():
            vs = "" if iaf_best is None else f"{s['best'] - iaf_best:+.3f}"
            ratio = s["step_ratio_to_iaf"]
            rows.append(
                [p, name, s["params"], f"{s['best']:.3f} ({s['best_setting']})", vs,
                 f"{s['worst']:.3f} ({s['worst_setting']})", f"{s['max_gap']:.3f}",
                 "" if ratio is None else f"{ratio:.2f}"]
            )  # fmt: skip
    text = overview(summary) + "\n\n" + markdown_table(
        ["posterior", "recipe", "params", "best ELBO (setting)", "best - IAF best",
         "worst ELBO (setting)", "worst gap to own best", "step time / IAF"],
        rows,
    )  # fmt: skip
    for p in summary:
        mine = [r for r in runs if r["posterior"] == p]
        settings = list(dict.fromkeys(_setting(r) for r in mine))
        body = []
        for name in summary[p]:
            best = summary[p][name]["best"]
            cells = []
            for s in settings:
                r = next((r for r in mine if r["recipe"] == name and _setting(r) == s), None)
                cells.append("" if r is None else f"{r['elbo']:.3f} ({r['elbo'] - best:+.3f})")
            body.append([name, *cells])
        text += f"\n\n{p}: ELBO (gap to the recipe's own best)\n\n"
        text += markdown_table(["recipe", *settings], body)
    return text


# -- main ----------------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--posteriors", default="funnel,schools,schools_nc,horseshoe,banana")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--budgets", default="500,1500")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    p.add_argument("--optimizers", default="ClippedAdam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-elbo", type=int, default=4096)
    p.add_argument("--timing-rounds", type=int, default=20)
    p.add_argument("--tables", type=Path, default=None, help="rewrite the .md from this JSON")
    args = p.parse_args()
    if args.smoke:
        args.posteriors, args.budgets, args.lrs = "banana,horseshoe", "2,3", "1e-3"
        args.n_elbo, args.timing_rounds = 64, 1
    return args


def main() -> None:
    args = parse()
    if args.tables is not None:  # the markdown again, from a result file
        data = json.loads(args.tables.read_text())
        text = tables(data["summary"], data["runs"])
        write_markdown(args.tables.with_suffix(".md"), text, data["environment"])
        print(text)
        return
    one_thread()
    torch.set_default_dtype(torch.float32)
    folder = output_folder(args, RESULTS, "vi_sweep")
    env = environment(pyro=pyro.__version__, dtype=str(torch.get_default_dtype()))
    budgets = [int(b) for b in args.budgets.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    runs: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    for pname in args.posteriors.split(","):
        post = posterior(pname)
        builders = recipe_builders(post, args.recipes.split(","))
        for opt in args.optimizers.split(","):
            for lr in lrs:
                for name, build in builders.items():
                    evals, params = train_at_budgets(
                        post, build, opt, lr, budgets, args.seed, args.n_elbo
                    )
                    for e in evals:
                        run = {"posterior": pname, "recipe": name, "optimizer": opt, "lr": lr,
                               "params": params, **e}  # fmt: skip
                        runs.append(run)
                        print(
                            f"{pname:10s} {opt:11s} lr {lr:<6g} {name:12s} {e['steps']:5d} "
                            f"steps params {params:6d} ELBO {e['elbo']:9.3f} ± "
                            f"{e['elbo_se']:.3f} cpu {e['cpu_seconds']:6.1f}s"
                            + (f" DIVERGED {e['diverged']}" if e["diverged"] else ""),
                            flush=True,
                        )
        timing[pname] = step_times(builders, post, args.timing_rounds)
        print(pname, timing[pname], flush=True)
        summary = summarise(runs, timing)
        data = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                "timing": timing, "summary": summary}  # fmt: skip
        write_json(folder / "vi_sweep.json", data, env)
        write_markdown(folder / "vi_sweep.md", tables(summary, runs), env)
    print(f"wrote {folder / 'vi_sweep.json'}")


if __name__ == "__main__":
    main()
