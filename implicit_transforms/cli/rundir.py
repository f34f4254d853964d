"""The files of one run directory, in one place."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "json_line", "json_ready", "json_text"]


def json_ready(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (nested in dicts, lists and tuples) replaced by
    ``None``: JSON has no such numbers, and a string in their place would break readers that
    expect a number or ``null``.

    Example:
        >>> json_ready({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"})
        {'a': None, 'b': [1.0, None], 'c': 'x'}
    """
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any) -> str:
    """Indented strict JSON of :func:`json_ready` ``(obj)`` with a final newline (a file)."""
    return json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n"


def json_line(obj: Any) -> str:
    """One line of strict JSON of :func:`json_ready` ``(obj)`` with a newline (``.jsonl``)."""
    return json.dumps(json_ready(obj), allow_nan=False) + "\n"


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
