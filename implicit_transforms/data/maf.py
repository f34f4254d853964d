r"""The five tabular data sets of MAF, preprocessed exactly as the MAF reference code does.

The files are those of the MAF data release (Papamakarios et al., https://zenodo.org/record/1161203),
placed under a data root::

    DATA_ROOT/power/data.npy                         POWER       D = 6
    DATA_ROOT/gas/ethylene_CO.pickle                 GAS         D = 8
    DATA_ROOT/hepmass/1000_train.csv, 1000_test.csv  HEPMASS     D = 21
    DATA_ROOT/miniboone/data.npy                     MINIBOONE   D = 43
    DATA_ROOT/BSDS300/BSDS300.hdf5                   BSDS300     D = 63

Each loader follows the functions of ``datasets/{power,gas,hepmass,miniboone}.py`` in the
reference repository (gpapamak/maf) step by step; every docstring lists the steps. Where the
reference leaves a choice implicit (pandas' ``std`` has ``ddof=1``, numpy's ``ddof=0``) the same
function is used here, so the arrays agree with the reference's to rounding. The reference then
casts to float32; these loaders return float64.

The file is checked (columns, dimension after preprocessing, finiteness): a file that is not
the MAF release's gives a ``ValueError`` naming it.

References:
    Masked Autoregressive Flow for Density Estimation, G. Papamakarios, T. Pavlakou,
    I. Murray, 2017.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from implicit_transforms.data.splits import Splits, require_file

__all__ = [
    "MAF_DATASETS",
    "MAF_DIMENSIONS",
    "MAF_FILES",
    "load_bsds300",
    "load_gas",
    "load_hepmass",
    "load_miniboone",
    "load_power",
    "min_value_count",
]

SOURCE = "the MAF data release, https://zenodo.org/record/1161203"

#: The files each loader reads, relative to the data root.
MAF_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}

#: The dimension after preprocessing (MAF paper, Table 1 / Appendix D).
MAF_DIMENSIONS: dict[str, int] = {
    "power": 6,
    "gas": 8,
    "hepmass": 21,
    "miniboone": 43,
    "bsds300": 63,
}


def _pandas(name: str) -> Any:
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            f"the {name} data set is read with pandas: pip install 'implicit-transforms[realdata]'"
        ) from err
    return pd


def _load_npy(path: Path, name: str, columns: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{name}: {str(path)!r} could not be read as .npy: {err}") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != columns:
        raise ValueError(
            f"{name}: {str(path)!r}: expected an array (N, {columns}) as in {SOURCE}, got shape "
            f"{np.shape(arr)}"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: {str(path)!r}: expected numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _tail_split(data: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's split: the last ``int(0.1 N)`` rows are the test set, then the last
    ``int(0.1 N')`` of the remaining ``N'`` rows the validation set, the rest training."""
    n_test = int(0.1 * data.shape[0])
    rest = data[:-n_test] if n_test else data
    n_val = int(0.1 * rest.shape[0])
    if n_test < 1 or n_val < 1 or rest.shape[0] - n_val < 2:
        raise ValueError(f"{name}: {data.shape[0]} rows are too few to split 80/10/10")
    return rest[:-n_val], rest[-n_val:], data[-n_test:]


