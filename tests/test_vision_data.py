"""torchvision data sets read from a data root: tiny fixtures written in torchvision's own
on-disk formats (MNIST idx files, CIFAR-10 python pickles) and read by its dataset classes.
These run in CI (the dev extra installs torchvision): not skipped."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from implicit_transforms.images import load_image_dataset
from implicit_transforms.images.data import TORCHVISION_FILES


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, 0x08 = ubyte, number of dims), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 30),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 7),
    }
    for name, arr in arrays.items():
        _write_idx(root / folder / "raw" / name, arr)
    return arrays


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_style_files_read_by_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    arrays = _write_mnist(tmp_path, folder, np.random.default_rng(0))
    data = load_image_dataset(name, data_root=tmp_path, val_fraction=0.2, seed=0)
    assert data.shape == (1, 28, 28) and data.levels == 256 and data.num_classes == 10
    assert (len(data.train), len(data.validation), len(data.test)) == (24, 6, 7)
    # the official test split, pixel for pixel and label for label
    assert torch.equal(
        data.test[:, 0], torch.as_tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.uint8)
    )
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # train + validation is the official training split, permuted
    seen = torch.cat([data.train, data.validation])[:, 0].reshape(30, -1)
    official = torch.as_tensor(arrays["train-images-idx3-ubyte"], dtype=torch.uint8).reshape(30, -1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, official.tolist()))


def _pickle(path: Path, obj: dict[str, object]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_pickles_read_by_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    train_list, batches = [], []
    for i in range(1, 6):
        batch = rng.integers(0, 256, (4, 3 * 32 * 32)).astype(np.uint8)  # rows: R, G, B planes
        batches.append(batch)
        md5 = _pickle(folder / f"data_batch_{i}", {"data": batch, "labels": [i, 0, 1, 2]})
        train_list.append([f"data_batch_{i}", md5])
    test = rng.integers(0, 256, (5, 3 * 32 * 32)).astype(np.uint8)
    test_md5 = _pickle(folder / "test_batch", {"data": test, "labels": [9, 8, 7, 6, 5]})
    meta_md5 = _pickle(folder / "batches.meta", {"label_names": [str(i) for i in range(10)]})
    # torchvision checks the md5 sums of the real CIFAR-10 files; register the fixture's sums
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": meta_md5})
    data = load_image_dataset("cifar10", data_root=tmp_path, val_fraction=0.25, seed=0)
    assert data.shape == (3, 32, 32) and data.levels == 256
    assert (len(data.train), len(data.validation), len(data.test)) == (15, 5, 5)
    assert torch.equal(data.test.reshape(5, -1), torch.as_tensor(test))  # channel-first, as stored
    assert data.test_labels.tolist() == [9, 8, 7, 6, 5]


def test_missing_files_one_line_naming_where_to_put_them(tmp_path: Path) -> None:
    for name, files in TORCHVISION_FILES.items():
        with pytest.raises(ValueError) as info:
            load_image_dataset(name, data_root=tmp_path)
        message = str(info.value)
        assert "\n" not in message
        assert f"missing {len(files)} file(s)" in message
        for f in files:
            assert str(tmp_path / f) in message
    _write_mnist(tmp_path, "MNIST", np.random.default_rng(0))
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match=r"missing 1 file\(s\).*t10k-labels-idx1-ubyte there"):
        load_image_dataset("mnist", data_root=tmp_path)
    with pytest.raises(
        ValueError, match="pass root=DIR \\(the data root\\) with MNIST/raw/train-images"
    ):
        load_image_dataset("mnist", data_root=None)
