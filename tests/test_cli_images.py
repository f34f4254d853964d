"""The command-line trainer on images (scikit-learn's digits) end to end with tiny budgets:
run directory, bits/dim report checked against an independent computation, evaluate, sample
(.npy pixels and .png grid), exact resume, variational dequantisation, CUDA smoke test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nflows")
pytest.importorskip("sklearn")

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.main import main
from implicit_transforms.cli.session import Session
from implicit_transforms.images import dequantize

TINY = [
    "--dataset", "digits", "--blocks", "1", "--hidden", "4", "--steps", "4", "--eval-every", "2",
    "--batch-size", "32", "--eval-batch-size", "400", "--warmup", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run


def test_train_writes_an_image_run(trained: Path) -> None:
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "best.pt",
        "report.json",
        "figure.png",
    ):
        assert (trained / name).is_file(), name
    report = json.loads((trained / "report.json").read_text())
    t = report["test"]
    assert report["image_shape"] == [1, 8, 8] and report["levels"] == 17
    assert report["n_test"] == 180 and report["n_train"] == 1437
    assert 0 < t["bits_per_dim"] < math.log2(17) + 1 and 0 < t["bits_per_dim_stderr"] < 0.1
    assert t["logdet"] == "exact" and "D log 17" in t["convention"]
    assert report["lipschitz_bound"] < 1 and report["reconstruction_error"]["max"] < 1e-4
    assert report["solver_iterations"]["forward_mean"] > 0  # ImpFlow solves both ways
    assert report["samples_nonfinite"] == 0
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4 and all(
        r["bits_per_dim"] == pytest.approx(r["loss"] / (64 * math.log(2))) for r in steps
    )
    assert [r["step"] for r in rows if "val_bits_per_dim" in r] == [2, 4]


def test_report_bits_per_dim_by_an_independent_computation(trained: Path) -> None:
    """The report's number is -(log p((k + u) / 17) - 64 log 17) / (64 ln 2) with the report's
    noise (seed + 104729 for the first chunk), averaged over the test images."""
    cfg = TrainConfig.load(trained / "config.json")
    session = Session.create(cfg)
    session.flow.load_state_dict(torch.load(trained / "best.pt", weights_only=False)["model"])
    session.flow.eval()
    assert session.images is not None
    k = session.images.test.float()
    g = torch.Generator().manual_seed(cfg.seed + 104_729)
    u = torch.rand(tuple(k.shape), generator=g, dtype=torch.float64).float()
    with torch.no_grad():
        log_p = session.flow.log_prob(dequantize(k, 17, u)).double()
    bpd = -(log_p - 64 * math.log(17)) / (64 * math.log(2))
    report = json.loads((trained / "report.json").read_text())
    assert report["test"]["bits_per_dim"] == pytest.approx(float(bpd.mean()), abs=1e-4)
    assert report["test"]["bits_per_dim_stderr"] == pytest.approx(
        float(bpd.std() / math.sqrt(len(bpd))), rel=1e-3
    )


def test_evaluate_and_sample_images(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = json.loads((trained / "report.json").read_text())["test"]["bits_per_dim"]
    assert main(["evaluate", str(trained), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "certified Lipschitz bound" in out and "figure:" in out
    after = json.loads((trained / "report.json").read_text())["test"]["bits_per_dim"]
    assert after == pytest.approx(before, abs=1e-5)
    assert main(["sample", str(trained), "-n", "10"]) == 0
    pixels = np.load(trained / "samples.npy")
    assert pixels.shape == (10, 1, 8, 8) and pixels.dtype == np.uint8 and pixels.max() <= 16
    png = tmp_path / "grid.png"
    assert main(["sample", str(trained), "-n", "16", "--output", str(png)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (19, 73)  # 2 rows, 8 columns of 8 + gaps
    capsys.readouterr()
    assert main(["sample", str(trained), "--output", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image samples go to a .npy file" in err


def test_image_resume_continues_exactly(tmp_path: Path) -> None:
    """Dequantisation noise and estimator randomness are functions of (seed, step): a run
    stopped at step 2 and resumed to 4 equals a run of 4 steps (float64, roulette log-det)."""
    common = [*TINY, "--dtype", "float64", "--schedule", "constant", "--ema", "0.9"]
    assert main(["train", *common, "--run-dir", str(tmp_path / "a")]) == 0
    short = list(common)
    short[short.index("--steps") + 1] = "2"
    assert main(["train", *short, "--run-dir", str(tmp_path / "b")]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "4", "--no-progress"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_variational_dequantisation_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "v"
    args = ["train", *TINY, "--steps", "2", "--model", "resflow", "--dequantization", "variational",
            "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert "variational dequantisation" in report["test"]["convention"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["dequantizer"] is not None and any("net" in k for k in ckpt["dequantizer"])
    uniform = Session.create(TrainConfig(dataset="digits", model="resflow", blocks=1, hidden=(4,)))
    assert report["parameters"] > uniform.num_parameters  # the dequantiser is trained too


def test_densenet_image_run_builds_and_reloads_dense_cnns(tmp_path: Path) -> None:
    """``--network densenet`` on images: every convolutional block's network is an i-DenseNet
    CNN, stored in ``config.json`` and rebuilt by ``load_run``, and ``evaluate`` reproduces the
    report."""
    import implicit_transforms
    from implicit_transforms import LipschitzDenseCNN
    from implicit_transforms.cli.models import blocks_of

    run = tmp_path / "dense"
    args = ["train", *TINY, "--steps", "2", "--model", "monotone", "--network", "densenet",
            "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["network"] == "densenet"
    report = json.loads((run / "report.json").read_text())
    blocks = list(blocks_of(implicit_transforms.load_run(run)))
    assert blocks and all(isinstance(b.net, LipschitzDenseCNN) for b in blocks)
    assert report["lipschitz_bound"] < 1
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    again = json.loads((run / "report.json").read_text())
    assert again["test"]["bits_per_dim"] == pytest.approx(report["test"]["bits_per_dim"], abs=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["impflow", "resflow"])
def test_cuda_image_smoke(model: str, tmp_path: Path) -> None:
    run = tmp_path / model
    assert main(["train", *TINY, "--model", model, "--device", "cuda", "--run-dir", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["device"].startswith("cuda") and math.isfinite(report["test"]["bits_per_dim"])
    assert main(["sample", str(run), "-n", "8", "--output", str(tmp_path / "s.png")]) == 0
