"""The command-line trainer: data, settings, the loop, and the CLI end to end on tiny budgets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nflows")

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.data import load_array, load_dataset, split_and_standardize
from implicit_transforms.cli.main import main
from implicit_transforms.cli.models import Standardize
from implicit_transforms.cli.session import Session, select_device
from implicit_transforms.cli.training import EMA, batch_indices, lr_factor
from implicit_transforms.data.toy import TOY_DATASETS, checkerboard

# A tiny run: 2 blocks of width 8 on 400 points, 6 steps, validation every 3 steps.
TINY = [
    "--n-samples", "400", "--blocks", "2", "--hidden", "8", "--steps", "6", "--eval-every", "3",
    "--batch-size", "32", "--warmup", "2", "--figure-grid", "30", "--figure-samples", "300",
    "--no-progress",
]  # fmt: skip


# A data file uses all its rows: --n-samples is for the built-in data sets only.
TINY_FILE = TINY[2:]
assert TINY[:2] == ["--n-samples", "400"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_toy_data_seeded_and_finite(name: str) -> None:
    a = TOY_DATASETS[name](500, torch.Generator().manual_seed(3))
    b = TOY_DATASETS[name](500, torch.Generator().manual_seed(3))
    c = TOY_DATASETS[name](500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float64
    assert torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.5 < float(a.std(0).min()) and float(a.abs().max()) < 6  # comparable scales


def test_checkerboard_is_uniform_on_the_black_squares() -> None:
    x = checkerboard(80_000, torch.Generator().manual_seed(0))
    assert float(x.abs().max()) <= 4.0
    col, row = torch.floor((x[:, 0] + 4) / 2).long(), torch.floor((x[:, 1] + 4) / 2).long()
    assert bool(((col + row) % 2 == 0).all())  # only the 8 squares of one colour
    counts = torch.bincount(col * 4 + row, minlength=16)[
        (torch.arange(16) // 4 + torch.arange(16) % 4) % 2 == 0
    ]
    expected = 80_000 / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001
    # uniform inside a square: the fractional position has mean 1/2 and variance 1/12
    frac = ((x + 4) / 2) % 1
    assert torch.allclose(frac.mean(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(frac.var(0), torch.full((2,), 1 / 12, dtype=torch.float64), atol=0.003)


def test_split_is_seeded_disjoint_and_standardised_on_train_only() -> None:
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 2
    s = split_and_standardize(data, name="x", val_fraction=0.1, test_fraction=0.2, seed=1)
    assert (len(s.train), len(s.validation), len(s.test)) == (700, 100, 200)
    whole = torch.cat([s.train, s.validation, s.test])
    assert torch.equal(whole[whole[:, 0].argsort()], data[data[:, 0].argsort()])
    assert torch.allclose(s.mean, s.train.mean(0)) and torch.allclose(s.std, s.train.std(0))
    assert not torch.allclose(s.mean, data.mean(0))
    again = split_and_standardize(data, name="x", val_fraction=0.1, test_fraction=0.2, seed=1)
    other = split_and_standardize(data, name="x", val_fraction=0.1, test_fraction=0.2, seed=2)
    assert torch.equal(s.test, again.test) and not torch.equal(s.test, other.test)


def test_standardize_layer_is_exact() -> None:
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])
    layer = Standardize(mean, std)
    x = torch.randn(5, 2)
    z, ld = layer(x)
    assert torch.allclose(z, (x - mean) / std)
    assert torch.allclose(ld, torch.full((5,), -math.log(2.0 * 0.5)))
    back, ld_inv = layer.inverse(z)
    assert torch.allclose(back, x) and torch.allclose(ld_inv, -ld)


def test_files_npy_and_csv(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "a.npy", arr)
    (tmp_path / "a.csv").write_text("u,v,w\n" + "\n".join(",".join(map(str, r)) for r in arr))
    for name in ("a.npy", "a.csv"):
        loaded = load_array(tmp_path / name)
        assert loaded.shape == (50, 3)
        assert np.allclose(loaded.numpy(), arr)
    splits = load_dataset(str(tmp_path / "a.csv"), seed=0)
    assert splits.features == 3 and len(splits.test) == 5


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".npy", "does not exist"),
        ("1,2\n3,4\n", ".txt", "expected a .npy or .csv file"),
        ("1,2\n3,x\n", ".csv", "line 2: not a comma-separated row"),
        ("1,2\n3,4,5\n", ".csv", "rows have different lengths"),
        ("1,2\nnan,4\n5,6\n", ".csv", "NaN/Inf value(s), the first in row 1"),
        ("1\n2\n3\n", ".csv", "expected a 2-D array (N, D) with D >= 2"),
        ("", ".csv", "is empty"),
        ("garbage", ".npy", "could not be read"),
    ],
)
def test_bad_files_give_clear_errors(
    tmp_path: Path, content: str | None, suffix: str, message: str
) -> None:
    path = tmp_path / f"data{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=None) as info:
        load_array(path)
    assert message in str(info.value) and "data" in str(info.value)


def test_constant_feature_and_tiny_data_are_refused() -> None:
    data = torch.randn(100, 2, dtype=torch.float64)
    data[:, 1] = 3.0
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\] are constant"):
        split_and_standardize(data, name="c", val_fraction=0.1, test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="too few to split"):
        split_and_standardize(data[:3], name="c", val_fraction=0.1, test_fraction=0.1, seed=0)


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coeff": 1.0}, "--coeff must be in (0.0, 1.0)"),
        ({"steps": 0}, "--steps must be a positive integer"),
        ({"lr": float("nan")}, "--lr must be in"),
        ({"ema": 1.0}, "--ema must be in [0.0, 1.0)"),
        ({"hidden": ()}, "--hidden must be one or more positive integers"),
        ({"dataset": "svhn"}, "unknown dataset 'svhn'"),
        (
            {"dataset": "digits", "model": "rq-coupling"},
            "--model rq-coupling is a flow for vectors",
        ),
        ({"scales": 2}, "--scales applies to image data sets"),
        ({"dataset": "digits", "scales": 0}, "--scales must be a positive integer"),
        ({"dataset": "digits", "fc_blocks": -1}, "--fc-blocks must be an integer >= 0"),
        ({"dataset": "digits", "logit_alpha": 0.5}, "--logit-alpha must be in [0, 0.5)"),
        ({"model": "glow"}, "--model must be one of"),
        ({"model": "rq-coupling", "solver": "broyden"}, "--solver does not apply"),
        ({"atol": 0.0, "rtol": 0.0}, "cannot both be 0"),
        ({"device": "tpu"}, "--device must be auto, cpu, cuda"),
        ({"scale": "unit"}, "--scale must be one of standardised, raw, got 'unit'"),
        ({"dataset": "digits", "scale": "raw"}, "--scale applies to vector data"),
        ({"model": "rq-coupling", "zero_init": True}, "--zero-init does not apply"),
        ({"network": "resnet"}, "--network must be one of mlp, densenet, got 'resnet'"),
        ({"model": "rq-coupling", "network": "densenet"}, "--network does not apply"),
    ],
)
def test_impossible_settings(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**change).resolved()  # type: ignore[arg-type]
    assert message in str(info.value)


def test_model_defaults_are_filled_and_json_round_trips() -> None:
    cfg = TrainConfig(model="iresnet").resolved()
    assert (cfg.coeff, cfg.activation, cfg.solver, cfg.logdet) == (
        0.9,
        "sin",
        "fixed-point",
        "power-series",
    )
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_json({**cfg.to_json(), "lr_typo": 1.0})


def test_scale_and_zero_init_flags_defaults_and_old_configs() -> None:
    import argparse

    from implicit_transforms.cli.config import add_config_arguments, config_from_args
    from implicit_transforms.recipes.families import TRAINER_SCALE, TRAINER_ZERO_INIT

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    for flags, scale, zero_init in (
        ([], TRAINER_SCALE, TRAINER_ZERO_INIT["impflow"]),  # rq-impflow
        (["--model", "resflow"], TRAINER_SCALE, TRAINER_ZERO_INIT["resflow"]),
        (["--scale", "raw", "--zero-init"], "raw", True),
        (["--scale", "standardised", "--no-zero-init"], "standardised", False),
    ):
        cfg = config_from_args(parser.parse_args(flags)).resolved()
        assert (cfg.scale, cfg.zero_init) == (scale, zero_init), flags
        assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    # the measured defaults: ImpFlow models start near zero, the others and images do not
    assert TRAINER_ZERO_INIT == {
        "iresnet": False,
        "resflow": False,
        "impflow": True,
        "monotone": False,
    }
    assert TRAINER_SCALE == "standardised"
    # images have no --scale; coupling flows no Lipschitz networks to start near zero
    image_cfg = TrainConfig(dataset="digits").resolved()
    assert image_cfg.scale is None and image_cfg.zero_init is False
    assert TrainConfig(model="rq-coupling").resolved().zero_init is None
    # a config.json written before the two settings existed: what its run was trained with
    old = {k: v for k, v in TrainConfig().resolved().to_json().items()
           if k not in ("scale", "zero_init")}  # fmt: skip
    loaded = TrainConfig.from_json(old)
    assert (loaded.scale, loaded.zero_init) == ("standardised", False)
    image = {k: v for k, v in TrainConfig(dataset="digits").resolved().to_json().items()
             if k not in ("scale", "zero_init")}  # fmt: skip
    assert TrainConfig.from_json(image).resolved().scale is None


def test_network_flag_defaults_choices_and_old_configs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from implicit_transforms.cli.config import add_config_arguments, config_from_args
    from implicit_transforms.recipes.families import NETWORK

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = ["--model", "monotone", "--network", "densenet", "--activation", "clipswish"]
    cfg = config_from_args(parser.parse_args(flags)).resolved()
    assert (cfg.network, cfg.activation) == ("densenet", "clipswish")
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    # the library's default network in every family and on images; none for couplings
    assert NETWORK == "mlp"
    for model in ("impflow", "resflow", "iresnet", "monotone", "rq-impflow"):
        assert TrainConfig(model=model).resolved().network == NETWORK, model
    assert TrainConfig(dataset="digits").resolved().network == NETWORK
    assert TrainConfig(model="rq-coupling").resolved().network is None
    # a bad value is argparse's error, naming the choices
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--network", "resnet"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'resnet'" in err and "densenet" in err
    # a config.json written before --network: its run was built with MLPs; a coupling run,
    # which has no Lipschitz network, gets neither --network nor --zero-init
    old = {k: v for k, v in TrainConfig(model="monotone").resolved().to_json().items()
           if k != "network"}  # fmt: skip
    assert TrainConfig.from_json(old).resolved().network == "mlp"
    coupling = {k: v for k, v in TrainConfig(model="rq-coupling").resolved().to_json().items()
                if k not in ("network", "zero_init")}  # fmt: skip
    loaded = TrainConfig.from_json(coupling).resolved()
    assert (loaded.network, loaded.zero_init) == (None, None)


def test_cuda_request_without_cuda_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


# -- loop pieces ------------------------------------------------------------------------------


def test_lr_schedule() -> None:
    f = [lr_factor(s, warmup=4, total=20, schedule="cosine") for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False)) and f[-1] < 0.02
    assert lr_factor(15, warmup=4, total=20, schedule="constant") == 1.0


def test_batches_cover_each_epoch_once_and_are_reproducible() -> None:
    rows = torch.cat([batch_indices(s, 100, 30, seed=5) for s in range(3)])
    assert len(rows) == 90 and len(set(rows.tolist())) == 90
    assert torch.equal(batch_indices(4, 100, 30, seed=5), batch_indices(4, 100, 30, seed=5))
    assert not torch.equal(batch_indices(0, 100, 30, seed=5), batch_indices(3, 100, 30, seed=5))


def test_ema_average_and_swap() -> None:
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay min(0.5, 1/10) = 0.1
    expected = 0.1 * start + 0.9 * (start + 1)
    assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied(model):
        assert torch.allclose(model.weight, expected)
    assert torch.allclose(model.weight, start + 1)


# -- the command line, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run


def test_train_writes_the_run_directory(trained: Path) -> None:
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "best.pt",
        "report.json",
        "figure.png",
    ):
        assert (trained / name).is_file(), name
    assert (trained / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((trained / "config.json").read_text())
    # the default model, chosen by measurement: RQ coupling mixed with ImpFlow
    assert cfg["model"] == "rq-impflow" and cfg["solver"] == "broyden" and cfg["coeff"] == 0.97
    assert cfg["logdet"] == "exact" and cfg["lr"] == 2e-3
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    vals = [r for r in lines if "val_nll" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in vals] == [3, 6]
    assert all(math.isfinite(r["loss"]) and r["solver_iters"] > 0 for r in steps)
    # the report: test metrics, model selection on validation
    report = json.loads((trained / "report.json").read_text())
    best = min(vals, key=lambda r: r["val_nll"])
    assert report["best_step"] == best["step"]
    assert report["best_val_nll"] == pytest.approx(best["val_nll"])
    t = report["test"]
    assert t["nll_bits"] == pytest.approx(t["nll_nats"] / math.log(2))
    assert t["nll_bits_per_dim"] == pytest.approx(t["nll_bits"] / 2)
    assert report["data_entropy_bits"] == 5.0 and t["nll_bits"] > 5.0
    assert report["reconstruction_error"]["max"] < 1e-3
    its = report["solver_iterations"]
    assert its["forward_mean"] > 0 and its["inverse_mean"] > 0
    assert report["lipschitz_bound"] < 1.0
    # two ActNorms, one ImpFlow block (two 2-8-2 nets) and one RQ coupling whose ResidualNet
    # maps the 1 conditioning feature through one 8-wide residual block to 3 * 8 - 1 spline
    # parameters (8 bins, linear tails)
    rq_net = (1 * 8 + 8) + 2 * (8 * 8 + 8) + (8 * 23 + 23)
    assert report["parameters"] == 2 * 4 + 2 * (2 * 8 + 8 + 8 * 2 + 2) + rq_net
    assert report["wall_time_s"] > 0 and report["steps"] == 6
    assert report["n_test"] == 40 and report["samples_nonfinite"] == 0


def test_report_matches_an_independent_exact_computation(trained: Path) -> None:
    """Test NLL recomputed from best.pt with autograd's Jacobian of the whole flow."""
    cfg = TrainConfig.load(trained / "config.json")
    session = Session.create(cfg)
    state = torch.load(trained / "best.pt", weights_only=False)
    session.flow.load_state_dict(state["model"])
    from implicit_transforms.cli.evaluation import refine_spectral_norms

    refine_spectral_norms(session.flow)
    session.flow.eval()
    x = session.splits.test[:10].float()
    transform = session.flow._transform
    total = 0.0
    for xi in x:
        z, _ = transform(xi[None])
        jac = torch.autograd.functional.jacobian(lambda v: transform(v[None])[0][0], xi)
        logdet = float(torch.linalg.slogdet(jac.detach())[1])
        logp = -0.5 * float((z.detach() ** 2).sum()) - math.log(2 * math.pi) + logdet
        total += logp
    from implicit_transforms.cli.evaluation import log_prob

    ours = log_prob(session.flow, x, 100)
    assert float(ours.sum()) == pytest.approx(total, rel=1e-4, abs=1e-3)


