"""ImpFlow paper, Fig. 3: an 8-block Residual Flow against a 4-block ImpFlow on the checkerboard.

Both models are trained with the command-line trainer (the same command a user runs), on the
same data, for the same number of steps, and evaluated on the same test split with the exact
2-D log-det. The checkerboard's entropy is exactly 5.00 bits; the paper reports 5.08 bits
(ResFlow, 8 blocks) and 5.05 bits (ImpFlow, 4 blocks). Each network of either model has the
same shape, so ImpFlow-4 (two networks per block) and ResFlow-8 have the same parameter count.

    .venv/bin/python benchmarks/checkerboard.py --steps 15000 --jobs 2
    .venv/bin/python benchmarks/checkerboard.py --models rq4 impflow4 rq2-impflow2 --steps 2500
    .venv/bin/python benchmarks/checkerboard.py --preset paper --cpu-minutes 60 \\
        --steps 1000000 --n-samples 1000000 --out benchmarks/results/checkerboard-paper

writes ``benchmarks/results/checkerboard/{resflow8,impflow4}/`` (run directories with
report.json and figure.png), ``checkerboard.json`` and ``checkerboard.md`` (the table).

``--preset official`` reproduces the official ImpFlow toy script (``run_toy.sh``) in this
process, every setting an option: raw [-4, 4]^2 data, a fresh batch of 5,000 every step,
``[128, 128]`` sine networks, coeff 0.99, exact log-det, Adam lr 1e-3 constant, no weight decay,
no clipping, last layers near zero, 50,000 steps, evaluations every 1,000 steps. It reports the
paper's protocol (the best of the periodic evaluations on fresh points) beside ours (the weights
chosen on a fixed validation set, tested once on 100,000 fresh points). Models run one after
the other; a stop (Ctrl-C, SIGTERM) saves a checkpoint, and the same command continues:

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/checkerboard.py --preset official \\
        --models impflow4 impflow6 resflow8
    .venv/bin/python benchmarks/checkerboard.py --ablation --ablation-steps 1000   # the ablation
    .venv/bin/python benchmarks/checkerboard.py --smoke                            # seconds

writes ``benchmarks/results/checkerboard-official/<model>/`` (report.json, curves.png, and the
git-ignored metrics.jsonl, checkpoint.pt, best.pt), ``official.md`` and ``ablation/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from nflows.flows import Flow
from torch import Tensor

HERE = Path(__file__).resolve().parent
PAPER_BITS = {"resflow8": 5.08, "impflow4": 5.05}
MODELS = {
    "resflow8": ["--model", "resflow", "--blocks", "8"],
    "impflow4": ["--model", "impflow", "--blocks", "4"],
    # mixing with nflows' own layers: rational-quadratic coupling alone and interleaved
    "rq4": ["--model", "rq-coupling", "--blocks", "4"],
    "rq2-impflow2": ["--model", "rq-impflow", "--blocks", "4"],
}


PRESETS: dict[str, list[str]] = {
    # round 1's settings (ActNorm, batch 256, roulette log-det, EMA, cosine schedule)
    "round1": ["--batch-size", "256", "--ema", "0.999", "--eval-every", "1000"],
    # the official ImpFlow toy script: exact 2-D log-det in training, batch 5000, coeff 0.99,
    # [128, 128] sine networks, Adam lr 1e-3 with weight decay 1e-5, constant learning rate,
    # no ActNorm, no EMA (its default is 50,000 iterations)
    "paper": [
        "--batch-size", "5000", "--logdet", "exact", "--coeff", "0.99", "--weight-decay", "1e-5",
        "--schedule", "constant", "--warmup", "0", "--no-actnorm", "--eval-every", "250",
        "--eval-batch-size", "5000",
    ],
}  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interruptible() -> None:
    """Let the trainer see the budget's SIGINT: a shell starts background jobs (``... &``,
    ``nohup``) with SIGINT ignored, Python then never installs its ``KeyboardInterrupt``
    handler, and the trainer would run past its budget."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "official"], default="round1")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted({*MODELS, *OFFICIAL_MODELS}),
        default=None,
        help="default: resflow8 impflow4 (official: impflow4 impflow6 resflow8, one after the other)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="step limit of each model (default 15,000; official 50,000)",
    )
    parser.add_argument(
        "--cpu-minutes",
        type=float,
        default=None,
        help="stop each model after this much CPU time and evaluate its best validated weights",
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=2, help="models trained at the same time")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/checkerboard (official: results/checkerboard-official)",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="only rebuild the table (official: the reports too, from the runs' checkpoints)",
    )
    o = parser.add_argument_group("--preset official (defaults: the official ImpFlow toy script)")
    o.add_argument("--scale", choices=["raw", "standardised"], default="raw")
    o.add_argument(
        "--zero-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="last layer of each network near zero (blocks start near the identity)",
    )
    o.add_argument(
        "--train-set",
        type=int,
        default=0,
        help="size of a fixed training set (0: a fresh batch every step)",
    )
    o.add_argument("--batch-size", type=int, default=5000)
    o.add_argument("--clip-grad", type=float, default=0.0, help="0: no clipping")
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--coeff", type=float, default=0.99)
    o.add_argument("--eval-every", type=int, default=1000)
    o.add_argument(
        "--eval-size",
        type=int,
        default=10_000,
        help="fresh points of each periodic evaluation (paper protocol)",
    )
    o.add_argument(
        "--val-size",
        type=int,
        default=20_000,
        help="fixed validation points (our protocol's model selection)",
    )
    o.add_argument(
        "--test-size", type=int, default=100_000, help="fresh points of our protocol's single test"
    )
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--checkpoint-every", type=int, default=100)
    o.add_argument(
        "--ablation",
        nargs="*",
        default=None,
        metavar="RUN",
        help="run the ablation (all runs, or the RUN keys given) instead of --models",
    )
    o.add_argument("--ablation-steps", type=int, default=1000)
    o.add_argument(
        "--smoke",
        action="store_true",
        help="tiny official run (seconds): [16] networks, 4 steps, batch 64",
    )
    args = parser.parse_args()
    if args.smoke or args.ablation is not None:
        args.preset = "official"
    if args.preset == "official":
        run_official_preset(args)
    else:
        run_trainer_preset(args)


