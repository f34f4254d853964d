"""Every benchmark script runs in its smoke mode, so that none can rot unnoticed.

Each script runs in a fresh process (as a user runs it) with ``--smoke --out TMP``, from the
repository root, on one thread; the test checks that it exits cleanly, writes its results
with the environment stamp into ``TMP`` and leaves the committed ``benchmarks/results``
alone. ``benchmarks/checkerboard.py`` is checked by its own owner's test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load_common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_common", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


common = _load_common()

SPEED_SECTIONS = "impflow,families,sampling,pyro,floor,memory,solvers"

# id -> (script, extra arguments, files it must write, needs)
SCRIPTS: dict[str, tuple[str, list[str], list[str], str | None]] = {
    "steep_1d": ("steep_1d.py", [], ["steep_1d.json", "steep_1d.md"], None),
    "exact_threshold": (
        "exact_threshold.py",
        [],
        ["exact_threshold.json", "exact_threshold.md"],
        None,
    ),
    "spectral_cost": ("spectral_cost.py", [], ["spectral_cost.json", "spectral_cost.md"], None),
    "widths": ("widths.py", [], ["widths.json", "widths.md"], None),
    "trust": ("trust.py", [], ["trust.json", "trust.md"], None),
    "images": ("images.py", [], ["images.json", "images.md"], None),
    "images-cost": ("images.py", ["--cost", "1"], ["cost.json", "cost.md"], None),
    "vi": ("vi.py", [], ["main.json"], "sklearn"),
    "vi_sweep": ("vi_sweep.py", [], ["vi_sweep.json", "vi_sweep.md"], None),
    "realdata": ("realdata.py", [], ["realdata.json", "realdata.md"], "skimage"),
    "realdata-ablation": (
        "realdata.py",
        ["--ablation", "--datasets", "digits", "--variants", "zero-init", "shallow-wide"],
        ["realdata.json", "ablation.md"],
        "sklearn",
    ),
    "speed": ("speed.py", ["--sections", SPEED_SECTIONS], ["speed.json", "speed.md"], None),
    "speed-normflows": (
        "speed.py",
        ["--sections", "normflows"],
        ["speed.json", "speed.md"],
        "normflows",
    ),
    "densenet": ("densenet.py", [], ["densenet.json", "densenet.md"], None),
}


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def _run(script: str, args: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(BENCH / script), "--smoke", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def committed_results_untouched() -> Iterator[None]:
    before = _snapshot(common.RESULTS)
    yield
    assert _snapshot(common.RESULTS) == before, "a smoke run wrote into benchmarks/results"


@pytest.mark.usefixtures("committed_results_untouched")
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_in_smoke_mode(name: str, tmp_path: Path) -> None:
    script, args, files, needs = SCRIPTS[name]
    if needs is not None:
        pytest.importorskip(needs)
    res = _run(script, args, tmp_path)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    for file in files:
        assert (tmp_path / file).is_file(), f"{script} did not write {file}"
    data = json.loads((tmp_path / files[0]).read_text())
    env = data["environment"]
    for key in ("torch", "threads", "cpu", "date", "git_commit"):
        assert key in env, f"{script}: environment stamp lacks {key}"
    assert env["threads"] == 1
    for md in (f for f in files if f.endswith(".md")):
        assert (tmp_path / md).read_text().startswith(f"torch {env['torch']}")
    if name == "vi":  # the README's tables are printed from the result file
        cmd = [sys.executable, str(BENCH / script), "--section", "tables", "--out", str(tmp_path)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "| ImpFlow x2 |" in res.stdout


@pytest.mark.slow
@pytest.mark.usefixtures("committed_results_untouched")
def test_speed_compile_section_runs_in_smoke_mode(tmp_path: Path) -> None:
    """``torch.compile``'s first step alone takes tens of seconds on a CPU."""
    res = _run("speed.py", ["--sections", "compile"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch.compile" in (tmp_path / "speed.md").read_text()


def test_smoke_never_writes_into_the_committed_results(tmp_path: Path) -> None:
    args = common.parser("x").parse_args(["--smoke", "--out", str(common.RESULTS / "smoke")])
    with pytest.raises(ValueError, match="outside"):
        common.output_folder(args, common.RESULTS, "x")
    assert not (common.RESULTS / "smoke").exists()
    default = common.output_folder(common.parser("x").parse_args(["--smoke"]), common.RESULTS, "x")
    assert default.is_dir() and not default.resolve().is_relative_to(common.RESULTS)
    default.rmdir()
    given = tmp_path / "a" / "b"
    assert common.output_folder(common.parser("x").parse_args(["--out", str(given)]), tmp_path, "x")
    assert given.is_dir()


def test_interleaved_runs_round_robin_and_times_only_the_work() -> None:
    calls: list[str] = []
    timed = common.Timed(
        lambda: calls.append("b"),
        before=lambda: calls.append("b<"),
        after=lambda: calls.append(">b"),
    )
    out = common.interleaved({"a": lambda: calls.append("a"), "b": timed}, repeats=2, warmup=1)
    assert calls == ["a", "b<", "b", ">b"] * 3  # warm-up round, then two timed rounds
    assert set(out) == {"a", "b"} and all(v >= 0.0 for v in out.values())
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        common.interleaved({"a": lambda: None}, repeats=0)


def test_count_parameters() -> None:
    import torch

    net = torch.nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    assert common.count_parameters(net) == 8
    assert common.count_parameters(net, trainable_only=True) == 6
