r"""Image data sets as integer tensors ``(N, C, H, W)`` with ``L`` grey levels, split into
train / validation / test.

* ``digits``: scikit-learn's 1,797 handwritten digits, ``1 x 8 x 8`` with 17 grey levels
  (0..16); ships with scikit-learn, nothing to download. No official split: a seeded
  permutation gives train / validation / test.
* ``mnist``, ``fashion-mnist``: ``1 x 28 x 28``, 256 levels; ``cifar10``: ``3 x 32 x 32``, 256
  levels. Read by torchvision's own dataset classes from files you put under a data root (this
  library never downloads); the official test split is the test split, and a seeded fraction
  of the official training split is held out for validation.

Example:
    >>> data = load_digits(val_fraction=0.1, test_fraction=0.2, seed=0)
    >>> data.shape, data.levels, len(data.train), len(data.validation), len(data.test)
    ((1, 8, 8), 17, 1258, 180, 359)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_DATASETS",
    "TORCHVISION_FILES",
    "ImageData",
    "load_digits",
    "load_image_dataset",
    "load_torchvision",
    "split_images",
]


@dataclass(frozen=True)
class ImageData:
    """Integer images ``(N, C, H, W)`` (uint8, values ``0 .. levels - 1``) and labels ``(N,)``.

    Attributes:
        name: the data set's name.
        levels: grey levels per channel ``L`` (17 for digits, 256 for 8-bit images).
        num_classes: number of labels.
        train: training images, ``(N_train, C, H, W)`` uint8.
        train_labels: their labels, ``(N_train,)`` int64.
        validation: validation images, ``(N_val, C, H, W)`` uint8.
        validation_labels: their labels, ``(N_val,)``.
        test: test images, ``(N_test, C, H, W)`` uint8.
        test_labels: their labels, ``(N_test,)``.

    Example:
        >>> import torch
        >>> images = torch.randint(0, 4, (20, 1, 2, 2), dtype=torch.uint8)
        >>> data = split_images(images, torch.zeros(20, dtype=torch.long), name="toy", levels=4,
        ...                     num_classes=1, val_fraction=0.1, test_fraction=0.1, seed=0)
        >>> data.shape, data.dims, (len(data.train), len(data.validation), len(data.test))
        ((1, 2, 2), 4, (16, 2, 2))
    """

    name: str
    levels: int
    num_classes: int
    train: Tensor
    train_labels: Tensor
    validation: Tensor
    validation_labels: Tensor
    test: Tensor
    test_labels: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def dims(self) -> int:
        """``D = C * H * W``."""
        return math.prod(self.shape)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def split_images(
    images: Tensor,
    labels: Tensor,
    *,
    name: str,
    levels: int,
    num_classes: int,
    val_fraction: float,
    test_fraction: float | None,
    seed: int,
    test: tuple[Tensor, Tensor] | None = None,
) -> ImageData:
    """Split ``images: (N, C, H, W)`` by a seeded permutation.

    ``round(N * val_fraction)`` images go to validation and, unless an official ``test`` pair
    is given, ``round(N * test_fraction)`` to test; the rest is training data (each split
    holds at least one image).

    Args:
        images: ``(N, C, H, W)`` uint8 pixels.
        labels: ``(N,)`` labels.
        name: the data set's name.
        levels: grey levels per channel.
        num_classes: number of labels.
        val_fraction: fraction held out for validation, in ``(0, 1)``.
        test_fraction: fraction held out for test, in ``(0, 1)``; ignored (may be ``None``)
            when ``test`` is given.
        seed: seed of the permutation.
        test: an official ``(images, labels)`` test split.

    Returns:
        An :class:`ImageData` (see its example).

    Raises:
        ValueError: for a fraction outside ``(0, 1)``, a missing ``test_fraction``, or too
            few images to split.
    """
    _check_fraction("val_fraction", val_fraction)
    n = int(images.shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    if test is None:
        if test_fraction is None:
            raise ValueError("test_fraction is needed when no official test split is given")
        _check_fraction("test_fraction", test_fraction)
        n_test = max(1, round(n * test_fraction))
        test_idx, perm = perm[:n_test], perm[n_test:]
        test = (images[test_idx], labels[test_idx])
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if len(train_idx) < 2:
        raise ValueError(f"data set {name!r} has {n} images: too few to split")
    return ImageData(
        name,
        levels,
        num_classes,
        images[train_idx].contiguous(),
        labels[train_idx].contiguous(),
        images[val_idx].contiguous(),
        labels[val_idx].contiguous(),
        test[0].contiguous(),
        test[1].contiguous(),
    )


def load_digits(
    *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> ImageData:
    """scikit-learn's 8x8 digits: 1,797 images ``(1, 8, 8)`` with 17 grey levels (0..16).

    Ships with scikit-learn (the ``images`` extra): nothing is downloaded. The split is a
    seeded permutation (:func:`split_images`).

    Args:
        val_fraction: fraction held out for validation.
        test_fraction: fraction held out for test.
        seed: seed of the split.

    Returns:
        An :class:`ImageData` with ``levels=17`` and ``num_classes=10``.

    Raises:
        ImportError: without scikit-learn (``pip install 'implicit-transforms[images]'``).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'implicit-transforms[images]'"
        ) from err
    raw = sk_load_digits()
    images = torch.as_tensor(np.asarray(raw.images), dtype=torch.float64)
    if not bool((images == images.round()).all()) or images.min() < 0 or images.max() > 16:
        raise ValueError("scikit-learn's digits are not integers in 0..16 (unexpected version?)")
    return split_images(
        images.to(torch.uint8)[:, None],
        torch.as_tensor(np.asarray(raw.target), dtype=torch.long),
        name="digits",
        levels=17,
        num_classes=10,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

#: The files torchvision reads (with ``download=False``) for each data set, relative to the
#: data root. MNIST-style files must be uncompressed (``gunzip *.gz``).
TORCHVISION_FILES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(f"MNIST/raw/{f}" for f in _IDX_FILES),
    "fashion-mnist": tuple(f"FashionMNIST/raw/{f}" for f in _IDX_FILES),
    "cifar10": tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR_FILES),
}