def run_official_preset(args: argparse.Namespace) -> None:
    """``--preset official``, ``--ablation`` and ``--smoke``: runs in this process, one model
    after the other, one thread, resumable (rerun the same command to continue)."""
    torch.set_num_threads(1)
    models = args.models or ["impflow4", "impflow6", "resflow8"]
    bad = [m for m in models if m not in OFFICIAL_MODELS]
    if bad:
        raise SystemExit(f"--models: --preset official runs {sorted(OFFICIAL_MODELS)}, got {bad}")
    out = args.out
    if out is None:
        out = (
            Path(tempfile.mkdtemp(prefix="ckb-smoke-"))
            if args.smoke
            else (HERE / "results" / "checkerboard-official")
        )
    out.mkdir(parents=True, exist_ok=True)
    base = Setting(
        hidden=tuple(args.hidden),
        coeff=args.coeff,
        scale=args.scale,
        zero_init=args.zero_init,
        train_set=args.train_set or None,
        batch_size=args.batch_size,
        clip_grad=args.clip_grad,
        weight_decay=args.weight_decay,
        lr=args.lr,
        steps=args.steps or 50_000,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
    )
    if args.smoke:
        base = replace(
            base,
            hidden=(16,),
            steps=args.steps or 4,
            batch_size=64,
            eval_every=2,
            eval_size=200,
            val_size=200,
            test_size=500,
        )
    if args.ablation is not None:
        family, blocks = OFFICIAL_MODELS[models[0]]
        variants = [(k, t, replace(v, seed=args.seed))
                    for k, t, v in ablation_settings(args.ablation_steps, family, blocks)]  # fmt: skip
        if args.smoke:
            variants = [
                (
                    k,
                    t,
                    replace(
                        s,
                        hidden=base.hidden,
                        steps=base.steps,
                        batch_size=s.batch_size // 100,
                        train_set=s.train_set and 200,
                        eval_every=2,
                        eval_size=200,
                        val_size=200,
                        test_size=500,
                    ),
                )
                for k, t, s in variants
            ]
        name = "ablation" if args.seed == 0 else f"ablation-seed{args.seed}"
        run_ablation(out / name, variants, args.ablation or None)
        return
    for name in models:
        family, blocks = OFFICIAL_MODELS[name]
        if args.table_only:  # reports of the runs as they stand (e.g. while one trains)
            if (out / name / "checkpoint.pt").is_file():
                spec = json.loads((out / name / "setting.json").read_text())
                write_official_report(
                    Setting(**{**spec, "hidden": tuple(spec["hidden"])}), out / name
                )
        else:
            report = train_official(
                replace(base, model=family, blocks=blocks),
                out / name,
                cpu_minutes=args.cpu_minutes,
                checkpoint_every=args.checkpoint_every,
            )
            if report["interrupted"]:
                print(f"{name}: stopped at step {report['steps_done']}; rerun to continue")
                break
    write_official_table(out, models)


