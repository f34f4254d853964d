r"""Data for the command-line trainer: seeded 2-D toy densities and the user's own files.

Every toy sampler has the signature ``sampler(n, generator) -> (n, 2)`` tensor (float64) and
draws all randomness from ``generator``, so a data seed fixes the data set exactly. A data set
is split once, by a seeded permutation, into train / validation / test; standardisation
statistics come from the training part only (:class:`DataSplits`).

Example:
    >>> splits = load_dataset("checkerboard", n_samples=1000, seed=0)
    >>> splits.train.shape, splits.validation.shape, splits.test.shape
    (torch.Size([800, 2]), torch.Size([100, 2]), torch.Size([100, 2]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from implicit_transforms.data import REAL_DATASETS, load_real_dataset
from implicit_transforms.data.toy import KNOWN_ENTROPY_BITS, TOY_DATASETS

__all__ = [
    "DEFAULT_N_SAMPLES",
    "KNOWN_ENTROPY_BITS",
    "TOY_DATASETS",
    "DataSplits",
    "load_array",
    "load_dataset",
    "split_and_standardize",
]

Log = Callable[[str], None]

#: Samples drawn from a built-in toy data set unless ``--n-samples`` says otherwise.
DEFAULT_N_SAMPLES = 50_000

#: Header names that pandas and friends give a written row index (``DataFrame.to_csv()``
#: writes an empty name; reading that back and writing again gives ``Unnamed: 0``).
INDEX_HEADERS = ("", "unnamed: 0", "index")


@dataclass(frozen=True)
class DataSplits:
    """A data set split into train / validation / test, in data units (float64).

    ``mean`` and ``std`` (shape ``(D,)``) are computed on ``train`` only; the model applies
    the standardisation ``(x - mean) / std`` as a fixed first layer, so every likelihood is
    reported in the units of the data.
    """

    name: str
    train: Tensor
    validation: Tensor
    test: Tensor
    mean: Tensor
    std: Tensor

    @property
    def features(self) -> int:
        """The dimension ``D``."""
        return int(self.train.shape[1])


def load_array(path: str | Path, log: Log | None = None) -> Tensor:
    """Read an ``(N, D)`` array of vectors from a ``.npy`` or ``.csv`` file (float64).

    A ``.csv`` file may start with one header line. A leading row-index column, as
    ``pandas.DataFrame.to_csv()`` writes it (header name empty, ``Unnamed: 0`` or ``index``,
    integer values), is dropped and ``log`` is told; a header-less file whose first column is
    exactly ``0, 1, ..., N-1`` is refused, since that column is a row number, not a feature.

    Raises ``ValueError`` with the file name and the reason for a missing file, another
    extension, unparsable text, a shape other than ``(N, D)`` with ``D >= 2``, or non-finite
    values.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = path.write_text(",x0,x1\\n0,0.5,1.5\\n1,2.5,-1.0\\n")
        >>> load_array(path, log=print).tolist()  # doctest: +ELLIPSIS
        data file '...d.csv': dropped the first column (header '', values 0..1): a row index ...
        [[0.5, 1.5], [2.5, -1.0]]
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, EOFError, ValueError) as err:
            raise ValueError(f"data file {str(p)!r} could not be read as .npy: {err}") from None
    elif suffix == ".csv":
        try:
            arr = _read_csv(p, log)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"data file {str(p)!r} could not be read: {err}") from None
    else:
        raise ValueError(
            f"data file {str(p)!r}: expected a .npy or .csv file, got {suffix or 'no suffix'!r}"
        )
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"data file {str(p)!r}: expected one array, got {type(arr).__name__}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"data file {str(p)!r}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(
            f"data file {str(p)!r}: expected a 2-D array (N, D) with D >= 2, got shape "
            f"{tuple(arr.shape)}"
        )
    bad = ~np.isfinite(arr.astype(np.float64))
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"data file {str(p)!r}: {int(bad.sum())} NaN/Inf value(s), the first in row {row}"
        )
    return torch.as_tensor(arr, dtype=torch.float64)


def _read_csv(p: Path, log: Log | None) -> np.ndarray:
    lines = p.read_text().splitlines()
    rows = [line for line in lines if line.strip()]
    if not rows:
        raise ValueError(f"data file {str(p)!r} is empty")

    def parse(line: str, number: int) -> list[float]:
        try:
            return [float(v) for v in line.split(",")]
        except ValueError:
            raise ValueError(
                f"data file {str(p)!r}, line {number}: not a comma-separated row of numbers: "
                f"{line[:60]!r}"
            ) from None

    header: list[str] | None = None
    try:
        [float(v) for v in rows[0].split(",")]
    except ValueError:
        header = [name.strip().strip('"').strip() for name in rows[0].split(",")]
    start = 0 if header is None else 1
    parsed = [parse(line, i + 1) for i, line in enumerate(rows) if i >= start]
    if not parsed:
        raise ValueError(f"data file {str(p)!r} has a header but no rows")
    widths = {len(r) for r in parsed}
    if len(widths) != 1:
        raise ValueError(f"data file {str(p)!r}: rows have different lengths {sorted(widths)}")
    arr = np.asarray(parsed, dtype=np.float64)
    return _drop_index_column(arr, header, p, log)


