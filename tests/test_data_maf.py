"""The MAF tabular loaders on small files written in the release's own formats."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from implicit_transforms.data import (
    MAF_DATASETS,
    MAF_DIMENSIONS,
    MAF_FILES,
    load_bsds300,
    load_gas,
    load_hepmass,
    load_miniboone,
    load_power,
)
from implicit_transforms.data.maf import min_value_count

pd = pytest.importorskip("pandas")


def _standardised_together(splits: object) -> np.ndarray:
    return np.vstack([splits.train, splits.validation])  # type: ignore[attr-defined]


# -- POWER ----------------------------------------------------------------------------------


def write_power(root: Path, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(1)
    data = np.column_stack(
        [
            rng.gamma(2.0, 0.5, n).round(3),  # Global_active_power
            rng.gamma(1.0, 0.1, n).round(3),  # Global_reactive_power (dropped)
            240 + rng.normal(0, 3, n).round(2),  # Voltage
            rng.gamma(2.0, 2.0, n).round(1),  # Global_intensity (dropped)
            rng.integers(0, 40, n),  # Sub_metering_1..3
            rng.integers(0, 40, n),
            rng.integers(0, 20, n),
            rng.integers(0, 1440, n),  # time of day (minutes)
        ]
    ).astype(np.float64)
    (root / "power").mkdir(parents=True)
    np.save(root / "power" / "data.npy", data)
    return data


def test_power_follows_the_reference_steps(tmp_path: Path) -> None:
    data = write_power(tmp_path)
    s = load_power(tmp_path)
    assert s.features == 6 and s.sizes == (405, 45, 50)  # 10% test, 10% of the rest validation
    # Independent derivation of the documented steps: RandomState(42) shuffles the rows (the
    # same draws as its permutation), columns 1 and 3 go, then the noise of Voltage, of
    # Global_active_power and of the three sub-meterings is drawn in that order; time: none.
    rng = np.random.RandomState(42)
    rows = rng.permutation(len(data))
    n = len(data)
    volt, gap, sub = 0.01 * rng.rand(n, 1), 0.001 * rng.rand(n, 1), rng.rand(n, 3)
    expected = data[rows][:, [0, 2, 4, 5, 6, 7]]
    expected[:, [0]] += gap
    expected[:, [1]] += volt
    expected[:, 2:5] += sub
    trval = expected[:-50]
    mu, sd = trval.mean(0), trval.std(0)
    np.testing.assert_allclose(s.train, (expected[:405] - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.validation, (expected[405:450] - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.test, (expected[450:] - mu) / sd, rtol=0, atol=1e-12)
    both = _standardised_together(s)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-12)
    # The time column is noise-free: its de-standardised values are the file's minutes.
    minutes = s.test[:, 5] * sd[5] + mu[5]
    np.testing.assert_allclose(minutes, np.round(minutes), atol=1e-9)


def test_power_is_deterministic_and_checks_its_columns(tmp_path: Path) -> None:
    write_power(tmp_path)
    a, b = load_power(tmp_path), load_power(tmp_path)
    assert all(
        np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "validation", "test")
    )
    np.save(tmp_path / "power" / "data.npy", np.zeros((100, 7)))
    with pytest.raises(ValueError, match=r"power.*expected an array \(N, 8\).*\(100, 7\)"):
        load_power(tmp_path)


# -- GAS ------------------------------------------------------------------------------------


def write_gas(root: Path, n: int = 400) -> pd.DataFrame:
    """16 sensor columns: 8 independent ones, base 0 with two near-copies, bases 1..6 with one
    each, base 7 alone. Copies follow their base, so the iterative filter drops the base and
    then the first copy: kept are the last of each group."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(n, 8)) * np.arange(1, 9) + np.arange(8) * 10
    cols: dict[str, np.ndarray] = {
        "Time": np.arange(n, dtype=float),
        "Meth": rng.uniform(0, 300, n),
        "Eth": rng.uniform(0, 20, n),
    }
    k = 1
    for j in range(8):
        copies = 2 if j == 0 else 1 if j < 7 else 0
        cols[f"S{k}"] = base[:, j]
        k += 1
        for _ in range(copies):
            cols[f"S{k}"] = 2.0 * base[:, j] + 0.01 * (j + 1) * rng.normal(size=n)
            k += 1
    frame = pd.DataFrame(cols)
    (root / "gas").mkdir(parents=True)
    frame.to_pickle(root / "gas" / "ethylene_CO.pickle")
    return frame


