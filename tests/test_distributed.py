"""Distributed data parallel training on the CPU (gloo), through the real entry point:
``torchrun --nproc_per_node 2 -m implicit_transforms train``.

Two processes sharing each global batch must follow the one-process trajectory: with the exact
log-det (deterministic) and float64, the parameters agree to 1e-6 after a few steps, before
and after a resume. Inside the run, every validation checks that parameters and buffers
(ActNorm, spectral-norm state) are equal on both ranks, or stops the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nflows")
pytest.importorskip("sklearn")

COMMON = [
    "--dataset", "digits", "--model", "impflow", "--logdet", "exact", "--dtype", "float64",
    "--blocks", "1", "--hidden", "4", "--batch-size", "16", "--eval-every", "2",
    "--eval-batch-size", "400", "--schedule", "constant", "--warmup", "0", "--seed", "0",
    "--no-progress",
]  # fmt: skip


def _run(args: list[str], processes: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    launcher = [] if processes == 1 else [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
    ]  # fmt: skip
    cmd = [sys.executable, *launcher, "-m", "implicit_transforms", "train", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _params(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    return ckpt["model"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        for k in a
        if a[k].is_floating_point()
    )


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_processes_match_one_process_and_resume(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run([*COMMON, "--steps", "2", "--run-dir", str(one)], 1)
    res = _run([*COMMON, "--steps", "2", "--run-dir", str(two)], 2)
    assert res.stdout.count("training impflow") == 1  # rank 0 alone prints
    assert "in 2 processes" in res.stdout
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    report = json.loads((two / "report.json").read_text())
    assert report["processes"] == 2 and report["steps"] == 2
    assert _max_difference(_params(one), _params(two)) < 1e-6
    assert _losses(one) == pytest.approx(_losses(two), abs=1e-9)
    # resume both to step 4: still the same trajectory
    at_two = _params(one)
    for run, procs in ((one, 1), (two, 2)):
        _run(["--resume", str(run), "--steps", "4", "--no-progress"], procs)
    assert torch.load(two / "checkpoint.pt", weights_only=False)["step"] == 4
    assert _max_difference(_params(one), _params(two)) < 1e-6
    assert _losses(one) == pytest.approx(_losses(two), abs=1e-9) and len(_losses(two)) == 4
    assert _max_difference(at_two, _params(one)) > 1e-4  # it trained on after the resume


def test_global_batch_must_split_evenly(tmp_path: Path) -> None:
    from implicit_transforms.cli.config import TrainConfig
    from implicit_transforms.cli.distributed import World
    from implicit_transforms.cli.rundir import RunDir
    from implicit_transforms.cli.session import Session
    from implicit_transforms.cli.training import train

    cfg = TrainConfig(dataset="digits", blocks=1, hidden=(4,), batch_size=15, steps=1)
    session = Session.create(cfg, device="cpu", world=World(rank=1, size=2))
    with pytest.raises(
        ValueError,
        match=r"--batch-size 15 \(the global batch\) must be divisible by the 2 processes",
    ):
        train(session, RunDir(tmp_path), progress=False)