def _drop_index_column(
    arr: np.ndarray, header: list[str] | None, p: Path, log: Log | None
) -> np.ndarray:
    """Drop a leading row index (see :func:`load_array`): training on it would fit a density
    to the row numbers."""
    if arr.shape[1] < 2:
        return arr  # the shape check reports it
    first = arr[:, 0]
    integers = bool(np.all(first == np.round(first)))
    counting = bool(np.array_equal(first, np.arange(len(first))))
    if header is None:
        if counting and len(first) > 2:
            raise ValueError(
                f"data file {str(p)!r}: the first column is the row number 0..{len(first) - 1}, "
                "a row index rather than a feature; remove it, or give it a header line naming "
                "it 'index' (pandas: DataFrame.to_csv(index=False) writes no index)"
            )
        return arr
    if header[0].lower() in INDEX_HEADERS and integers:
        if log is not None:
            values = f"0..{len(first) - 1}" if counting else "integers"
            log(
                f"data file {str(p)!r}: dropped the first column (header {header[0]!r}, values "
                f"{values}): a row index as pandas writes it, not a feature"
            )
        return arr[:, 1:]
    return arr


def split_and_standardize(
    data: Tensor, *, name: str, val_fraction: float, test_fraction: float, seed: int
) -> DataSplits:
    """Shuffle ``data: (N, D)`` with a seeded permutation and split it.

    ``round(N * val_fraction)`` and ``round(N * test_fraction)`` rows (at least one each) go to
    validation and test, the rest to training; ``mean`` and ``std`` come from training only.
    """
    for arg, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{arg} must be in (0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError(
            "val_fraction + test_fraction must leave at least 10% of the data for training, got "
            f"{val_fraction} + {test_fraction}"
        )
    n = int(data.shape[0])
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 2:
        raise ValueError(f"data set {name!r} has {n} rows: too few to split (need at least 4)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = data[perm]
    test, val, train = (
        shuffled[:n_test],
        shuffled[n_test : n_test + n_val],
        shuffled[n_test + n_val :],
    )
    mean, std = train.mean(0), train.std(0)
    flat = (std <= 1e-12 * mean.abs().clamp_min(1.0)).nonzero().flatten().tolist()
    if flat:
        raise ValueError(
            f"data set {name!r}: feature(s) {flat} are constant in the training split; "
            "remove them (a density on a constant feature is degenerate)"
        )
    return DataSplits(name, train.contiguous(), val.contiguous(), test.contiguous(), mean, std)


def load_dataset(
    name: str,
    *,
    n_samples: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    log: Log | None = None,
    data_root: str | Path | None = None,
) -> DataSplits:
    """A built-in toy data set (``n_samples`` draws), a real data set or a ``.npy``/``.csv``
    file, split.

    Args:
        name: a key of :data:`TOY_DATASETS`, one of
            :data:`implicit_transforms.data.REAL_DATASETS` or a path ending in ``.npy`` /
            ``.csv``.
        n_samples: number of toy samples (default :data:`DEFAULT_N_SAMPLES`); files and real
            data sets use all their rows, so giving ``n_samples`` with them is a ``ValueError``.
        val_fraction: fraction of rows for validation (ignored by real data sets: they keep
            their documented split).
        test_fraction: fraction of rows for the test set (likewise).
        seed: seeds the toy sampler and the split (and the bundled real data sets' split).
        log: told what was changed while reading a file (a dropped row index).
        data_root: the directory of the MAF files (real data sets only).
    """
    if name in REAL_DATASETS:
        if n_samples is not None:
            raise ValueError(
                f"n_samples applies to the 2-D toy data sets only; {name!r} has its own "
                f"documented split, got n_samples={n_samples!r}"
            )
        real = load_real_dataset(name, data_root=data_root, seed=seed)
        train, val, test = (torch.as_tensor(a) for a in (real.train, real.validation, real.test))
        return DataSplits(name, train, val, test, train.mean(0), train.std(0))
    if name in TOY_DATASETS:
        n_samples = DEFAULT_N_SAMPLES if n_samples is None else n_samples
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 10:
            raise ValueError(f"n_samples must be an int >= 10, got {n_samples!r}")
        data = TOY_DATASETS[name](n_samples, torch.Generator().manual_seed(seed))
    elif Path(name).suffix.lower() in (".npy", ".csv"):
        if n_samples is not None:
            raise ValueError(
                f"n_samples applies to the built-in data sets, not to the file {name!r} "
                f"(all its rows are used), got n_samples={n_samples!r}"
            )
        data = load_array(name, log)
    else:
        raise ValueError(
            f"unknown dataset {name!r}: expected one of {', '.join(TOY_DATASETS)} "
            "or a path to a .npy/.csv file"
        )
    return split_and_standardize(
        data, name=name, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
