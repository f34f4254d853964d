"""The run figure (matplotlib): for vectors the model density on a grid, the data histogram and
model samples; for images a grid of data next to a grid of samples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "grid_bounds",
    "image_grid",
    "plot_density_figure",
    "plot_image_figure",
    "save_image_grid",
]


def grid_bounds(data: Tensor, margin: float = 0.1) -> tuple[float, float, float, float]:
    """``(x_min, x_max, y_min, y_max)`` of the first two features, widened by ``margin``."""
    lo, hi = data[:, :2].min(0).values, data[:, :2].max(0).values
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def plot_density_figure(
    path: Path,
    data: Tensor,
    samples: Tensor,
    log_density: Callable[[Tensor], Tensor] | None,
    *,
    title: str,
    grid_size: int = 200,
) -> Path:
    """Write a PNG with the data histogram, the model density and a histogram of samples.

    For ``D == 2`` the first panel is ``exp(log_density)`` on a ``grid_size^2`` grid; for
    ``D > 2`` the density panel is left out and the histograms show the first two features.

    Args:
        path: output ``.png`` file.
        data: ``(N, D)`` data (data units).
        samples: ``(M, D)`` model samples.
        log_density: ``(K, 2) -> (K,)`` model log-density, used when ``D == 2``.
        title: the figure title.
        grid_size: grid points per axis.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "the figure needs matplotlib: pip install 'implicit-transforms[plot]'"
        ) from err
    x0, x1, y0, y1 = grid_bounds(data)
    extent = (x0, x1, y0, y1)
    panels = 3 if data.shape[1] == 2 and log_density is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
    ax = list(axes[0])
    if data.shape[1] == 2 and log_density is not None:
        xs = torch.linspace(x0, x1, grid_size, dtype=torch.float64)
        ys = torch.linspace(y0, y1, grid_size, dtype=torch.float64)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        dens = log_density(grid).exp().reshape(grid_size, grid_size).cpu().numpy()
        ax[0].imshow(dens, origin="lower", extent=extent, cmap="magma", aspect="auto")
        ax[0].set_title("model density")
    bins = [np.linspace(x0, x1, grid_size // 2), np.linspace(y0, y1, grid_size // 2)]
    for axis, pts, name in ((ax[-2], data, "data"), (ax[-1], samples, "model samples")):
        arr = pts[:, :2].double().cpu().numpy()
        axis.hist2d(arr[:, 0], arr[:, 1], bins=bins, cmap="magma")
        axis.set_title(f"{name} (features 0, 1)" if data.shape[1] > 2 else name)
    for axis in ax:
        axis.set_xlim(x0, x1)
        axis.set_ylim(y0, y1)
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(images: Tensor, columns: int = 8) -> np.ndarray:
    """``(N, C, H, W)`` values in ``[0, 1]`` as one picture ``(rows (H+1) + 1, cols (W+1) + 1,
    C)`` with 1-pixel gaps (white), row by row."""
    n, c, h, w = images.shape
    rows = max(1, -(-n // columns))
    out = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c))
    arr = images.detach().double().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    for i in range(n):
        r, col = divmod(i, columns)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = arr[
            i
        ]
    return out


def plot_image_figure(path: Path, data: Tensor, samples: Tensor, *, title: str) -> Path:
    """Write a PNG with a grid of data images next to a grid of model samples.

    Args:
        path: output ``.png`` file.
        data: ``(N, C, H, W)`` images in ``[0, 1]``.
        samples: ``(M, C, H, W)`` model samples in ``[0, 1]`` (clamped).
        title: the figure title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.6))
    for ax, imgs, name in (
        (axes[0], data, "data (test split)"),
        (axes[1], samples, "model samples"),
    ):
        grid = image_grid(imgs)
        if grid.shape[2] == 1:
            ax.imshow(grid[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_image_grid(path: Path, images: Tensor, columns: int = 8) -> Path:
    """Write ``(N, C, H, W)`` images in ``[0, 1]`` as one PNG grid (no axes, no title)."""
    plt = _pyplot()
    grid = image_grid(images, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    return path


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "the figure needs matplotlib: pip install 'implicit-transforms[plot]'"
        ) from err
    return plt