def run_trainer_preset(args: argparse.Namespace) -> None:
    """``--preset round1|paper``: one trainer process per model (``implicit-transforms train``)."""
    args.models = args.models or ["resflow8", "impflow4"]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise SystemExit(f"--models: --preset {args.preset} runs {sorted(MODELS)}, got {bad}")
    args.steps = args.steps or 15000
    args.out = args.out or HERE / "results" / "checkerboard"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        common = [
            "--dataset", "checkerboard", "--n-samples", str(args.n_samples), "--steps", str(args.steps),
            "--hidden", *map(str, args.hidden), "--lr", str(args.lr), "--seed", "0",
            "--data-seed", "0", "--no-progress", "--overwrite", *PRESETS[args.preset],
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pending = [(name, MODELS[name]) for name in args.models]
        running: list[tuple[str, subprocess.Popen[bytes], float]] = []
        cpu: dict[str, float] = {}
        while pending or running:
            while pending and len(running) < args.jobs:
                name, flags = pending.pop(0)
                cmd = [sys.executable, "-m", "implicit_transforms", "train", *common, *flags,
                       "--run-dir", str(args.out / name)]  # fmt: skip
                log = (args.out / f"{name}.log").open("wb")
                print("running:", " ".join(cmd[1:]), flush=True)
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_interruptible
                )
                running.append((name, proc, time.time()))
            time.sleep(5)
            for item in list(running):
                name, proc, start = item
                if proc.poll() is None:
                    cpu[name] = _cpu_seconds(proc.pid)
                    if args.cpu_minutes is not None and cpu[name] > 60 * args.cpu_minutes:
                        proc.send_signal(signal.SIGINT)  # the trainer keeps its checkpoints
                        proc.wait()
                    else:
                        continue
                running.remove(item)
                print(f"{name}: exit {proc.returncode} after {time.time() - start:.0f} s, "
                      f"{cpu.get(name, 0) / 60:.1f} CPU-minutes", flush=True)  # fmt: skip
                if args.cpu_minutes is not None:  # (re-)evaluate the best validated weights
                    if not (args.out / name / "best.pt").is_file():
                        sys.exit(f"{name}: no validation finished within the CPU budget")
                    subprocess.run(
                        [sys.executable, "-m", "implicit_transforms", "evaluate",
                         str(args.out / name), "--checkpoint", "best"],
                        check=True, env=env,
                    )  # fmt: skip
                elif proc.returncode != 0:
                    sys.exit(f"{name} failed; see {args.out / (name + '.log')}")
                (args.out / name / "cpu_minutes.txt").write_text(f"{cpu.get(name, 0) / 60:.2f}\n")
    write_table(args.out, args.models)