def test_gas_drops_correlated_columns_iteratively_and_standardises_all_rows(tmp_path: Path) -> None:
    frame = write_gas(tmp_path)
    assert frame.shape[1] == 19
    s = load_gas(tmp_path)
    assert s.features == 8 and s.sizes == (324, 36, 40)
    # Kept: S3 (last of base 0's group of three), S5, S7, ..., S15 and S16 (base 7, no copy).
    kept = frame[["S3", "S5", "S7", "S9", "S11", "S13", "S15", "S16"]].to_numpy()
    standard = (kept - kept.mean(0)) / kept.std(0, ddof=1)  # over all rows, before the split
    np.testing.assert_allclose(np.vstack([s.train, s.validation, s.test]), standard, atol=1e-12)
    np.testing.assert_allclose(s.test, standard[-40:], atol=1e-12)  # no shuffle: the tail


def test_gas_needs_the_release_columns(tmp_path: Path) -> None:
    (tmp_path / "gas").mkdir()
    pd.DataFrame({"Time": [1.0, 2.0], "A": [1.0, 3.0]}).to_pickle(
        tmp_path / "gas/ethylene_CO.pickle"
    )
    with pytest.raises(ValueError, match=r"no column\(s\) \['Meth', 'Eth'\]"):
        load_gas(tmp_path)
    with open(tmp_path / "gas/ethylene_CO.pickle", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        load_gas(tmp_path)


# -- HEPMASS --------------------------------------------------------------------------------

HEPMASS_HEADER = ["# label", *(f"f{i}" for i in range(27)), "mass"]
DISCRETE = [3, 7, 11, 15, 19, 23]  # features of a few values (their minimum repeats)
REPEATED_MODE = 5  # a continuous feature whose most frequent value repeats, not its minimum


def _hepmass_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    label = rng.integers(0, 2, n).astype(float)
    feats = rng.normal(size=(n, 27)).round(6)
    feats[:, DISCRETE] = rng.choice([-1.5, 0.0, 2.0], size=(n, len(DISCRETE)))
    feats[rng.permutation(n)[:12], REPEATED_MODE] = 0.25
    mass = np.where(label == 1, 1000.0, rng.choice([500.0, 750.0, 1250.0, 1500.0], n))
    return np.column_stack([label, feats, mass])


def write_hepmass(
    root: Path, n_train: int = 600, n_test: int = 300, end: str = ""
) -> list[np.ndarray]:
    """The two csv files with the UCI header; ``end`` is appended to every data row of the
    test file (``","``: a malformed row end, which ``read_csv(index_col=False)`` tolerates)."""
    rng = np.random.default_rng(3)
    (root / "hepmass").mkdir(parents=True)
    arrays = []
    for name, n in (("1000_train.csv", n_train), ("1000_test.csv", n_test)):
        rows = _hepmass_rows(n, rng)
        tail = end if name == "1000_test.csv" else ""
        lines = [",".join(HEPMASS_HEADER)]
        lines += [",".join(repr(float(v)) for v in r) + tail for r in rows]
        (root / "hepmass" / name).write_text("\n".join(lines) + "\n")
        arrays.append(rows)
    return arrays


@pytest.mark.parametrize("end", ["", ","], ids=["plain", "trailing-comma"])
def test_hepmass_signal_rows_and_the_reference_feature_filter(tmp_path: Path, end: str) -> None:
    train_rows, test_rows = write_hepmass(tmp_path, end=end)
    s = load_hepmass(tmp_path)
    assert s.features == 21
    signal_train = train_rows[train_rows[:, 0] == 1][:, 1:]
    signal_test = test_rows[test_rows[:, 0] == 1][:, 1:]
    n_val = int(0.1 * len(signal_train))
    assert s.sizes == (len(signal_train) - n_val, n_val, len(signal_test))
    # Kept: the 21 continuous features, the one with a repeated non-minimal value included;
    # dropped: the 6 discrete ones and mass (constant 1000 in the signal).
    keep = [i for i in range(27) if i not in DISCRETE]
    assert REPEATED_MODE in keep and len(keep) == 21
    mu, sd = signal_train[:, keep].mean(0), signal_train[:, keep].std(0, ddof=1)
    np.testing.assert_allclose(s.train, (signal_train[:-n_val, keep] - mu) / sd, atol=1e-12)
    np.testing.assert_allclose(s.validation, (signal_train[-n_val:, keep] - mu) / sd, atol=1e-12)
    np.testing.assert_allclose(s.test, (signal_test[:, keep] - mu) / sd, atol=1e-12)
    both = _standardised_together(s)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0, ddof=1), 1, atol=1e-12)