_SOURCES = {
    "mnist": "the four MNIST idx files, uncompressed",
    "fashion-mnist": "the four Fashion-MNIST idx files, uncompressed",
    "cifar10": "the CIFAR-10 python version (cifar-10-python.tar.gz) extracted",
}


def missing_files(name: str, root: str | Path) -> list[str]:
    """The files of :data:`TORCHVISION_FILES` that are not under ``root``."""
    return [f for f in TORCHVISION_FILES[name] if not (Path(root) / f).is_file()]


def load_torchvision(
    name: str, root: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0
) -> ImageData:
    """MNIST, Fashion-MNIST or CIFAR-10 from local files, read by torchvision's dataset classes.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        root: the data root holding the files of
            :data:`~implicit_transforms.images.data.TORCHVISION_FILES` (nothing is downloaded).
        val_fraction: fraction of the official training split held out for validation.
        seed: seed of that hold-out.

    Returns:
        An :class:`ImageData` with ``levels=256`` and ``num_classes=10``; the official test
        split is its test split.

    Raises:
        ValueError: in one line, naming every missing file and where it must go.
        ImportError: without torchvision (``pip install 'implicit-transforms[vision]'``).
    """
    if name not in TORCHVISION_FILES:
        raise ValueError(f"unknown torchvision data set {name!r}: expected one of "
                         f"{', '.join(TORCHVISION_FILES)}")  # fmt: skip
    if root is None:
        raise ValueError(
            f"{name} is read from local files: pass root=DIR (the data root) with "
            f"{', '.join(TORCHVISION_FILES[name])} under DIR ({_SOURCES[name]})"
        )
    root = Path(root)
    missing = missing_files(name, root)
    if missing:
        raise ValueError(
            f"{name}: missing {len(missing)} file(s) under data root {str(root)!r}: put "
            f"{', '.join(str(root / f) for f in missing)} there ({_SOURCES[name]}; "
            "nothing is downloaded)"
        )
    try:
        import torchvision.datasets as tvd
    except ImportError as err:
        raise ImportError(
            f"{name} is read with torchvision: pip install 'implicit-transforms[vision]'"
        ) from err
    classes: dict[str, Callable[..., object]] = {
        "mnist": tvd.MNIST,
        "fashion-mnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
    }
    try:
        parts = [classes[name](str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(f"{name}: torchvision could not read the files under {str(root)!r}: "
                         f"{err}") from None  # fmt: skip
    arrays = []
    for ds in parts:
        data = torch.as_tensor(np.asarray(ds.data))  # type: ignore[attr-defined]
        images = data[:, None] if data.dim() == 3 else data.permute(0, 3, 1, 2)  # NHWC -> NCHW
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)  # type: ignore[attr-defined]
        if images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"{name}: unexpected data from torchvision: {images.dtype}, "
                             f"{tuple(images.shape)} images, {len(labels)} labels")  # fmt: skip
        arrays.append((images.contiguous(), labels))
    (train, train_labels), test = arrays
    return split_images(
        train,
        train_labels,
        name=name,
        levels=256,
        num_classes=10,
        val_fraction=val_fraction,
        test_fraction=None,
        seed=seed,
        test=test,
    )


IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
"""The image data sets :func:`load_image_dataset` knows."""


def load_image_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageData:
    """One of :data:`IMAGE_DATASETS` (``test_fraction`` applies to digits only: the others
    have an official test split).

    Args:
        name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        data_root: the directory holding the torchvision files (unused for digits).
        val_fraction: fraction held out for validation.
        test_fraction: fraction held out for test (digits only).
        seed: seed of the split.

    Returns:
        An :class:`ImageData`.

    Raises:
        ValueError: for an unknown name or missing files.
    """
    if name == "digits":
        return load_digits(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if name in TORCHVISION_FILES:
        return load_torchvision(name, data_root, val_fraction=val_fraction, seed=seed)
    raise ValueError(
        f"unknown image data set {name!r}: expected one of {', '.join(IMAGE_DATASETS)}"
    )