def write_table(out: Path, models: list[str]) -> None:
    rows = []
    for name in models:
        if not (out / name / "report.json").is_file():
            continue
        r = json.loads((out / name / "report.json").read_text())
        lines = (out / name / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        curve = [(v["step"], round(v["val_bits"], 4)) for v in records if "val_bits" in v]
        cpu_file = out / name / "cpu_minutes.txt"
        cpu_minutes = float(cpu_file.read_text()) if cpu_file.is_file() else None
        rows.append(
            {
                "model": name,
                "test_bits": r["test"]["nll_bits"],
                "test_bits_stderr": r["test"]["nll_bits_stderr"],
                "paper_bits": PAPER_BITS.get(name),
                "parameters": r["parameters"],
                "steps": r.get("steps", max(v["step"] for v in records)),
                "best_step": r["best_step"],
                "train_wall_time_s": r.get("wall_time_s"),
                "cpu_minutes": cpu_minutes,
                "forward_solver_iters": r["solver_iterations"]["forward_mean"],
                "inverse_solver_iters": r["solver_iterations"]["inverse_mean"],
                "reconstruction_error_max": r["reconstruction_error"]["max"],
                "lipschitz_bound": r["lipschitz_bound"],
                "figure": str(Path(name) / "figure.png"),
                "validation_bits_curve": curve,
            }
        )
    (out / "checkerboard.json").write_text(
        json.dumps({"entropy_bits": 5.0, "rows": rows}, indent=2) + "\n"
    )
    fmt = lambda v: "explicit" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        "| model | test bits (± s.e.) | paper | parameters | steps (best) | CPU minutes | mean fwd / inv solver iters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = "n/a" if r["cpu_minutes"] is None else f"{r['cpu_minutes']:.1f}"
        lines.append(
            f"| {r['model']} | {r['test_bits']:.3f} ± {r['test_bits_stderr']:.3f} | "
            f"{'-' if r['paper_bits'] is None else format(r['paper_bits'], '.2f')} | "
            f"{r['parameters']} | {r['steps']} ({r['best_step']}) | {cpu} | "
            f"{fmt(r['forward_solver_iters'])} / {fmt(r['inverse_solver_iters'])} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "checkerboard.md").write_text(table)
    print(table)


# ----------------------------------------------------------------------------------------
# --preset official: the official ImpFlow toy script, run in this process
# ----------------------------------------------------------------------------------------

#: ``--preset official`` models: (family, blocks). The official script runs 6 ImpFlow blocks,
#: the paper's figure says 4; ResFlow-8 is the same script with the residual architecture.
OFFICIAL_MODELS = {
    "impflow4": ("impflow", 4),
    "impflow6": ("impflow", 6),
    "resflow8": ("resflow", 8),
}
PAPER_BITS_OFFICIAL = {"impflow4": 5.05, "impflow6": 5.05, "resflow8": 5.08}
#: Data std of the standardised scale: a uniform law on [-4, 4] has std 8 / sqrt(12).
STANDARDISED_STD = 8 / math.sqrt(12)
_VAL_SEED, _TEST_SEED, _EVAL_SEED, _TRAIN_SEED = 1_001, 2_002, 3_003, 4_004


@dataclass(frozen=True)
class Setting:
    """Every setting of one ``--preset official`` run (defaults: the official toy script).

    Attributes:
        model: ``"impflow"`` or ``"resflow"``.
        blocks: number of blocks.
        hidden: hidden sizes of each sine network.
        coeff: Lipschitz coefficient per layer.
        scale: ``"raw"`` (points on [-4, 4]^2, as the official script) or ``"standardised"``
            (divided by ``STANDARDISED_STD``, as the trainer does).
        zero_init: scale the last layer's weight of every network by 1e-3 (the official
            ``zero_init``: each block starts near the identity).
        train_set: ``None``: a fresh batch every step; else a fixed training set of this size.
        batch_size: training batch size.
        clip_grad: gradient-norm clipping (0: none).
        weight_decay: Adam weight decay (the official optimizer's is a no-op: 0).
        lr: Adam learning rate (constant).
        steps: training steps.
        eval_every: steps between evaluations (both protocols).
        eval_size: fresh points of each of the paper protocol's evaluations.
        val_size: fixed validation points (our protocol's model selection).
        test_size: fresh test points of our protocol's single test.
        seed: seed of the weights and of every data stream.
    """

    model: str = "impflow"
    blocks: int = 4
    hidden: tuple[int, ...] = (128, 128)
    coeff: float = 0.99
    scale: str = "raw"
    zero_init: bool = True
    train_set: int | None = None
    batch_size: int = 5000
    clip_grad: float = 0.0
    weight_decay: float = 0.0
    lr: float = 1e-3
    steps: int = 50_000
    eval_every: int = 1000
    eval_size: int = 10_000
    val_size: int = 20_000
    test_size: int = 100_000
    seed: int = 0


def _points(n: int, seed: int, stream: int) -> Tensor:
    """``n`` checkerboard points on the raw scale, float64, from seed ``(seed, stream)``."""
    from implicit_transforms.data.toy import checkerboard

    return checkerboard(n, torch.Generator().manual_seed(seed * 1_000_003 + stream))


def build_official_flow(s: Setting) -> Flow:
    """The nflows flow of ``s``: the trainer's blocks (exact 2-D log-det, no ActNorm) after
    a fixed rescaling (identity on the raw scale), with the library's ``zero_init`` (each
    network's last initial weight divided by 1000, as the official code's spectral layers)."""
    from implicit_transforms.cli.config import TrainConfig
    from implicit_transforms.cli.models import build_flow

    torch.manual_seed(s.seed)
    cfg = TrainConfig(
        model=s.model,
        blocks=s.blocks,
        hidden=s.hidden,
        coeff=s.coeff,
        activation="sin",
        actnorm=False,
        logdet="exact",
        zero_init=s.zero_init,
        steps=s.steps,
    ).resolved()
    std = 1.0 if s.scale == "raw" else STANDARDISED_STD
    return build_flow(cfg, torch.zeros(2), torch.full((2,), std))


def _nll_bits(flow: Flow, x: Tensor, batch: int = 10_000) -> Tensor:
    """Per-point negative log-likelihood in bits (exact log-det), float64, ``(N,)``."""
    from implicit_transforms.cli.evaluation import log_prob, refine_spectral_norms

    refine_spectral_norms(flow)
    return -log_prob(flow, x.float(), batch).double() / math.log(2)


class _Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint and returns at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train_official(
    s: Setting,
    out: Path,
    *,
    cpu_minutes: float | None = None,
    checkpoint_every: int = 100,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train (or resume) the run of ``s`` in ``out``; return its report (also ``report.json``).

    Files: ``setting.json``, ``metrics.jsonl`` (training bits every ``log_every`` steps; at every
    evaluation the paper protocol's score on fresh points and our validation score),
    ``checkpoint.pt`` (every ``checkpoint_every`` steps, at every evaluation and on SIGINT /
    SIGTERM), ``best.pt`` (best validation), ``report.json`` and ``curves.png``. Rerunning with
    the same setting continues from the checkpoint (a larger ``steps`` extends the run).
    """
    out.mkdir(parents=True, exist_ok=True)
    spec = asdict(s)
    setting_file = out / "setting.json"
    if setting_file.is_file():
        old = json.loads(setting_file.read_text())
        diff = {
            k: (old.get(k), v)
            for k, v in json.loads(json.dumps(spec)).items()
            if k != "steps" and old.get(k) != v
        }
        if diff:
            raise ValueError(
                f"{out} holds a run with other settings (old, new): {diff}; use another --out"
            )
    setting_file.write_text(json.dumps(spec, indent=2) + "\n")
    flow = build_official_flow(s)
    opt = torch.optim.Adam(flow.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    val = _points(s.val_size, s.seed, _VAL_SEED)
    train_set = None if s.train_set is None else _points(s.train_set, s.seed, _TRAIN_SEED)
    fresh = torch.Generator().manual_seed(s.seed * 1_000_003 + _TRAIN_SEED + 1)
    eval_gen = torch.Generator().manual_seed(s.seed * 1_000_003 + _EVAL_SEED)
    state: dict[str, Any] = {
        "step": 0,
        "cpu_s": 0.0,
        "best_val_bits": math.inf,
        "best_step": None,
        "paper_best_bits": math.inf,
        "paper_best_step": None,
    }
    ckpt_file, metrics_file = out / "checkpoint.pt", out / "metrics.jsonl"
    if ckpt_file.is_file():
        ckpt = torch.load(ckpt_file, weights_only=False)
        flow.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        fresh.set_state(ckpt["fresh_rng"])
        eval_gen.set_state(ckpt["eval_rng"])
        state.update(ckpt["state"])
        lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
        keep = [ln for ln in lines if json.loads(ln)["step"] <= state["step"]]
        metrics_file.write_text("".join(ln + "\n" for ln in keep))
        if state["step"] < s.steps:
            print(f"{out}: resuming from step {state['step']}", flush=True)
    else:
        metrics_file.write_text("")

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "model": flow.state_dict(),
                "optimizer": opt.state_dict(),
                "fresh_rng": fresh.get_state(),
                "eval_rng": eval_gen.get_state(),
                "state": state,
            },
            ckpt_file,
        )

    stop = _Stop()
    cpu0 = time.process_time() - state["cpu_s"]
    budget = math.inf if cpu_minutes is None else 60 * cpu_minutes
    window: list[float] = []
    try:
        with metrics_file.open("a") as metrics:
            while state["step"] < s.steps and not stop.requested and state["cpu_s"] < budget:
                step = state["step"]
                if train_set is None:
                    x = _checkerboard_with(s.batch_size, fresh)
                else:
                    from implicit_transforms.cli.training import batch_indices

                    x = train_set[batch_indices(step, len(train_set), s.batch_size, s.seed)]
                flow.train()
                loss = -flow.log_prob(x.float()).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if s.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), s.clip_grad)
                opt.step()
                if not math.isfinite(loss_value := float(loss.detach())):
                    raise RuntimeError(f"{out}: the loss is {loss_value} at step {step + 1}")
                window.append(loss_value / math.log(2))
                state["step"] = done = step + 1
                state["cpu_s"] = time.process_time() - cpu0
                if done % log_every == 0:
                    metrics.write(
                        json.dumps(
                            {
                                "step": done,
                                "train_bits": sum(window) / len(window),
                                "cpu_s": round(state["cpu_s"], 1),
                            }
                        )
                        + "\n"
                    )
                    window = []
                if done % s.eval_every == 0 or done == s.steps:
                    paper = float(_nll_bits(flow, _checkerboard_with(s.eval_size, eval_gen)).mean())
                    val_bits = float(_nll_bits(flow, val).mean())
                    if paper < state["paper_best_bits"]:
                        state["paper_best_bits"], state["paper_best_step"] = paper, done
                    if val_bits < state["best_val_bits"]:
                        state["best_val_bits"], state["best_step"] = val_bits, done
                        _atomic_save({"step": done, "model": flow.state_dict()}, out / "best.pt")
                    state["cpu_s"] = time.process_time() - cpu0
                    metrics.write(
                        json.dumps(
                            {
                                "step": done,
                                "paper_eval_bits": paper,
                                "val_bits": val_bits,
                                "cpu_s": round(state["cpu_s"], 1),
                            }
                        )
                        + "\n"
                    )
                    metrics.flush()
                    print(
                        f"{out.name} step {done}: paper-protocol eval {paper:.4f} (best "
                        f"{state['paper_best_bits']:.4f}), validation {val_bits:.4f}, "
                        f"{state['cpu_s'] / 60:.1f} CPU-min",
                        flush=True,
                    )
                    save_checkpoint()
                elif done % checkpoint_every == 0:
                    metrics.flush()
                    save_checkpoint()
            metrics.flush()
            save_checkpoint()
    finally:
        stop.restore()
    report = write_official_report(s, out, flow)
    report["interrupted"] = stop.requested
    return report


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so an interruption never leaves half a file."""
    tmp = path.with_name(path.stem + ".tmp.pt")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _checkerboard_with(n: int, g: torch.Generator) -> Tensor:
    from implicit_transforms.data.toy import checkerboard

    return checkerboard(n, g)


def write_official_report(s: Setting, out: Path, flow: Flow | None = None) -> dict[str, Any]:
    """``report.json`` and ``curves.png`` of the run in ``out`` as it stands: the paper's
    protocol (best of the periodic evaluations on fresh points) and ours (the weights chosen on
    validation, tested once on ``s.test_size`` fresh points; recomputed only when the chosen
    weights changed)."""
    state = torch.load(out / "checkpoint.pt", weights_only=False)["state"]
    report_file = out / "report.json"
    old = json.loads(report_file.read_text()) if report_file.is_file() else {}
    test = old.get("ours", {}).get("test")
    if state["best_step"] is not None and (
        test is None or test["weights_step"] != state["best_step"]
    ):
        flow = flow if flow is not None else build_official_flow(s)
        flow.load_state_dict(torch.load(out / "best.pt", weights_only=False)["model"])
        bits = _nll_bits(flow, _points(s.test_size, s.seed, _TEST_SEED))
        test = {
            "bits": float(bits.mean()),
            "stderr": float(bits.std() / math.sqrt(len(bits))),
            "points": s.test_size,
            "weights_step": state["best_step"],
        }
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_bits" in r]
    params = sum(p.numel() for p in (flow or build_official_flow(s)).parameters())
    report = {
        "setting": asdict(s),
        "steps_done": state["step"],
        "finished": state["step"] >= s.steps,
        "cpu_minutes": state["cpu_s"] / 60,
        "parameters": params,
        "paper": {
            "best_eval_bits": state["paper_best_bits"],
            "at_step": state["paper_best_step"],
            "evaluations": len(evals),
            "points_each": s.eval_size,
        },
        "ours": {
            "best_val_bits": state["best_val_bits"],
            "best_step": state["best_step"],
            "val_points": s.val_size,
            "test": test,
        },
        "curve": [
            [r["step"], round(r["paper_eval_bits"], 4), round(r["val_bits"], 4), r["cpu_s"]]
            for r in evals
        ],
    }
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    if evals:
        _plot_curves(out, evals, PAPER_BITS_OFFICIAL.get(out.name))
    return report


def _plot_curves(out: Path, evals: list[dict[str, Any]], paper_bits: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in evals]
    ax.plot(
        steps, [r["paper_eval_bits"] for r in evals], ".-", label="fresh points (paper protocol)"
    )
    ax.plot(steps, [r["val_bits"] for r in evals], ".-", label="fixed validation set (ours)")
    ax.axhline(5.0, color="k", lw=0.8, label="entropy 5.00")
    if paper_bits is not None:
        ax.axhline(paper_bits, color="r", ls="--", lw=0.8, label=f"paper {paper_bits:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits")
    ax.set_title(out.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def ablation_settings(
    steps: int, model: str = "impflow", blocks: int = 4
) -> list[tuple[str, str, Setting]]:
    """The ablation's runs ``(key, description, setting)``: our old preset at batch 500, then the
    official script's differences added one at a time (cumulative, data scale first), then two
    single changes of the official setting (standardised data; batch 5000)."""
    old = Setting(
        model=model,
        blocks=blocks,
        scale="standardised",
        zero_init=False,
        train_set=80_000,
        batch_size=500,
        clip_grad=10.0,
        weight_decay=1e-5,
        steps=steps,
        eval_every=min(250, steps),
        eval_size=10_000,
        val_size=10_000,
    )
    raw = replace(old, scale="raw")
    zero = replace(raw, zero_init=True)
    fresh = replace(zero, train_set=None)
    noclip = replace(fresh, clip_grad=0.0)
    official = replace(noclip, weight_decay=0.0)
    return [
        (
            "0-old",
            "old preset: standardised, random init, fixed 80,000 points, clip 10, wd 1e-5",
            old,
        ),
        ("1-raw", "+ raw [-4, 4] scale", raw),
        ("2-zero", "+ last layers near zero", zero),
        ("3-fresh", "+ fresh batch every step", fresh),
        ("4-noclip", "+ no clipping", noclip),
        ("5-official", "+ no weight decay (= official, batch 500)", official),
        ("6-std", "official, batch 500, but standardised", replace(official, scale="standardised")),
        ("7-b5000", "official, batch 5000", replace(official, batch_size=5000)),
    ]


def run_ablation(
    out: Path, variants: list[tuple[str, str, Setting]], only: list[str] | None
) -> None:
    """Train each variant (resumable, one after the other) and write ``ablation.md``."""
    lines = [
        "| run | change | steps | batch | paper protocol: best fresh eval | ours: test bits (± s.e.) | CPU min |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, text, s in variants:
        run_dir = out / key
        if only is None or key in only:
            report = train_official(s, run_dir)
        elif (run_dir / "report.json").is_file():
            report = json.loads((run_dir / "report.json").read_text())
        else:
            continue
        if report.get("interrupted"):
            print(f"{key}: stopped at step {report['steps_done']}; rerun to continue", flush=True)
            break
        test = report["ours"]["test"]
        if test is None:
            continue
        lines.append(
            f"| {key} | {text} | {report['steps_done']:,} | {s.batch_size:,} | "
            f"{report['paper']['best_eval_bits']:.3f} | {test['bits']:.3f} ± {test['stderr']:.3f} | "
            f"{report['cpu_minutes']:.1f} |"
        )
        (out / "ablation.md").write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)


def write_official_table(out: Path, models: list[str]) -> None:
    """``official.md``: both protocols of every official run found in ``out``."""
    lines = [
        "| model | steps | CPU min | paper protocol: best of fresh evals (step) | ours: best val (step) | ours: test bits (± s.e.) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in models:
        f = out / name / "report.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        t = r["ours"]["test"]
        lines.append(
            f"| {name} | {r['steps_done']:,} | {r['cpu_minutes']:.1f} | "
            f"{r['paper']['best_eval_bits']:.3f} ({r['paper']['at_step']}) | "
            f"{r['ours']['best_val_bits']:.3f} ({r['ours']['best_step']}) | "
            f"{t['bits']:.3f} ± {t['stderr']:.3f} | {PAPER_BITS_OFFICIAL[name]:.2f} |"
        )
    (out / "official.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
