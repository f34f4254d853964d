"""Smoke tests of benchmarks/checkerboard.py's ``--preset official`` (tiny runs, seconds): the
command runs, both protocols are reported, an interrupted run continues where it stopped, a
changed setting is refused, and the blocks start near the identity."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "checkerboard.py"
_spec = importlib.util.spec_from_file_location("checkerboard_benchmark", SCRIPT)
assert _spec is not None and _spec.loader is not None
ckb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ckb  # dataclasses look their module up while the class is built
_spec.loader.exec_module(ckb)

TINY = ckb.Setting(hidden=(8,), blocks=2, steps=4, batch_size=32, eval_every=2, eval_size=100,
                   val_size=100, test_size=200)  # fmt: skip


def test_smoke_command_reports_both_protocols(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--models", "impflow4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "impflow4" / "report.json").read_text())
    assert report["finished"] and report["steps_done"] == 4
    assert [row[0] for row in report["curve"]] == [2, 4]
    # paper protocol: the best of the periodic evaluations on fresh points
    best = min(row[1] for row in report["curve"])
    assert report["paper"]["best_eval_bits"] == pytest.approx(best, abs=1e-4)
    # ours: the weights of the best validation, tested once on fresh points
    best = min(row[2] for row in report["curve"])
    assert report["ours"]["best_val_bits"] == pytest.approx(best, abs=1e-4)
    assert report["ours"]["test"]["weights_step"] == report["ours"]["best_step"]
    assert math.isfinite(report["ours"]["test"]["bits"])
    assert "impflow4" in (tmp_path / "official.md").read_text()
    # --table-only rebuilds the report from the checkpoint (as while a long run trains)
    (tmp_path / "impflow4" / "report.json").unlink()
    proc = subprocess.run([*cmd, "--table-only"], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rebuilt = json.loads((tmp_path / "impflow4" / "report.json").read_text())
    assert rebuilt["ours"]["test"] == report["ours"]["test"]


def test_interrupted_run_continues_where_it_stopped(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    straight = ckb.train_official(TINY, tmp_path / "straight")
    ckb.train_official(replace(TINY, steps=2), tmp_path / "resumed")
    resumed = ckb.train_official(TINY, tmp_path / "resumed")  # the same command, more steps
    assert resumed["steps_done"] == 4
    # the same scores at every evaluation (the CPU seconds, the last entry, differ)
    assert [row[:3] for row in resumed["curve"]] == [row[:3] for row in straight["curve"]]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_changed_setting_is_refused(tmp_path: Path) -> None:
    ckb.train_official(replace(TINY, steps=2), tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        ckb.train_official(replace(TINY, steps=2, scale="standardised"), tmp_path)


def test_zero_init_blocks_start_as_translations() -> None:
    # As the official code: the last layer's weight divided by 1000, its bias kept, so each
    # block starts as x -> x + (small constant): unit Jacobian, log-det 0.
    x = torch.rand(64, 2) * 8 - 4
    for zero_init, near in ((True, True), (False, False)):
        flow = ckb.build_official_flow(replace(TINY, zero_init=zero_init)).eval()
        with torch.no_grad():
            z, logdet = flow._transform(x)
        shift = z - x
        is_translation = bool((shift - shift.mean(0)).abs().max() < 0.02)
        assert is_translation == near and bool(logdet.abs().max() < 0.02) == near


def test_ablation_table(tmp_path: Path) -> None:
    variants = [
        (key, text, replace(s, hidden=(8,), steps=2, batch_size=32, train_set=s.train_set and 64,
                            eval_every=2, eval_size=100, val_size=100, test_size=200))
        for key, text, s in ckb.ablation_settings(2)[:2]
    ]  # fmt: skip
    ckb.run_ablation(tmp_path, variants, None)
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| 0-old", "| 1-raw"]
