"""The result of every real-data loader: train / validation / test arrays and the file checks.

The loaders of :mod:`implicit_transforms.data` never download anything. A missing file is a
:class:`FileNotFoundError` whose one line says which file goes where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Splits", "require_file"]


@dataclass(frozen=True)
class Splits:
    """A real data set, already split and preprocessed: three float64 arrays ``(N_*, D)``.

    Attributes:
        name: the data set's name (``"power"``, ``"patches"``, ...).
        train: training rows, shape ``(N_train, D)``.
        validation: validation rows, shape ``(N_validation, D)``.
        test: test rows, shape ``(N_test, D)``.

    Example:
        >>> import numpy as np
        >>> s = Splits("x", np.zeros((3, 2)), np.zeros((1, 2)), np.zeros((1, 2)))
        >>> s.features, s.sizes
        (2, (3, 1, 1))
    """

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        widths = set()
        for part in ("train", "validation", "test"):
            arr = getattr(self, part)
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype != np.float64:
                got = f"{type(arr).__name__} {getattr(arr, 'dtype', '')} {np.shape(arr)}"
                raise ValueError(f"{self.name}: {part} must be a float64 array (N, D), got {got}")
            if len(arr) == 0:
                raise ValueError(f"{self.name}: the {part} split is empty")
            widths.add(arr.shape[1])
        if len(widths) != 1:
            raise ValueError(f"{self.name}: the splits have different widths {sorted(widths)}")

    @property
    def features(self) -> int:
        """The dimension ``D``."""
        return int(self.train.shape[1])

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(N_train, N_validation, N_test)``."""
        return len(self.train), len(self.validation), len(self.test)


def require_file(name: str, root: str | Path | None, relative: str, source: str) -> Path:
    """``root / relative`` if it is a file; otherwise a one-line :class:`FileNotFoundError`.

    Args:
        name: the data set (for the message).
        root: the data root, or ``None`` when none was given.
        relative: the file's path under the data root, e.g. ``"gas/ethylene_CO.pickle"``.
        source: where the file comes from, e.g. ``"the MAF data release"``.
    """
    if root is None:
        raise FileNotFoundError(
            f"{name} is read from local files: pass a data root (root=DIR) and put "
            f"{relative} under it (from {source}; nothing is downloaded)"
        )
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: {str(path)!r} not found: put {relative} under DATA_ROOT {str(root)!r} "
            f"(from {source}; nothing is downloaded)"
        )
    return path
