"""Test conventions: float64 by default, seeded RNG per test, ``--device``, ``gpu``/``slow`` markers.

Warnings raised by implicit-transforms itself are turned into errors by ``pyproject.toml``.
The shared registries live in ``cases.py`` next to this file; this folder is put on
``sys.path`` here so that ``from cases import ...`` works under every pytest import mode
(``prepend``, ``append``, ``importlib``) and from any working directory.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda, ...)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _float64_and_seed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs in float64 with a seed derived from its id (stable across runs)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
    torch.set_default_dtype(old)
