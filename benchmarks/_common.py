"""What every benchmark script shares: one timing harness, one parameter counter, an
environment stamp, the ``--out`` / ``--smoke`` options and the result writers.

The scripts import it as ``from _common import ...`` (Python puts the script's folder first
on ``sys.path``). It imports nothing of ``implicit_transforms``, so that ``trust.py --repo``
and ``widths.py --compare`` can still measure another checkout of the library.

Timing: medians of this process's CPU time (``time.process_time``), one thread, the
callables run round-robin (A, B, C, A, B, C, ...) so that load from other jobs on a shared
machine hits them alike; read the ratios of callables measured in one call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS",
    "Timed",
    "count_parameters",
    "environment",
    "interleaved",
    "markdown_table",
    "median_time",
    "one_thread",
    "output_folder",
    "parser",
    "write_json",
    "write_markdown",
]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
"""The committed results; ``--smoke`` never writes here."""


# -- timing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timed:
    """A callable to time, with untimed work right before and after each timed call.

    Attributes:
        fn: the work that is timed.
        before: untimed, run before every call of ``fn`` (warm-up calls included), e.g.
            emptying Pyro's parameter store or switching a policy on.
        after: untimed, run after every call of ``fn``, e.g. switching the policy back.
    """

    fn: Callable[[], Any]
    before: Callable[[], Any] | None = None
    after: Callable[[], Any] | None = None

    def run(self, clock: Callable[[], float]) -> float:
        """One call of ``fn`` between ``before`` and ``after``; returns the time of ``fn``."""
        if self.before is not None:
            self.before()
        start = clock()
        self.fn()
        elapsed = clock() - start
        if self.after is not None:
            self.after()
        return elapsed


def interleaved(
    fns: Mapping[str, Callable[[], Any] | Timed],
    repeats: int,
    warmup: int = 3,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, float]:
    """Median seconds of each callable, run round-robin ``repeats`` times after ``warmup`` rounds.

    CPU time of this (single-threaded) process by default, not wall time: on a shared machine
    other processes' time slices do not count against a measurement.

    Args:
        fns: the callables by name (plain callables or :class:`Timed`).
        repeats: timed rounds (at least 1).
        warmup: untimed rounds first (first allocations, spectral-norm estimates).
        clock: the clock (``time.process_time``; ``time.perf_counter`` for wall time).

    Returns:
        ``{name: median seconds}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    timed = {k: f if isinstance(f, Timed) else Timed(f) for k, f in fns.items()}
    for _ in range(warmup):
        for t in timed.values():
            t.run(clock)
    times: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(repeats):
        for name, t in timed.items():
            times[name].append(t.run(clock))
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(
    fn: Callable[[], Any] | Timed,
    repeats: int,
    warmup: int = 3,
    clock: Callable[[], float] = time.process_time,
) -> float:
    """Median seconds of one callable (:func:`interleaved` with one entry)."""
    return interleaved({"fn": fn}, repeats, warmup, clock)["fn"]


def one_thread() -> None:
    """Every benchmark measures on one thread (the numbers in ``benchmarks/README.md``)."""
    torch.set_num_threads(1)


# -- models --------------------------------------------------------------------------------------
def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those that require a gradient if
    ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# -- environment stamp ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment(**extra: Any) -> dict[str, Any]:
    """Where and when a result was measured: written with every benchmark's results.

    Keys: ``torch``, ``python``, ``threads`` (torch's intra-op threads), ``omp_num_threads``,
    ``cpu``, ``cpus``, ``date`` (UTC, ISO 8601), ``git_commit`` (``-dirty`` when tracked files
    differ from it), ``command``, and ``extra`` (e.g. another library's version).
    """
    import sys

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        **extra,
    }


def stamp_line(env: Mapping[str, Any]) -> str:
    """The environment in one line (the head of every Markdown result)."""
    return (
        f"torch {env['torch']}, {env['threads']} thread(s), {env['cpu']}, {env['date']}, "
        f"commit {env['git_commit'] or 'unknown'}"
    )


# -- options and writers -------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--out`` and ``--smoke``."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the results (default: benchmarks/results/...; with --smoke a new "
        "temporary folder)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings that run in seconds (the test suite); never writes to "
        "benchmarks/results",
    )
    return p


def output_folder(args: argparse.Namespace, default: Path, name: str) -> Path:
    """The folder results go to: ``--out``, else ``default``; with ``--smoke`` a temporary
    folder unless ``--out`` is given, and never one inside ``benchmarks/results``."""
    if args.out is not None:
        out = Path(args.out)
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix=f"{name}-smoke-"))
    else:
        out = default
    if args.smoke and out.resolve().is_relative_to(RESULTS):
        raise ValueError(
            f"--out must be outside {RESULTS} with --smoke (smoke numbers are not results), "
            f"got {out}"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (no trailing newline).

    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Mapping[str, Any], env: Mapping[str, Any]) -> Path:
    """``data`` with the environment stamp under ``"environment"``, as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "environment": dict(env)}, indent=1, default=str) + "\n")
    return path


def write_markdown(path: Path, text: str, env: Mapping[str, Any]) -> Path:
    """``text`` (e.g. a :func:`markdown_table`) under a one-line environment stamp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{stamp_line(env)}\n\n{text.rstrip()}\n")
    return path
