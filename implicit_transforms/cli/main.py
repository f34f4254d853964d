"""``implicit-transforms``: train, evaluate and sample flows from the command line.

Examples::

    implicit-transforms train                          # ImpFlow on the checkerboard
    implicit-transforms train --model resflow --blocks 8 --dataset moons
    implicit-transforms train --dataset my_data.csv --steps 5000
    implicit-transforms train --resume runs/checkerboard-impflow-... --steps 4000
    implicit-transforms evaluate runs/checkerboard-impflow-...
    implicit-transforms sample runs/checkerboard-impflow-... -n 1000 --output x.csv
    implicit-transforms score runs/checkerboard-impflow-... --input x.csv --output logp.csv
    implicit-transforms train --dataset digits --model impflow       # an image flow
    implicit-transforms sample runs/digits-impflow-... -n 64 --output grid.png
    torchrun --nproc_per_node 2 -m implicit_transforms train --dataset mnist --data-root DATA
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

from implicit_transforms.blocks import EXACT_LOGDET_MAX_DIM
from implicit_transforms.cli.config import TrainConfig, add_config_arguments, config_from_args
from implicit_transforms.cli.data import TOY_DATASETS, load_array
from implicit_transforms.cli.distributed import World, setup, teardown
from implicit_transforms.cli.evaluation import SolveLog, sample
from implicit_transforms.cli.figures import save_image_grid
from implicit_transforms.cli.models import block_spec
from implicit_transforms.cli.report import load_weights, write_report
from implicit_transforms.cli.rundir import RunDir, json_text
from implicit_transforms.cli.session import Session
from implicit_transforms.cli.training import TrainingStopped, checkpoint_step, train
from implicit_transforms.data import REAL_DATASETS
from implicit_transforms.errors import ConvergenceError
from implicit_transforms.images.data import IMAGE_DATASETS
from implicit_transforms.recipes import BlockSpec

__all__ = ["build_parser", "main"]

PROG = "implicit-transforms"


class _UsageError(ValueError):
    """Wrong combination of flags."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``train``, ``evaluate``, ``sample`` and ``score``
    subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train implicit and residual normalizing flows (ImpFlow, Residual Flows, "
        "i-ResNet) on 2-D toy densities, your own vectors, or images.",
        epilog=f"Built-in data sets: {', '.join(TOY_DATASETS)}; images: {', '.join(IMAGE_DATASETS)}; "
        f"real vectors: {', '.join(REAL_DATASETS)}. "
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
    p_train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its checkpoint.pt up to --steps in total (default: the run's "
        "own --steps); --steps must exceed the steps already done, so `--steps 30` on a run at "
        "step 10 trains 20 more; only --steps and --device may be given",
    )
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
        description="Draw samples (data units) from a run's weights into a .npy or .csv file; "
        "image runs write pixels to .npy or a grid to .png.",
    )
    p_sample.add_argument("run_dir", type=Path, help="a directory written by `train`")
    p_sample.add_argument(
        "-n", "--num-samples", type=int, default=1000, help="how many (default: 1000)"
    )
    p_sample.add_argument(
        "--output",
        type=Path,
        help="a .npy or .csv file, or .png for images (default: RUN_DIR/samples.npy)",
    )
    p_sample.add_argument("--seed", type=int, default=0, help="seed of the base noise (default: 0)")
    p_sample.add_argument("--checkpoint", choices=("best", "last"), default="best",
                          help="which weights (default: best)")  # fmt: skip
    p_sample.add_argument("--device", help="override the run's device")
    _common(p_sample)

    p_score = sub.add_parser(
        "score",
        help="log-density of new data under a trained flow",
        description="Write log p(x) (nats, in the units of the data: the same numbers as "
        "implicit_transforms.load_run(RUN_DIR).log_prob) of every row of a .npy or .csv file "
        "(a header line allowed) into a .npy or .csv file, one value per row.",
    )
    p_score.add_argument("run_dir", type=Path, help="a directory written by `train`")
    p_score.add_argument("--input", type=Path, required=True, help="a .npy or .csv file (N, D)")
    p_score.add_argument("--output", type=Path, required=True, help="a .npy or .csv file (N,)")
    p_score.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="which weights (default: best)")  # fmt: skip
    p_score.add_argument("--device", default="cpu", help="where to evaluate (default: cpu)")
    _common(p_score)
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
        if args.command == "score":
            return _score(args)
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
        done = checkpoint_step(run.checkpoint)
        _check_resume_steps(run, stored.steps, args.steps, done)
        if args.steps is not None and stored.warmup is not None and stored.warmup > args.steps:
            raise _UsageError(
                f"run {str(run.root)!r} warms up for {stored.warmup} steps (its --warmup), longer "
                f"than --steps {args.steps}; resume with --steps >= {stored.warmup}"
            )
        cfg = dataclasses.replace(
            stored, steps=args.steps if args.steps is not None else stored.steps
        )
    else:
        cfg, done = config_from_args(args), 0
    cfg = cfg.resolved()
    world = setup(args.device or cfg.device)
    try:
        return _train_in(args, cfg, world, None if args.resume is None else run, done)
    finally:
        teardown(world)


