"""Cost of the spectral normalisation per training step: content-keyed exact norms (current)
against the round-1 policy (one power iteration when the weight's version counter changes,
which several optimisers bypass), measured interleaved in one process.

    .venv/bin/python benchmarks/spectral_cost.py [--repeats 30] [--out DIR] [--smoke]

Prints the median step time (process CPU time, ``_common.interleaved``) of each model under
both policies and their ratio; writes ``spectral_cost.{json,md}`` (with the environment) to
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import ActNorm, CompositeTransform

from implicit_transforms.lipschitz import SpectralConv2d, SpectralLinear
from implicit_transforms.lipschitz.spectral import NormStrategy

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    Timed,
    environment,
    interleaved,
    markdown_table,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)


class _PowerEstimate(NormStrategy):
    """Round 1's norm: ``u^T W v`` from the power-iteration vectors, no certificate."""

    def update(self, layer: Any, w: torch.Tensor) -> None:
        layer._iterate(w, 1)

    def sigma(self, layer: Any, weight: torch.Tensor) -> torch.Tensor:
        return layer._power_sigma(weight)


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
        m.norm = _PowerEstimate()  # round 1 divided by the estimate itself, uncertified
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


def models(hidden: int = 128, channels: int = 32) -> dict[str, tuple[Flow, torch.Tensor, int]]:
    """The measured flows (``hidden`` units per dense layer, ``channels`` per convolution)."""
    torch.manual_seed(0)
    out: dict[str, tuple[Flow, torch.Tensor, int]] = {}
    layers: list[Any] = []
    for _ in range(4):
        layers += [ActNorm(2), ImpFlowTransform(2, [hidden, hidden], activation="sin")]
    out[f"ImpFlow-4, 2-D, [{hidden},{hidden}], batch 256"] = (
        Flow(CompositeTransform(layers), StandardNormal([2])),
        torch.randn(4096, 2),
        256,
    )
    layers = []
    for _ in range(8):
        layers += [ActNorm(2), ResFlowTransform(2, [hidden, hidden], activation="sin")]
    out[f"ResFlow-8, 2-D, [{hidden},{hidden}], batch 256"] = (
        Flow(CompositeTransform(layers), StandardNormal([2])),
        torch.randn(4096, 2),
        256,
    )
    out[f"ResFlow-4, images 4x4x4, {channels} channels, batch 64"] = (
        Flow(
            CompositeTransform([ResFlowTransform((4, 4, 4), channels) for _ in range(4)]),
            StandardNormal([4, 4, 4]),
        ),
        torch.randn(1024, 4, 4, 4),
        64,
    )
    return out


def round_one_step(flow: Flow, step: Callable[[], None]) -> Timed:
    """A training step under the round-1 policy. Untimed around it: switching the policy on
    and one step (the first step after switching re-estimates), then switching back and one
    step (switching back re-estimates too)."""
    stack = ExitStack()

    def switch_on() -> None:
        stack.enter_context(round_one_policy(flow))
        step()

    def switch_off() -> None:
        stack.close()
        step()

    return Timed(step, before=switch_on, after=switch_off)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    if args.smoke:
        args.repeats = 1
    out = output_folder(args, RESULTS, "spectral_cost")
    one_thread()
    env = environment()
    header = ["model", "current (ms/step)", "round-1 policy (ms/step)", "ratio"]
    print(markdown_table(header, []))
    rows = []
    sizes = {"hidden": 8, "channels": 4} if args.smoke else {}
    for name, (flow, data, batch) in models(**sizes).items():
        flow.train()
        step = step_fn(flow, data, batch)
        # interleaved, so that load changes hit both alike
        fns = {"current": step, "old": round_one_step(flow, step)}
        t = interleaved(fns, args.repeats, warmup=1 if args.smoke else 3)
        new, old = 1e3 * t["current"], 1e3 * t["old"]
        rows.append([name, f"{new:.1f}", f"{old:.1f}", f"{new / old:.3f}"])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    write_json(out / "spectral_cost.json", {"repeats": args.repeats, "rows": rows}, env)
    write_markdown(out / "spectral_cost.md", markdown_table(header, rows), env)
    print(f"wrote {out / 'spectral_cost.json'}")


if __name__ == "__main__":
    main()
