"""Fast check of the ImpFlow paper's 1-D claim (Fig. 2, Theorem 3); the full run is
benchmarks/steep_1d.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "steep_1d", Path(__file__).parents[1] / "benchmarks" / "steep_1d.py"
)
assert _spec is not None and _spec.loader is not None
steep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(steep)


@pytest.mark.slow
def test_one_implicit_block_beats_the_residual_lower_bound() -> None:
    bound = steep.theorem3_bound(1)  # r/2 (L - 2) = 4 for slope 10 on [-1, 1]
    torch.manual_seed(0)
    res_sup, _ = steep.fit(steep.build("resflow", 1, hidden=16), steps=100, lr=1e-2)
    torch.manual_seed(0)
    imp_sup, _ = steep.fit(steep.build("impflow", 1, hidden=16), steps=250, lr=1e-2)
    assert res_sup >= bound  # no residual block can do better (Lip < 2)
    assert imp_sup < 0.75 * bound  # one implicit block gets below that floor