def _check_resume_steps(run: RunDir, stored: int, asked: int | None, done: int) -> None:
    """``--steps`` is the total to reach: a resume must have steps left to train."""
    if asked is None and stored <= done:
        raise _UsageError(
            f"run {str(run.root)!r} has done all its {stored} steps; pass --steps N with "
            f"N > {done} (the total, counting the steps done) to train further"
        )
    if asked is not None and asked <= done:
        raise _UsageError(
            f"--steps is the total number of steps and run {str(run.root)!r} is already at step "
            f"{done}, so --steps {asked} leaves nothing to train; pass --steps N with N > {done} "
            f"(--steps {done + asked} trains {asked} more)"
        )


def _train_in(
    args: argparse.Namespace, cfg: TrainConfig, world: World, resumed: RunDir | None, done: int
) -> int:
    if resumed is None:
        # One name for every process (the default contains the time): rank 0's.
        run = RunDir(world.broadcast(args.run_dir or Path("runs") / _default_name(cfg)))
        if world.main:
            if run.root.exists() and any(run.root.iterdir()):
                if not args.overwrite:
                    raise _UsageError(
                        f"run directory {str(run.root)!r} is not empty; pass --overwrite, "
                        "another --run-dir, or --resume to continue it"
                    )
                shutil.rmtree(run.root)
            run.root.mkdir(parents=True, exist_ok=True)
        world.barrier()
    else:
        run = resumed
    session = Session.create(cfg, device=args.device, world=world)
    if resumed is not None:
        _check_block_spec(run, session)
    if world.main:
        run.config.write_text(json_text({**cfg.to_json(), "block_spec": _spec_of(session)}))
        procs = f" in {world.size} processes" if world.distributed else ""
        span = (
            f"from step {done} to {cfg.steps} ({cfg.steps - done} more steps)"
            if done
            else f"for {cfg.steps} steps"
        )
        print(
            f"training {_describe_model(session)}, {session.num_parameters} parameters, on "
            f"{_describe_data(session)} {span} on {session.device}{procs}; run "
            f"directory: {run.root}"
        )
    summary = train(session, run, resume=resumed is not None, progress=args.progress)
    if not world.main:
        return 0
    best = load_weights(session, run, "best")
    report = write_report(
        session,
        run,
        extra={
            "best_step": best["step"],
            "best_val_nll": best["val_nll"],
            "steps": summary["steps"],
            "wall_time_s": summary["wall_time_s"],
            "processes": world.size,
            "checkpoint": "best",
        },
    )
    _print_summary(report, run)
    return 0


def _describe_model(session: Session) -> str:
    cfg = session.cfg
    dense = ", i-DenseNet networks" if cfg.network == "densenet" else ""
    if session.is_image:
        return (
            f"{cfg.model} ({cfg.scales} scales x {cfg.blocks} blocks, {cfg.hidden[0]} "
            f"channels{dense})"
        )
    return f"{cfg.model} ({cfg.blocks} blocks{dense})"


def _describe_data(session: Session) -> str:
    cfg, train_rows = session.cfg, len(session.split("train"))
    if session.images is not None:
        c, h, w = session.images.shape
        return (
            f"{cfg.dataset} ({c}x{h}x{w} images, {session.images.levels} levels, {train_rows} "
            "train images)"
        )
    return f"{cfg.dataset} (D={session.features}, {train_rows} train rows)"


def _default_name(cfg: TrainConfig) -> str:
    stem = Path(cfg.dataset).stem if cfg.dataset.endswith((".npy", ".csv")) else cfg.dataset
    return f"{stem}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _spec_of(session: Session) -> dict[str, Any] | None:
    """The JSON spec of the blocks a vector session built (``None`` for images and
    coupling-only models)."""
    if session.splits is None:
        return None
    spec = block_spec(session.cfg, session.splits.features)
    return None if spec is None else spec.to_dict()


def _check_block_spec(run: RunDir, session: Session) -> None:
    """Refuse to load a run whose stored block spec differs from what its settings build now
    (a library default changed since it was trained): the weights would meet other solvers or
    estimators than they were trained with."""
    try:
        stored = json.loads(run.config.read_text()).get("block_spec")
    except (OSError, json.JSONDecodeError):  # pragma: no cover - TrainConfig.load read it
        return
    now = _spec_of(session)
    if stored is not None:
        # A spec written before a field existed reads as that field's default (what the run
        # was built with): compare the specs as the spec class reads them.
        try:
            stored = json.loads(json_text(BlockSpec.from_dict(stored).to_dict()))
        except (TypeError, ValueError, KeyError):
            pass  # not readable now: compared as written, which reports what changed
    if stored is not None and now is not None and stored != json.loads(json_text(now)):
        changed = sorted(k for k in now if stored.get(k) != json.loads(json_text(now)).get(k))
        raise _UsageError(
            f"run {str(run.root)!r} was trained with blocks {json.dumps(stored)}, but its settings "
            f"now build different ones (changed: {', '.join(changed)}): the library's defaults "
            "changed since; use the version it was trained with"
        )


