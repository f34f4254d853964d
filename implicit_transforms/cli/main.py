"""``implicit-transforms``: train, evaluate and sample flows from the command line.

Examples::

    implicit-transforms train                          # ImpFlow on the checkerboard
    implicit-transforms train --model resflow --blocks 8 --dataset moons
    implicit-transforms train --dataset my_data.csv --steps 5000
    implicit-transforms train --resume runs/checkerboard-impflow-... --steps 4000
    implicit-transforms evaluate runs/checkerboard-impflow-...
    implicit-transforms sample runs/checkerboard-impflow-... -n 1000 --output x.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from implicit_transforms.cli.config import TrainConfig, add_config_arguments, config_from_args
from implicit_transforms.cli.data import TOY_DATASETS
from implicit_transforms.cli.evaluation import SolveLog, sample
from implicit_transforms.cli.report import load_weights, write_report
from implicit_transforms.cli.rundir import RunDir
from implicit_transforms.cli.session import Session
from implicit_transforms.cli.training import TrainingStopped, train
from implicit_transforms.errors import ConvergenceError

__all__ = ["build_parser", "main"]

PROG = "implicit-transforms"


class _UsageError(ValueError):
    """Wrong combination of flags."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``train``, ``evaluate`` and ``sample`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train implicit and residual normalizing flows (ImpFlow, Residual Flows, "
        "i-ResNet) on 2-D toy densities or your own vectors.",
        epilog=f"Built-in data sets: {', '.join(TOY_DATASETS)}. "
        f"Run `{PROG} <command> --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p_train = sub.add_parser(
        "train",
        help="train a flow and write a run directory",
        description="Train a flow; writes config.json, metrics.jsonl, checkpoint.pt, best.pt "
        "(chosen on validation), report.json (test metrics) and figure.png into the run "
        "directory.",
    )
    p_train.add_argument(
        "--run-dir", type=Path, help="output directory (default: runs/<data>-<model>-<time>)"
    )
    p_train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                         help="continue a run from its checkpoint.pt (only --steps, --device may change)")  # fmt: skip
    p_train.add_argument("--overwrite", action="store_true", help="reuse an existing --run-dir")
    add_config_arguments(p_train)
    _common(p_train)

    p_eval = sub.add_parser(
        "evaluate",
        help="recompute a run's test report and figure",
        description="Evaluate a run's weights on its test split (exact log-det for D <= 64) and "
        "rewrite report.json and figure.png.",
    )
    p_eval.add_argument("run_dir", type=Path, help="a directory written by `train`")
    p_eval.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best.pt (chosen on validation; default) or the latest checkpoint.pt")  # fmt: skip
    p_eval.add_argument("--device", help="override the run's device")
    _common(p_eval)

    p_sample = sub.add_parser(
        "sample",
        help="draw samples from a trained flow",
        description="Draw samples (data units) from a run's weights into a .npy or .csv file.",
    )
    p_sample.add_argument("run_dir", type=Path, help="a directory written by `train`")
    p_sample.add_argument(
        "-n", "--num-samples", type=int, default=1000, help="how many (default: 1000)"
    )
    p_sample.add_argument(
        "--output", type=Path, help="a .npy or .csv file (default: RUN_DIR/samples.npy)"
    )
    p_sample.add_argument("--seed", type=int, default=0, help="seed of the base noise (default: 0)")
    p_sample.add_argument("--checkpoint", choices=("best", "last"), default="best",
                          help="which weights (default: best)")  # fmt: skip
    p_sample.add_argument("--device", help="override the run's device")
    _common(p_sample)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 training or solver failure,
    2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _sample(args)
    except TrainingStopped as err:
        if args.debug:
            raise
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except ConvergenceError as err:
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{PROG}: error: a solver did not converge: {first}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, OSError) as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with `train --resume <run dir>`", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run = RunDir(args.resume)
        run.require(run.config, run.checkpoint)
        given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None and f.name not in ("steps", "device")]  # fmt: skip
        if given or args.run_dir is not None:
            extra = given + (["--run-dir"] if args.run_dir is not None else [])
            raise _UsageError(
                f"--resume continues the stored config; only --steps and --device may be given, "
                f"got {' '.join(extra)}"
            )
        stored = TrainConfig.load(run.config)
        cfg = dataclasses.replace(
            stored, steps=args.steps if args.steps is not None else stored.steps
        )
    else:
        cfg = config_from_args(args)
    cfg = cfg.resolved()
    if args.resume is None:
        run = RunDir(args.run_dir or Path("runs") / _default_name(cfg))
        if run.root.exists() and any(run.root.iterdir()):
            if not args.overwrite:
                raise _UsageError(
                    f"run directory {str(run.root)!r} is not empty; pass --overwrite, another "
                    "--run-dir, or --resume to continue it"
                )
            shutil.rmtree(run.root)
        run.root.mkdir(parents=True, exist_ok=True)
    session = Session.create(cfg, device=args.device)
    run.config.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    print(
        f"training {cfg.model} ({cfg.blocks} blocks, {session.num_parameters} parameters) on "
        f"{cfg.dataset} (D={session.splits.features}, {session.splits.train.shape[0]} train rows) "
        f"for {cfg.steps} steps on {session.device}; run directory: {run.root}"
    )
    summary = train(session, run, resume=args.resume is not None, progress=args.progress)
    best = load_weights(session, run, "best")
    report = write_report(
        session,
        run,
        extra={
            "best_step": best["step"],
            "best_val_nll": best["val_nll"],
            "steps": summary["steps"],
            "wall_time_s": summary["wall_time_s"],
            "checkpoint": "best",
        },
    )
    _print_summary(report, run)
    return 0