def test_evaluate_and_sample(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = json.loads((trained / "report.json").read_text())
    code, out, _ = run_cli(["evaluate", str(trained), "--no-progress"], capsys)
    assert code == 0 and "test NLL" in out and "report:" in out and "figure:" in out
    after = json.loads((trained / "report.json").read_text())
    assert after["test"]["nll_nats"] == pytest.approx(before["test"]["nll_nats"], abs=1e-5)
    assert after["wall_time_s"] == before["wall_time_s"]  # training time is kept
    csv = tmp_path / "s.csv"
    code, out, _ = run_cli(["sample", str(trained), "-n", "50", "--output", str(csv)], capsys)
    assert code == 0 and "wrote 50 samples" in out
    arr = np.loadtxt(csv, delimiter=",")
    assert arr.shape == (50, 2) and np.isfinite(arr).all()
    code, _, _ = run_cli(["sample", str(trained), "-n", "7", "--seed", "3"], capsys)
    assert code == 0 and np.load(trained / "samples.npy").shape == (7, 2)


@pytest.mark.parametrize("model", ["impflow", "monotone", "rq-coupling", "rq-impflow"])
def test_resume_continues_exactly(model: str, tmp_path: Path) -> None:
    """6 steps at once == 3 steps, stop, resume to 6: same weights, optimiser, metrics.

    The learning-rate schedule is constant here because a cosine schedule depends on --steps,
    which the short run changes; an interrupted run resumed with its own --steps is exact
    with either schedule.
    """
    common = [
        *TINY,
        "--model",
        model,
        "--ema",
        "0.9",
        "--dtype",
        "float64",
        "--schedule",
        "constant",
    ]
    common[common.index("--steps") + 1] = "6"
    assert main(["train", *common, "--run-dir", str(tmp_path / "a")]) == 0
    short = list(common)
    short[short.index("--steps") + 1] = "3"
    assert main(["train", *short, "--run-dir", str(tmp_path / "b")]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "6", "--no-progress"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"]["shadow"].items():
        assert torch.equal(v, b["ema"]["shadow"][k]), k
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "nan"
    args = ["train", *TINY, "--model", "rq-coupling", "--lr", "1e6", "--clip-grad", "0",
            "--warmup", "0", "--eval-every", "1", "--run-dir", str(run)]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "training stopped at step" in lines[0]
    assert "the loss is" in lines[0] and "last good checkpoint" in lines[0]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    stopped = int(lines[0].split("step ")[1].split(":")[0])
    assert ckpt["step"] == stopped - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--dataset", "mnist"], "mnist is read from local files: pass --data-root DIR with"),
        (["--dataset", "mnist", "--data-root", "/nonexistent"], "mnist: missing 4 file(s)"),
        (["--dataset", "digits", "--scales", "4"], "cannot be squeezed for level 4 of 4"),
        (["--dataset", "moons", "--data-root", "/x"], "--data-root applies to image data sets"),
        (["--coeff", "1.5"], "--coeff must be in (0.0, 1.0)"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--model", "rq-coupling", "--coeff", "0.9"], "--coeff does not apply"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", *TINY_FILE, *extra, "--run-dir", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("implicit-transforms: error:") and message in err


def test_bad_data_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nan = tmp_path / "nan.csv"
    nan.write_text("1,2\n3,nan\n5,6\n7,8\n")
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    for path, message in (
        (nan, "NaN/Inf"),
        (bad, "could not be read"),
        (tmp_path / "no.csv", "does not exist"),
    ):
        code, _, err = run_cli(
            ["train", *TINY_FILE, "--dataset", str(path), "--run-dir", str(tmp_path / "r")], capsys
        )
        assert code == 2 and message in err and err.count("\n") == 1


def test_run_dir_misuse_exit_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", *TINY, "--run-dir", str(trained)], capsys)
    assert code == 2 and "is not empty" in err
    code, _, err = run_cli(["train", "--resume", str(trained), "--lr", "0.1"], capsys)
    assert code == 2 and "only --steps and --device may be given, got --lr" in err
    code, _, err = run_cli(["evaluate", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["sample", str(empty)], capsys)
    assert code == 2 and "has no config.json" in err
    code, _, err = run_cli(["sample", str(trained), "--output", str(tmp_path / "x.txt")], capsys)
    assert code == 2 and "must end in .npy, .csv or .png (images)" in err
    code, _, err = run_cli(["sample", str(trained), "-n", "0"], capsys)
    assert code == 2 and "-n/--num-samples must be a positive integer, got 0" in err


def test_user_file_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    np.save(
        tmp_path / "d.npy",
        rng.normal(size=(300, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 3.0]]),
    )
    run = tmp_path / "r"
    code, out, _ = run_cli(
        [
            "train",
            *TINY_FILE,
            "--dataset",
            str(tmp_path / "d.npy"),
            "--model",
            "resflow",
            "--run-dir",
            str(run),
        ],
        capsys,
    )
    assert code == 0 and "D=3" in out
    report = json.loads((run / "report.json").read_text())
    assert report["features"] == 3 and report["data_entropy_bits"] is None
    assert (
        report["solver_iterations"]["forward_mean"] is None
    )  # the explicit direction never solves
    assert report["solver_iterations"]["inverse_mean"] > 0
    assert (run / "figure.png").is_file()


def test_python_dash_m_and_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "implicit_transforms", "train", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0
    for flag in ("--dataset", "--model", "--coeff", "--solver", "--ema", "--resume", "--device"):
        assert flag in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "implicit_transforms", "train", "--model", "glow"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "invalid choice: 'glow'" in res.stderr


def test_large_events_are_validated_with_a_high_precision_estimate() -> None:
    """For D > 64 the exact Jacobian is not built; validation uses a 30-term power series."""
    from implicit_transforms.cli.models import blocks_of, build_flow
    from implicit_transforms.logdet import PowerSeriesLogDet

    cfg = TrainConfig(model="impflow", blocks=1, hidden=(8,)).resolved()
    flow = build_flow(cfg, torch.zeros(70), torch.ones(70))
    (block,) = blocks_of(flow)
    block.eval()
    est = block.estimator(70)
    assert isinstance(est, PowerSeriesLogDet) and est.n_terms == 30
    small = next(blocks_of(build_flow(cfg, torch.zeros(2), torch.ones(2))))
    small.eval()
    assert type(small.estimator(2)).__name__ == "ExactLogDet"


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["impflow", "resflow"])
def test_cuda_smoke(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "gpu"
    code, out, _ = run_cli(
        ["train", *TINY, "--model", model, "--device", "cuda", "--run-dir", str(run)], capsys
    )
    assert code == 0 and "on cuda" in out
    report = json.loads((run / "report.json").read_text())
    assert report["device"].startswith("cuda") and math.isfinite(report["test"]["nll_bits"])
    code, _, _ = run_cli(["sample", str(run), "-n", "20"], capsys)
    assert code == 0 and np.load(run / "samples.npy").shape == (20, 2)


# -- flags that must not pass silently ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"blocks": 1}, "the default model rq-impflow alternates RQ coupling layers and ImpFlow"),
        ({"model": "rq-impflow", "blocks": 1}, "it needs --blocks >= 2 to contain an ImpFlow"),
        ({"warmup": 50, "steps": 10}, "--warmup 50 is longer than --steps 10"),
        ({"warmup": -1}, "--warmup must be an integer >= 0"),
        ({"dataset": "x.csv", "n_samples": 100}, "--n-samples applies to the built-in 2-D data"),
        ({"dataset": "digits", "n_samples": 100}, "not to --dataset digits (an image data set"),
        ({"n_samples": 0}, "--n-samples must be a positive integer"),
    ],
)
def test_settings_that_would_do_something_else_than_asked(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**change).resolved()  # type: ignore[arg-type]
    assert message in str(info.value)


def test_default_warmup_and_n_samples_follow_the_run() -> None:
    assert TrainConfig(steps=10).resolved().warmup == 10  # not longer than the run
    assert TrainConfig(steps=5000).resolved().warmup == 100
    assert TrainConfig(warmup=10, steps=10).resolved().warmup == 10
    assert TrainConfig().resolved().n_samples == 50_000
    assert TrainConfig(dataset="x.csv").resolved().n_samples is None
    assert TrainConfig(dataset="digits").resolved().n_samples is None
    # run directories written before kept the unused default for files: still readable
    old = {**TrainConfig(dataset="x.csv").resolved().to_json(), "n_samples": 50_000}
    assert TrainConfig.from_json(old).resolved().n_samples is None
    with pytest.raises(ValueError, match="n_samples applies to the built-in data sets"):
        load_dataset("x.csv", n_samples=100)


@pytest.mark.parametrize("blocks", [2, 3])
def test_rq_impflow_contains_both_kinds_of_layer(blocks: int) -> None:
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform

    from implicit_transforms.blocks import ImplicitBlock
    from implicit_transforms.cli.models import blocks_of, build_flow

    cfg = TrainConfig(model="rq-impflow", blocks=blocks, hidden=(8,)).resolved()
    flow = build_flow(cfg, torch.zeros(2), torch.ones(2))
    kinds = [type(b) for b in blocks_of(flow)]
    assert kinds == [ImplicitBlock] * (blocks // 2)
    couplings = [m for m in flow.modules()
                 if isinstance(m, PiecewiseRationalQuadraticCouplingTransform)]  # fmt: skip
    assert len(couplings) == (blocks + 1) // 2


def test_flags_without_effect_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).normal(size=(100, 2)))
    for extra, message in (
        (["--dataset", str(data), "--n-samples", "100"], "--n-samples applies to the built-in"),
        (["--steps", "6", "--warmup", "7"], "--warmup 7 is longer than --steps 6"),
        (["--blocks", "1"], "needs --blocks >= 2 to contain an ImpFlow block, got --blocks 1"),
    ):
        args = ["train", *TINY_FILE, *extra, "--run-dir", str(tmp_path / "r")]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "r").exists()