def _finish(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Splits:
    parts = [np.ascontiguousarray(a, dtype=np.float64) for a in (train, val, test)]
    for label, a in zip(("train", "validation", "test"), parts, strict=True):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: the {label} split has NaN/Inf values after preprocessing")
    splits = Splits(name, *parts)
    if splits.features != MAF_DIMENSIONS[name]:
        raise ValueError(
            f"{name}: expected D={MAF_DIMENSIONS[name]} after the MAF preprocessing, got "
            f"D={splits.features}: are {', '.join(MAF_FILES[name])} the files of {SOURCE}?"
        )
    return splits


def load_power(root: str | Path | None) -> Splits:
    r"""POWER (UCI individual household electric power consumption), ``D = 6``.

    Reads ``power/data.npy``, an array ``(N, 8)``. The reference names the columns only
    through its noise variables; by them they are ``[Global_active_power,
    Global_reactive_power, Voltage, Global_intensity, Sub_metering_1, Sub_metering_2,
    Sub_metering_3, time]`` (the time of day is already a column of ``data.npy``: no time
    feature is added here). The steps, in the reference's order (its random draws are made in
    the same order from the same generator, so the result is the reference's):

    1. ``rng = np.random.RandomState(42)``; ``rng.shuffle(data)`` (rows).
    2. Delete column 3 (``Global_intensity``) and then column 1 (``Global_reactive_power``);
       the reference gives no reason (its commented-out noise lines show both were used once).
       Left: ``[Global_active_power, Voltage, Sub_metering_1..3, time]``.
    3. Add uniform noise, drawn in this order: ``0.01 * rng.rand(N, 1)`` to Voltage,
       ``0.001 * rng.rand(N, 1)`` to Global_active_power, ``rng.rand(N, 3)`` to the three
       sub-meterings; none to time.
    4. Test: the last ``int(0.1 N)`` rows; validation: the last ``int(0.1 N')`` of the other
       ``N'``; training: the rest.
    5. Standardise all three by the mean and standard deviation (``ddof=0``) of training and
       validation together.

    Args:
        root: the data root holding ``power/data.npy``.

    Returns:
        The splits, float64, ``D = 6``.

    Raises:
        FileNotFoundError: one line naming the file and where it goes.
        ValueError: the file is not an array ``(N, 8)`` of numbers.
    """
    data = _load_npy(require_file("power", root, MAF_FILES["power"][0], SOURCE), "power", 8)
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    train, val, test = _tail_split(data, "power")
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return _finish("power", (train - mu) / s, (val - mu) / s, (test - mu) / s)


def load_gas(root: str | Path | None, *, threshold: float = 0.98) -> Splits:
    r"""GAS (UCI gas sensor array under dynamic gas mixtures, ethylene and CO), ``D = 8``.

    Reads ``gas/ethylene_CO.pickle``, a pickled pandas ``DataFrame`` (unpickling runs code:
    read only the file of the release). Steps of the reference:

    1. Drop the columns ``"Meth"``, ``"Eth"`` and ``"Time"`` (the gas concentrations and the
       time stamp; the 16 sensor columns remain).
    2. Remove correlated columns one at a time: with ``C`` the Pearson correlation matrix
       (``DataFrame.corr()``), ``B_i = #{j : C_ij > 0.98}`` (``B_i >= 1``: the diagonal); while
       some ``B_i > 1``, drop the *first* such column and recompute ``C``.
    3. Standardise every column by its mean and standard deviation (pandas, ``ddof=1``) over
       the *whole* data set, before splitting (as the reference does).
    4. No shuffle: test is the last ``int(0.1 N)`` rows, validation the last ``int(0.1 N')``
       of the other ``N'``, training the rest.

    Args:
        root: the data root holding ``gas/ethylene_CO.pickle``.
        threshold: the correlation above which a column counts as a duplicate (0.98 in MAF).

    Raises:
        FileNotFoundError: one line naming the file and where it goes.
        ValueError: the pickle is not a DataFrame with columns Meth, Eth and Time.
        ImportError: without pandas (``pip install 'implicit-transforms[realdata]'``).
    """
    path = require_file("gas", root, MAF_FILES["gas"][0], SOURCE)
    pd = _pandas("gas")
    try:
        data = pd.read_pickle(path)
    except Exception as err:  # unpickling raises anything
        raise ValueError(f"gas: {str(path)!r} could not be unpickled: {err}") from None
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"gas: {str(path)!r}: expected a pandas DataFrame, got {type(data)}")
    missing = [c for c in ("Meth", "Eth", "Time") if c not in data.columns]
    if missing:
        raise ValueError(
            f"gas: {str(path)!r}: no column(s) {missing} (columns: {list(data.columns)})"
        )
    data = data.drop(columns=["Meth", "Eth", "Time"]).astype(np.float64)

    def counts(frame: Any) -> np.ndarray:
        return np.asarray((frame.corr() > threshold).to_numpy().sum(axis=1))

    b = counts(data)
    while np.any(b > 1):
        data = data.drop(columns=data.columns[int(np.where(b > 1)[0][0])])
        b = counts(data)
    data = (data - data.mean()) / data.std()
    train, val, test = _tail_split(data.to_numpy(dtype=np.float64), "gas")
    return _finish("gas", train, val, test)