def test_min_value_count_is_the_count_of_the_smallest_value() -> None:
    col = np.array([0.25] * 9 + [-3.0, 1.0, 2.0])
    assert min_value_count(col) == 1  # the mode (0.25, 9 times) does not count
    assert min_value_count(np.array([-1.0] * 6 + [0.0])) == 6


def test_hepmass_with_too_many_discrete_features_is_refused(tmp_path: Path) -> None:
    write_hepmass(tmp_path)
    path = tmp_path / "hepmass" / "1000_train.csv"
    frame = pd.read_csv(path, index_col=False)
    frame["f0"] = frame["f0"].clip(lower=0.0)  # its minimum (0) now repeats: 20 features left
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"hepmass: expected D=21 .* got D=20"):
        load_hepmass(tmp_path)


# -- MINIBOONE, BSDS300 ---------------------------------------------------------------------


def test_miniboone_tail_split_standardised_by_train_and_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(300, 43)) * rng.uniform(0.1, 50, 43) + rng.normal(0, 100, 43)
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", data)
    s = load_miniboone(tmp_path)
    assert s.features == 43 and s.sizes == (243, 27, 30)
    mu, sd = data[:270].mean(0), data[:270].std(0)
    np.testing.assert_allclose(s.test, (data[270:] - mu) / sd, atol=1e-12)
    np.testing.assert_allclose(s.validation, (data[243:270] - mu) / sd, atol=1e-12)
    both = _standardised_together(s)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-12)


def test_bsds300_reads_the_three_parts(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(5)
    parts = {"train": rng.normal(size=(50, 63)), "validation": rng.normal(size=(10, 63)),
             "test": rng.normal(size=(20, 63))}  # fmt: skip
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for key, value in parts.items():
            f.create_dataset(key, data=value.astype(np.float32))
    s = load_bsds300(tmp_path)
    assert s.features == 63 and s.sizes == (50, 10, 20)
    np.testing.assert_array_equal(s.test, parts["test"].astype(np.float32).astype(np.float64))
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=parts["train"])
    with pytest.raises(ValueError, match="has no data set 'validation'"):
        load_bsds300(tmp_path)


# -- missing files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MAF_DATASETS))
def test_missing_file_says_which_file_goes_where(name: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        MAF_DATASETS[name](tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"put {MAF_FILES[name][0]} under DATA_ROOT" in message and "MAF data release" in message
    with pytest.raises(FileNotFoundError, match=r"pass a data root \(root=DIR\)"):
        MAF_DATASETS[name](None)


def test_published_dimensions() -> None:
    assert MAF_DIMENSIONS == {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}


def test_optional_readers_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_gas(tmp_path)
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pandas: pip install 'implicit-transforms\[realdata\]'"):
        load_gas(tmp_path)
    with pytest.raises(ImportError, match=r"h5py: pip install 'implicit-transforms\[realdata\]'"):
        load_bsds300(tmp_path)