def _default_name(cfg: TrainConfig) -> str:
    stem = Path(cfg.dataset).stem if cfg.dataset.endswith((".npy", ".csv")) else cfg.dataset
    return f"{stem}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _load_run(args: argparse.Namespace) -> tuple[Session, RunDir, dict[str, Any]]:
    run = RunDir(args.run_dir)
    run.require(run.config)
    cfg = TrainConfig.load(run.config).resolved()
    session = Session.create(cfg, device=args.device)
    info = load_weights(session, run, args.checkpoint)
    return session, run, info


def _evaluate(args: argparse.Namespace) -> int:
    session, run, info = _load_run(args)
    previous = json.loads(run.report.read_text()) if run.report.is_file() else {}
    keep = {k: previous[k] for k in ("steps", "wall_time_s") if k in previous}
    report = write_report(
        session,
        run,
        extra={
            **keep,
            "best_step": info["step"],
            "best_val_nll": info["val_nll"],
            "checkpoint": args.checkpoint,
        },
    )
    _print_summary(report, run)
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise _UsageError(f"-n/--num-samples must be a positive integer, got {args.num_samples}")
    out = args.output or RunDir(args.run_dir).samples
    if out.suffix.lower() not in (".npy", ".csv"):
        raise _UsageError(f"--output must end in .npy or .csv, got {str(out)!r}")
    session, _, _ = _load_run(args)
    gen = torch.Generator(device=session.device).manual_seed(args.seed)
    log = SolveLog()
    x = sample(session.flow, args.num_samples, session.splits.features,
               session.cfg.eval_batch_size, gen, log)  # fmt: skip
    arr = x.double().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, arr)
    else:
        np.savetxt(out, arr, delimiter=",", fmt="%.10g")
    iters = "" if log.mean is None else f" (mean {log.mean:.1f} solver iterations per block)"
    print(f"wrote {args.num_samples} samples to {out}{iters}")
    return 0


def _print_summary(report: dict[str, Any], run: RunDir) -> None:
    t = report["test"]
    entropy = report.get("data_entropy_bits")
    ref = f" (data entropy {entropy:.2f} bits)" if entropy is not None else ""
    print(f"test NLL: {t['nll_bits']:.3f} bits = {t['nll_nats']:.3f} nats per sample{ref}")
    rec, its = report["reconstruction_error"], report["solver_iterations"]
    print(
        f"inverse reconstruction error: max {rec['max']:.2e}; mean solver iterations per block: "
        f"forward {_fmt(its['forward_mean'])}, inverse {_fmt(its['inverse_mean'])}"
    )
    print(f"report: {run.report}")
    if report.get("figure"):
        print(f"figure: {report['figure']}")


def _fmt(v: float | None) -> str:
    return "none (explicit)" if v is None else f"{v:.1f}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
