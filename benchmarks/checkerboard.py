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
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    parser.add_argument("--preset", choices=sorted(PRESETS), default="round1")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=["resflow8", "impflow4"]
    )
    parser.add_argument("--steps", type=int, default=15000, help="step limit of each model")
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
    parser.add_argument("--out", type=Path, default=HERE / "results" / "checkerboard")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