def test_run_directories_written_before_still_evaluate(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Older configs stored --warmup 100 for shorter runs (and the unused --n-samples of a
    data file, see above): evaluate and sample still read them."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**cfg, "warmup": 100, "steps": 6}))
    assert run_cli(["evaluate", str(old), "--no-progress"], capsys)[0] == 0
    assert run_cli(["sample", str(old), "-n", "5"], capsys)[0] == 0
    # written before --scale and --zero-init (config and block spec without them)
    cfg = {k: v for k, v in cfg.items() if k not in ("scale", "zero_init")}
    cfg["block_spec"] = {k: v for k, v in cfg["block_spec"].items() if k != "zero_init"}
    (old / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["evaluate", str(old), "--no-progress"], capsys)
    assert code == 0, err


# -- resume: --steps is the total ---------------------------------------------------------------


def test_resume_steps_is_the_total_to_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    args = [*TINY, "--model", "rq-coupling", "--steps", "4", "--eval-every", "2", "--warmup", "1"]
    assert run_cli(["train", *args, "--run-dir", str(run)], capsys)[0] == 0
    config, report = (run / "config.json").read_bytes(), (run / "report.json").read_bytes()
    for steps, message in (
        (["--steps", "2"], "is already at step 4, so --steps 2 leaves nothing to train; pass "
                           "--steps N with N > 4 (--steps 6 trains 2 more)"),
        (["--steps", "4"], "is already at step 4, so --steps 4 leaves nothing to train"),
        ([], "has done all its 4 steps; pass --steps N with N > 4"),
    ):  # fmt: skip
        code, out, err = run_cli(["train", "--resume", str(run), *steps, "--no-progress"], capsys)
        assert code == 2 and message in err and out == "", err
        # nothing was touched: config.json and report.json still agree
        assert (run / "config.json").read_bytes() == config
        assert (run / "report.json").read_bytes() == report
    # an interrupted longer run: the new total must leave room for its stored warm-up
    stored = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**stored, "steps": 200, "warmup": 100}))
    code, _, err = run_cli(["train", "--resume", str(run), "--steps", "50"], capsys)
    assert code == 2 and "warms up for 100 steps (its --warmup), longer than --steps 50" in err
    (run / "config.json").write_bytes(config)
    code, out, _ = run_cli(["train", "--resume", str(run), "--steps", "6", "--no-progress"], capsys)
    assert code == 0 and "from step 4 to 6 (2 more steps)" in out
    assert json.loads((run / "config.json").read_text())["steps"] == 6
    assert json.loads((run / "report.json").read_text())["steps"] == 6
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 6
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    # steps 5 and 6 follow the cosine schedule of the new total (not the old one's final 0)
    for r in steps[4:]:
        factor = lr_factor(r["step"] - 1, warmup=1, total=6, schedule="cosine")
        assert r["lr"] == pytest.approx(1e-3 * factor) and factor > 0.09


