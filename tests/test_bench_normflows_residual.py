"""``benchmarks/normflows_residual.py`` runs in its smoke mode (so the script cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("normflows")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "normflows_residual.py"


def test_smoke_run_prints_every_row() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert sum("weights" in r for r in rows) == 4  # 2 libraries x 2 weightings
    for label in ("training step", "samples", "round-trip error", "Lipschitz bound"):
        assert any(label in r for r in rows), label
    assert "nan" not in out.stdout.lower()
