"""The files of one run directory, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    """Paths of a run: ``config.json`` (resolved settings), ``metrics.jsonl`` (one JSON object
    per step and per validation), ``checkpoint.pt`` (latest state, for ``--resume``),
    ``best.pt`` (weights with the best validation likelihood), ``figure.png``, ``report.json``
    and ``samples.npy``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def figure(self) -> Path:
        return self.root / "figure.png"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.npy"

    def require(self, *paths: Path) -> None:
        """Raise ``ValueError`` naming the first missing file (a run dir written by ``train``)."""
        if not self.root.is_dir():
            raise ValueError(f"run directory {str(self.root)!r} does not exist")
        for p in paths:
            if not p.is_file():
                raise ValueError(
                    f"run directory {str(self.root)!r} has no {p.name}; is it a directory "
                    "written by `implicit-transforms train`?"
                )