# -- report.json: numbers or null ---------------------------------------------------------------


def _strict_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _strings(obj: object, path: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _strings(val, f"{path}.{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _strings(val, f"{path}[{i}]").items()}
    return {path: obj} if isinstance(obj, str) else {}


def test_tiny_test_split_report_holds_numbers_or_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10 samples leave one test row: its standard error does not exist and is null."""
    run = tmp_path / "r"
    args = [*TINY_FILE, "--n-samples", "10", "--model", "rq-coupling", "--run-dir", str(run)]
    code, out, _ = run_cli(["train", *args], capsys)
    assert code == 0 and "test NLL" in out
    report = _strict_json((run / "report.json").read_text())
    assert isinstance(report, dict) and report["n_test"] == 1
    assert report["test"]["nll_bits_stderr"] is None
    assert math.isfinite(report["test"]["nll_bits"])
    # the only strings are names and descriptions, never numbers
    texts = _strings(report)
    assert not [k for k, v in texts.items() if v.lower() in ("nan", "inf", "-inf", "infinity")]
    assert set(texts) <= {".dataset", ".model", ".device", ".dtype", ".test.logdet", ".figure",
                          ".checkpoint"} | {k for k in texts if k.startswith(".versions.")}  # fmt: skip
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    _strict_json((run / "config.json").read_text())


def test_json_ready_replaces_non_finite_numbers_by_null() -> None:
    from implicit_transforms.cli.rundir import json_text

    text = json_text({"a": float("nan"), "b": [1.5, float("-inf")], "c": {"d": float("inf")}})
    assert _strict_json(text) == {"a": None, "b": [1.5, None], "c": {"d": None}}


# -- report.json: exact or estimated test NLL -----------------------------------------------------


@pytest.mark.parametrize(
    ("features", "extra", "exact"),
    [
        (65, ["--model", "resflow"], False),
        (65, ["--model", "resflow", "--logdet", "exact"], True),
        (64, ["--model", "resflow"], True),
        (65, ["--model", "rq-coupling"], True),
    ],
)
def test_report_says_whether_the_test_nll_is_exact(
    features: int,
    extra: list[str],
    exact: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Blocks on D > 64 evaluate a 30-term power series: a stochastic estimate, labelled."""
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).normal(size=(60, features)))
    run = tmp_path / "r"
    args = ["train", *TINY_FILE, "--dataset", str(data), "--blocks", "1", "--steps", "2",
            "--warmup", "1", "--figure-samples", "20", *extra, "--run-dir", str(run)]  # fmt: skip
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    test = json.loads((run / "report.json").read_text())["test"]
    assert test["nll_exact"] is exact
    assert ("note: the test NLL is not exact" in out) is not exact
    if exact:
        assert test["logdet"] == "exact"
    else:
        assert test["logdet"].startswith("stochastic estimate for D = 65 > 64: PowerSeriesLogDet")