def _load_run(args: argparse.Namespace) -> tuple[Session, RunDir, dict[str, Any]]:
    run = RunDir(args.run_dir)
    run.require(run.config)
    stored = TrainConfig.load(run.config)
    if stored.warmup is not None and stored.warmup > stored.steps:
        # Written before a warm-up longer than the run was refused; evaluating and sampling do
        # not depend on the schedule.
        stored = dataclasses.replace(stored, warmup=stored.steps)
    cfg = stored.resolved()
    session = Session.create(cfg, device=args.device)
    _check_block_spec(run, session)
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
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".csv", ".png"):
        raise _UsageError(f"--output must end in .npy, .csv or .png (images), got {str(out)!r}")
    session, _, _ = _load_run(args)
    if session.is_image and suffix == ".csv":
        raise _UsageError("image samples go to a .npy file (pixels) or a .png grid, not .csv")
    if not session.is_image and suffix == ".png":
        raise _UsageError("--output .png is for image models; use .npy or .csv")
    gen = torch.Generator(device=session.device).manual_seed(args.seed)
    log = SolveLog()
    x = sample(session.flow, args.num_samples, session.features,
               session.cfg.eval_batch_size, gen, log)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    what = "samples"
    if session.images is not None:
        levels = session.images.levels
        x01 = x.double().clamp(0, 1).cpu()
        if suffix == ".png":
            save_image_grid(out, x01)
            what = "samples as a PNG grid"
        else:  # quantised back to pixels, as the data set stores them
            pixels = torch.floor(x01 * levels).clamp(0, levels - 1).to(torch.uint8)
            np.save(out, pixels.numpy())
            what = f"samples (uint8 pixels 0..{levels - 1}, shape (n, C, H, W))"
    else:
        arr = x.double().cpu().numpy()
        if suffix == ".npy":
            np.save(out, arr)
        else:
            np.savetxt(out, arr, delimiter=",", fmt="%.10g")
    iters = "" if log.mean is None else f" (mean {log.mean:.1f} solver iterations per block)"
    print(f"wrote {args.num_samples} {what} to {out}{iters}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from implicit_transforms.cli.load import load_run, run_config, score_rows

    out = args.output
    if out.suffix.lower() not in (".npy", ".csv"):
        raise _UsageError(f"--output must end in .npy or .csv, got {str(out)!r}")
    if run_config(args.run_dir).is_image:
        raise _UsageError("score is for vector runs; image runs report bits/dim (`evaluate`)")
    x = load_array(args.input)
    flow = load_run(args.run_dir, args.checkpoint, device=args.device)
    logp = score_rows(flow, x).double().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, logp)
    else:
        np.savetxt(out, logp, fmt="%.10g", header="log_prob", comments="")
    print(f"wrote {len(logp)} log-densities (nats, data units) to {out}")
    return 0


def _print_summary(report: dict[str, Any], run: RunDir) -> None:
    t = report["test"]
    if "bits_per_dim" in t:
        print(
            f"test: {_num(t['bits_per_dim'], '.4f')} ± {_num(t['bits_per_dim_stderr'], '.4f')} "
            f"bits/dim ({report['levels']} grey levels, {report['n_test']} images, {t['logdet']} "
            "log-det)"
        )
    else:
        entropy = report.get("data_entropy_bits")
        ref = f" (data entropy {entropy:.2f} bits)" if entropy is not None else ""
        print(
            f"test NLL: {_num(t['nll_bits'], '.3f')} bits = {_num(t['nll_nats'], '.3f')} nats "
            f"per sample{ref}"
        )
        if not t["nll_exact"]:
            print(
                f"note: the test NLL is not exact, its log-det is a {t['logdet']} (exact up to "
                f"D = {EXACT_LOGDET_MAX_DIM}; train with --logdet exact for an exact one)"
            )
    rec, its = report["reconstruction_error"], report["solver_iterations"]
    print(
        f"inverse reconstruction error: max {rec['max']:.2e}; mean solver iterations per block: "
        f"forward {_fmt(its['forward_mean'])}, inverse {_fmt(its['inverse_mean'])}; certified "
        f"Lipschitz bound {_fmt3(report['lipschitz_bound'])}"
    )
    print(f"report: {run.report}")
    if report.get("figure"):
        print(f"figure: {report['figure']}")


def _num(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _fmt3(v: float | None) -> str:
    return "none" if v is None else f"{v:.3f}"


def _fmt(v: float | None) -> str:
    return "none (explicit)" if v is None else f"{v:.1f}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
