"""The real data sets on the command line: --dataset NAME --data-root DIR."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nflows")

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.data import load_dataset
from implicit_transforms.cli.main import main

TINY = [
    "--blocks", "2", "--hidden", "8", "--steps", "4", "--eval-every", "2", "--batch-size", "32",
    "--warmup", "1", "--figure-grid", "10", "--figure-samples", "100", "--no-progress",
]  # fmt: skip


def write_miniboone(root: Path, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, 43)) * rng.uniform(0.5, 5, 43) + rng.normal(0, 10, 43)
    (root / "miniboone").mkdir(parents=True)
    np.save(root / "miniboone" / "data.npy", data)
    return data


def test_tiny_training_run_on_a_tabular_fixture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_miniboone(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--dataset", "miniboone", "--data-root", str(tmp_path / "data"), *TINY]
    assert main([*args, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "miniboone (D=43, 243 train rows)" in out
    report = json.loads((run / "report.json").read_text())
    assert report["dataset"] == "miniboone" and report["features"] == 43
    assert (report["n_train"], report["n_validation"], report["n_test"]) == (243, 27, 30)
    assert np.isfinite(report["test"]["nll_nats"])
    assert json.loads((run / "config.json").read_text())["data_root"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], r"--dataset miniboone is read from local files: pass --data-root DIR with miniboone/data.npy under DIR"),
     (["--data-root", "EMPTY"], "put miniboone/data.npy under DATA_ROOT")],
)  # fmt: skip
def test_missing_file_exits_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [str(tmp_path) if e == "EMPTY" else e for e in extra]
    code = main(
        ["train", "--dataset", "miniboone", *extra, *TINY, "--run-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("implicit-transforms: error: ")
    assert re.search(message, err)


def test_real_names_are_known_and_data_root_is_theirs() -> None:
    for name in ("power", "gas", "hepmass", "miniboone", "bsds300"):
        assert TrainConfig(dataset=name, data_root="d").resolved().data_root == "d"
    for name in ("patches", "mnist5k"):
        assert TrainConfig(dataset=name).resolved().model == "rq-impflow"  # vector flows
    with pytest.raises(ValueError, match="--data-root applies to image data sets"):
        TrainConfig(dataset="patches", data_root="d").resolved()


def test_bundled_patches_through_the_trainer_data() -> None:
    pytest.importorskip("skimage")
    splits = load_dataset("patches", seed=0)
    assert splits.features == 63
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (
        100_000,
        10_000,
        20_000,
    )
    assert splits.train.dtype.is_floating_point and float(splits.std.min()) > 0