def min_value_count(column: np.ndarray) -> int:
    """How often the *smallest* value of ``column`` occurs.

    This is what the reference's feature filter measures (HEPMASS, MINIBOONE):
    ``np.array([v for k, v in sorted(Counter(feature).items())])[0]`` is the count of the
    smallest key, not of the most frequent value. A feature with ``> 5`` is dropped.

    Example:
        >>> min_value_count(np.array([3.0, 0.0, 0.0, 3.0, 3.0]))
        2
    """
    counts = Counter(column.tolist())
    return int(counts[min(counts)])


def load_hepmass(root: str | Path | None) -> Splits:
    r"""HEPMASS (UCI, the ``1000`` files: signal mass 1000), ``D = 21``.

    Reads ``hepmass/1000_train.csv`` and ``hepmass/1000_test.csv`` (header ``# label, f0, ...,
    f26, mass``) with ``pandas.read_csv(index_col=False)``. Steps of the reference:

    1. Keep the rows whose first column (the label) is 1 (signal), in both files; drop the
       label column.
    2. Drop the *last* column of the test file (the reference: "because the data set is
       messed up"; it does not say how). If the test file has the training file's columns,
       the dropped one is ``mass``: pandas' alignment in step 3 re-creates it as NaN, and it
       must be removed in step 4 (it is, when the training ``mass`` is constant). This code
       does what the reference does and refuses any NaN left at the end.
    3. Standardise both by the training file's mean and standard deviation (pandas,
       ``ddof=1``; computed before the validation rows are split off), aligned by column name.
    4. Remove every feature whose *smallest* value occurs more than 5 times in the training
       data (:func:`min_value_count`; the reference's ``Counter`` idiom), leaving 21 on the
       release. The reference counts on the standardised values; this code counts on the
       values before standardising. Standardising maps equal values to equal values and keeps
       the order, so the counts are the same, except for a constant column: standardised it
       is all NaN (``0 / 0``), which the reference's ``Counter`` sees as distinct values and
       keeps (NaN in the output), while here it is removed. The reference never produced NaN
       on the release (its results are finite), so on the release both agree; which
       features go there (the b-tags of the jets? the training ``mass``?) is not stated by
       the reference and not checked here without the file.
    5. Validation: the last ``int(0.1 N)`` training rows; the test file is the test set.

    Raises:
        FileNotFoundError: one line naming the missing file and where it goes.
        ValueError: a file without a label column of 0/1, or NaN after preprocessing.
        ImportError: without pandas (``pip install 'implicit-transforms[realdata]'``).
    """
    paths = [require_file("hepmass", root, rel, SOURCE) for rel in MAF_FILES["hepmass"]]
    pd = _pandas("hepmass")
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, index_col=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"hepmass: {str(path)!r} could not be read as csv: {err}") from None
        if frame.shape[1] < 3:
            raise ValueError(f"hepmass: {str(path)!r}: expected label and features, got "
                             f"{frame.shape[1]} column(s)")  # fmt: skip
        frame = frame[frame[frame.columns[0]] == 1]
        if len(frame) == 0:
            raise ValueError(f"hepmass: {str(path)!r} has no rows of label 1 (signal)")
        frames.append(frame.drop(columns=frame.columns[0]))
    train, test = frames
    test = test.drop(columns=test.columns[-1])
    raw = train.to_numpy(dtype=np.float64)
    keep = [i for i in range(raw.shape[1]) if min_value_count(raw[:, i]) <= 5]
    mu, s = train.mean(), train.std()
    train_arr = ((train - mu) / s).to_numpy(dtype=np.float64)
    test_arr = ((test - mu) / s)[list(train.columns)].to_numpy(dtype=np.float64)
    train_arr, test_arr = train_arr[:, keep], test_arr[:, keep]
    n_val = int(0.1 * train_arr.shape[0])
    if n_val < 1 or train_arr.shape[0] - n_val < 2:
        raise ValueError(f"hepmass: {train_arr.shape[0]} signal rows are too few to split")
    return _finish("hepmass", train_arr[:-n_val], train_arr[-n_val:], test_arr)


