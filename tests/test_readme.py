"""The README's Python examples run as written (so they never rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("nflows")
pytest.importorskip("pyro")

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    import torch

    torch.set_default_dtype(torch.float32)  # as a user's session would be
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
