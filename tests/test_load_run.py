"""``load_run`` and ``score``: a run trained by the command line, loaded back into Python and
scored from files, gives the log-densities of the trainer's own report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("nflows")

import implicit_transforms
from implicit_transforms.cli.load import run_config
from implicit_transforms.cli.main import main
from implicit_transforms.cli.session import Session

TINY = [
    "--n-samples", "400", "--blocks", "2", "--hidden", "8", "--steps", "6", "--eval-every", "3",
    "--batch-size", "32", "--warmup", "2", "--figure-grid", "30", "--figure-samples", "300",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny default-model (rq-impflow) run on the moons, float64 so that equalities are tight."""
    root = tmp_path_factory.mktemp("load") / "run"
    code = main(["train", "--dataset", "moons", "--run-dir", str(root), "--dtype", "float64",
                 "--device", "cpu", *TINY])  # fmt: skip
    assert code == 0
    return root


def _test_split(run_dir: Path) -> torch.Tensor:
    session = Session.create(run_config(run_dir), device="cpu", log=lambda _: None)
    assert session.splits is not None
    return session.splits.test


def test_log_prob_equals_the_reports_test_nll(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    flow = implicit_transforms.load_run(run_dir)
    test = _test_split(run_dir)
    with torch.no_grad():
        nll = -flow.log_prob(test).mean().item()
    assert nll == pytest.approx(report["test"]["nll_nats"], abs=1e-9)
    assert nll / math.log(2) == pytest.approx(report["test"]["nll_bits"], abs=1e-9)
    assert not flow.training


def test_log_prob_is_in_data_units(run_dir: Path) -> None:
    """The training standardisation is the flow's first layer and its log-det is counted."""
    flow = implicit_transforms.load_run(run_dir)
    layers = list(flow._transform._transforms)
    standardize = layers[0]
    test = _test_split(run_dir)[:50]
    assert torch.allclose(standardize.mean, _train_mean(run_dir))
    with torch.no_grad():
        z, ld_std = standardize(test)
        for layer in layers[1:]:
            z, ld = layer(z)
            ld_std = ld_std + ld
        manual = flow._distribution.log_prob(z) + ld_std
        assert torch.allclose(flow.log_prob(test), manual, atol=1e-10)
    assert float(torch.log(standardize.std).sum()) != 0.0


def _train_mean(run_dir: Path) -> torch.Tensor:
    session = Session.create(run_config(run_dir), device="cpu", log=lambda _: None)
    assert session.splits is not None
    return session.splits.mean


def test_samples_are_in_data_units(run_dir: Path) -> None:
    """``sample`` ends with the inverse standardisation: ``x = mean + std * u`` where ``u`` is
    the standardised-space sample of the same noise."""
    flow = implicit_transforms.load_run(run_dir)
    layers = list(flow._transform._transforms)
    torch.manual_seed(3)
    with torch.no_grad():
        x = flow.sample(200)
        torch.manual_seed(3)
        u = flow._distribution.sample(200)
        for layer in reversed(layers[1:]):
            u = layer.inverse(u)[0]
    assert x.shape == (200, 2) and torch.isfinite(x).all()
    assert torch.allclose(x, layers[0].mean + layers[0].std * u, atol=1e-8)
    assert not torch.allclose(x, u, atol=1e-3)


def test_float32_run(tmp_path: Path) -> None:
    """The default float32 run: equal to the report up to float32 rounding; ``dtype=`` loads
    it in float64 (to score float64 data without casting)."""
    root = tmp_path / "run32"
    assert main(["train", "--dataset", "moons", "--run-dir", str(root), "--device", "cpu",
                 *TINY]) == 0  # fmt: skip
    report = json.loads((root / "report.json").read_text())
    test = _test_split(root)
    with torch.no_grad():
        nll32 = -implicit_transforms.load_run(root).log_prob(test.float()).mean().item()
        nll64 = -implicit_transforms.load_run(root, dtype=torch.float64).log_prob(test).mean()
    assert nll32 == pytest.approx(report["test"]["nll_nats"], abs=1e-6)
    assert float(nll64) == pytest.approx(report["test"]["nll_nats"], abs=1e-4)


def test_last_checkpoint_and_bad_arguments(run_dir: Path, tmp_path: Path) -> None:
    last = implicit_transforms.load_run(run_dir, checkpoint="last")
    assert isinstance(last, torch.nn.Module)
    with pytest.raises(ValueError, match="checkpoint must be"):
        implicit_transforms.load_run(run_dir, checkpoint="final")
    with pytest.raises(ValueError, match="does not exist"):
        implicit_transforms.load_run(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="dtype must be"):
        implicit_transforms.load_run(run_dir, dtype=torch.float16)


@pytest.mark.parametrize("suffixes", [(".csv", ".csv"), (".npy", ".npy"), (".csv", ".npy")])
def test_score_writes_load_run_values(
    run_dir: Path, tmp_path: Path, suffixes: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    test = _test_split(run_dir)[:40]
    src, out = tmp_path / f"x{suffixes[0]}", tmp_path / f"y{suffixes[1]}"
    if suffixes[0] == ".csv":
        src.write_text("a,b\n" + "".join(f"{r[0]!r},{r[1]!r}\n" for r in test.tolist()))
    else:
        np.save(src, test.numpy())
    assert main(["score", str(run_dir), "--input", str(src), "--output", str(out)]) == 0
    got = np.load(out) if suffixes[1] == ".npy" else np.loadtxt(out, skiprows=1)
    with torch.no_grad():
        want = implicit_transforms.load_run(run_dir).log_prob(test).numpy()
    assert got.shape == (40,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    assert "wrote 40 log-densities" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1.0,2.0,3.0\n4.0,5.0,6.0\n", "must have shape (N, 2) for this run, got (2, 3)"),
        ("x,y\n1.0,nan\n0.5,0.5\n", "NaN/Inf value(s), the first in row 0"),
    ],
    ids=["wrong-width", "nan"],
)
def test_score_refuses_bad_input_with_one_line(
    run_dir: Path, tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.csv"
    src.write_text(content)
    code = main(["score", str(run_dir), "--input", str(src), "--output", str(tmp_path / "y.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.csv").exists()


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on the raw data (``--scale raw``) with near-zero last layers."""
    root = tmp_path_factory.mktemp("load-raw") / "run"
    code = main(["train", "--dataset", "moons", "--run-dir", str(root), "--dtype", "float64",
                 "--device", "cpu", "--scale", "raw", "--zero-init", *TINY])  # fmt: skip
    assert code == 0
    return root


def _assert_scores_match_the_report(run: Path, flow: Any, tmp_path: Path) -> None:
    """``load_run``'s log-density of the test split, ``score`` on the same rows and a fresh
    ``evaluate`` all give the run's reported test NLL."""
    report = json.loads((run / "report.json").read_text())
    test = _test_split(run)
    with torch.no_grad():
        log_p = flow.log_prob(test)
    assert -log_p.mean().item() == pytest.approx(report["test"]["nll_nats"], abs=1e-9)
    src, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, test.numpy())
    assert main(["score", str(run), "--input", str(src), "--output", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), log_p.numpy(), rtol=0, atol=1e-8)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    again = json.loads((run / "report.json").read_text())
    assert again["test"]["nll_nats"] == pytest.approx(report["test"]["nll_nats"], abs=1e-9)


def test_a_raw_run_is_trained_loaded_and_scored_raw(
    raw_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = json.loads((raw_run / "config.json").read_text())
    assert stored["scale"] == "raw" and stored["zero_init"] is True
    assert stored["block_spec"]["zero_init"] is True
    assert run_config(raw_run).scale == "raw"
    # the flow's first layer is the identity: the moons' own std is not 1, so a standardised
    # layer would show in the density (the test below)
    flow = implicit_transforms.load_run(raw_run)
    first = flow._transform._transforms[0]
    assert torch.equal(first.mean, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(first.std, torch.ones(2, dtype=torch.float64))
    assert not torch.allclose(_train_mean(raw_run), torch.zeros(2, dtype=torch.float64))
    # load_run, score and evaluate give the report's numbers
    _assert_scores_match_the_report(raw_run, flow, tmp_path)
    capsys.readouterr()


def test_a_densenet_monotone_run_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--network densenet`` (with i-DenseNets' CLipSwish) is stored in ``config.json`` and in
    the block spec, and resume, ``load_run``, ``score`` and ``evaluate`` rebuild the same
    i-DenseNet networks; a resume cannot change it."""
    from implicit_transforms import LipschitzDenseMLP, MonotoneBlock
    from implicit_transforms.cli.models import blocks_of

    root = tmp_path / "dense"
    flags = ["--model", "monotone", "--network", "densenet", "--activation", "clipswish"]
    code = main(["train", "--dataset", "moons", "--run-dir", str(root), "--dtype", "float64",
                 "--device", "cpu", *flags, *TINY, "--steps", "4"])  # fmt: skip
    assert code == 0
    stored = json.loads((root / "config.json").read_text())
    assert (stored["network"], stored["activation"]) == ("densenet", "clipswish")
    assert stored["block_spec"]["network"] == "densenet"
    assert main(["train", "--resume", str(root), "--steps", "6", "--no-progress"]) == 0
    assert json.loads((root / "config.json").read_text()) == {**stored, "steps": 6}
    assert main(["train", "--resume", str(root), "--steps", "8", "--network", "mlp"]) == 2
    assert "only --steps and --device may be given, got --network" in capsys.readouterr().err
    flow = implicit_transforms.load_run(root)
    blocks = list(blocks_of(flow))
    assert len(blocks) == 2 and all(isinstance(b, MonotoneBlock) for b in blocks)
    assert all(isinstance(b.net, LipschitzDenseMLP) for b in blocks)
    assert json.loads((root / "report.json").read_text())["steps"] == 6
    _assert_scores_match_the_report(root, flow, tmp_path)
    capsys.readouterr()
