"""Cost of the spectral normalisation per training step: content-keyed exact norms (current)
against the round-1 policy (one power iteration when the weight's version counter changes,
which several optimisers bypass), measured interleaved in one process.

    .venv/bin/python benchmarks/spectral_cost.py [--repeats 30]

Prints the median step time of each model under both policies and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import ActNorm, CompositeTransform

from implicit_transforms.lipschitz import SpectralConv2d, SpectralLinear


@contextmanager
def round_one_policy(model: torch.nn.Module) -> Iterator[None]:
    """Patch the layers of ``model`` to the round-1 behaviour: power iteration (one step) only
    when ``(weight._version, weight.data_ptr())`` changed, in training mode; no exact norms."""
    layers = [m for m in model.modules() if isinstance(m, (SpectralLinear, SpectralConv2d))]
    saved = [(m.exact, m.__dict__.get("_sync")) for m in layers]

    def old_sync(self: Any) -> None:
        if not self._ready():
            return
        key = (self.weight._version, self.weight.data_ptr())
        if self.training and getattr(self, "_old_key", None) != key:
            with torch.no_grad():
                self._iterate(self.weight.detach(), 1)
            self._old_key = key

    for m in layers:
        if m.exact:  # give the power-iteration buffers a converged start, as round 1 had
            m.exact = False
            m._estimate_of = None
            with torch.no_grad():
                m._iterate_to(m.weight.detach(), 1e-6, 500)
        m._sync = old_sync.__get__(m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m, (exact, sync) in zip(layers, saved, strict=True):
            m.exact = exact
            m._estimate_of = None
            if sync is None:
                del m._sync
            else:
                m._sync = sync


def step_fn(flow: Flow, data: torch.Tensor, batch: int) -> Callable[[], None]:
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def step() -> None:
        x = data[torch.randint(0, data.shape[0], (batch,))]
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def models() -> dict[str, tuple[Flow, torch.Tensor, int]]:
    torch.manual_seed(0)
    out: dict[str, tuple[Flow, torch.Tensor, int]] = {}
    layers: list[Any] = []
    for _ in range(4):
        layers += [ActNorm(2), ImpFlowTransform(2, [128, 128], activation="sin")]
    out["ImpFlow-4, 2-D, [128,128], batch 256"] = (
        Flow(CompositeTransform(layers), StandardNormal([2])),
        torch.randn(4096, 2),
        256,
    )
    layers = []
    for _ in range(8):
        layers += [ActNorm(2), ResFlowTransform(2, [128, 128], activation="sin")]
    out["ResFlow-8, 2-D, [128,128], batch 256"] = (
        Flow(CompositeTransform(layers), StandardNormal([2])),
        torch.randn(4096, 2),
        256,
    )
    out["ResFlow-4, images 4x4x4, 32 channels, batch 64"] = (
        Flow(
            CompositeTransform([ResFlowTransform((4, 4, 4), 32) for _ in range(4)]),
            StandardNormal([4, 4, 4]),
        ),
        torch.randn(1024, 4, 4, 4),
        64,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| model | current (ms/step) | round-1 policy (ms/step) | ratio |\n|---|---|---|---|")
    for name, (flow, data, batch) in models().items():
        flow.train()
        step = step_fn(flow, data, batch)
        for _ in range(3):
            step()
        times: dict[str, list[float]] = {"current": [], "old": []}
        for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
            t0 = time.perf_counter()
            step()
            times["current"].append(time.perf_counter() - t0)
            with round_one_policy(flow):
                step()  # the first step after switching re-estimates: not timed
                t0 = time.perf_counter()
                step()
                times["old"].append(time.perf_counter() - t0)
            step()  # switching back re-estimates too: not timed
        new, old = (1e3 * statistics.median(times[k]) for k in ("current", "old"))
        print(f"| {name} | {new:.1f} | {old:.1f} | {new / old:.3f} |", flush=True)


if __name__ == "__main__":
    main()