def load_miniboone(root: str | Path | None) -> Splits:
    r"""MINIBOONE (UCI MiniBooNE particle identification), ``D = 43``.

    Reads ``miniboone/data.npy``, already cleaned by the release: the reference's comments say
    the rows with ``x_0 < -100`` (outliers) and the features whose smallest value occurs more
    than 5 times were removed before saving, leaving ``(N, 43)``. Steps of the reference:

    1. No shuffle: test is the last ``int(0.1 N)`` rows, validation the last ``int(0.1 N')``
       of the other ``N'``, training the rest.
    2. Standardise all three by the mean and standard deviation (``ddof=0``) of training and
       validation together.

    Raises:
        FileNotFoundError: one line naming the file and where it goes.
        ValueError: the file is not an array ``(N, 43)`` of numbers.
    """
    path = require_file("miniboone", root, MAF_FILES["miniboone"][0], SOURCE)
    data = _load_npy(path, "miniboone", MAF_DIMENSIONS["miniboone"])
    train, val, test = _tail_split(data, "miniboone")
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return _finish("miniboone", (train - mu) / s, (val - mu) / s, (test - mu) / s)


def load_bsds300(root: str | Path | None) -> Splits:
    r"""BSDS300 patches (8x8 grey natural-image patches of Uria et al.), ``D = 63``.

    Reads ``BSDS300/BSDS300.hdf5`` with the data sets ``train``, ``validation`` and ``test``,
    each ``(N, 63)``, used as they are (the reference does no preprocessing: the patches were
    dequantised, mean-subtracted and had their bottom-right pixel dropped when the file was
    made; :func:`implicit_transforms.data.bundled.load_patches` does the same to other photos).

    Raises:
        FileNotFoundError: one line naming the file and where it goes.
        ValueError: a part is missing or is not ``(N, 63)``.
        ImportError: without h5py (``pip install 'implicit-transforms[realdata]'``).
    """
    path = require_file("bsds300", root, MAF_FILES["bsds300"][0], SOURCE)
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "the bsds300 data set is read with h5py: pip install 'implicit-transforms[realdata]'"
        ) from err
    parts = []
    try:
        with h5py.File(path, "r") as f:
            for key in ("train", "validation", "test"):
                if key not in f:
                    raise ValueError(f"bsds300: {str(path)!r} has no data set {key!r} "
                                     f"(has {sorted(f.keys())})")  # fmt: skip
                parts.append(np.asarray(f[key][:], dtype=np.float64))
    except OSError as err:
        raise ValueError(f"bsds300: {str(path)!r} could not be read as HDF5: {err}") from None
    return _finish("bsds300", *parts)


#: Name -> loader ``loader(root) -> Splits``.
MAF_DATASETS = {
    "power": load_power,
    "gas": load_gas,
    "hepmass": load_hepmass,
    "miniboone": load_miniboone,
    "bsds300": load_bsds300,
}