# -- data files with a pandas index ---------------------------------------------------------------


def _pandas_csv(path: Path, index_name: str, rows: np.ndarray) -> None:
    """What ``pandas.DataFrame(rows, columns=["x0", ...]).to_csv(path)`` writes (pandas is not a
    dependency): the row index first, under an empty header name by default."""
    names = [f"x{j}" for j in range(rows.shape[1])]
    lines = [",".join([index_name, *names])]
    lines += [",".join([str(i), *(repr(float(v)) for v in r)]) for i, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("index_name", ["", "Unnamed: 0", "index"])
def test_a_pandas_index_column_is_dropped_and_said(tmp_path: Path, index_name: str) -> None:
    arr = np.random.default_rng(0).normal(size=(30, 2))
    _pandas_csv(tmp_path / "d.csv", index_name, arr)
    said: list[str] = []
    loaded = load_array(tmp_path / "d.csv", log=said.append)
    assert loaded.shape == (30, 2) and np.allclose(loaded.numpy(), arr)
    assert len(said) == 1 and "dropped the first column" in said[0] and "0..29" in said[0]
    # a real first feature with an ordinary name is kept
    (tmp_path / "e.csv").write_text(
        "a,b\n" + "\n".join(f"{i},{v}" for i, v in enumerate(arr[:, 0]))
    )
    assert load_array(tmp_path / "e.csv", log=said.append).shape == (30, 2) and len(said) == 1


def test_a_headerless_row_number_column_is_refused(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).normal(size=(30, 2))
    path = tmp_path / "d.csv"
    path.write_text("\n".join(f"{i},{a},{b}" for i, (a, b) in enumerate(arr)) + "\n")
    with pytest.raises(ValueError, match=r"the first column is the row number 0\.\.29"):
        load_array(path)


def test_train_on_a_pandas_csv_uses_the_features_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pandas_csv(tmp_path / "d.csv", "", np.random.default_rng(0).normal(size=(200, 2)))
    run = tmp_path / "r"
    args = ["train", *TINY_FILE, "--dataset", str(tmp_path / "d.csv"), "--run-dir", str(run)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "dropped the first column" in out and "D=2" in out
    assert json.loads((run / "report.json").read_text())["features"] == 2
