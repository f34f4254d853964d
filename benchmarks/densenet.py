"""Cost per training step of i-DenseNet networks against MLPs at equal parameters (ResFlow).

One ResFlow block per model, each network sized to the parameter count of the reference MLP
``[64, 64]`` (DenseNets: two dense layers of equal growth, the growth that comes closest);
one training step is a forward with the log-det, a backward and an Adam step, at two event
sizes: ``D = 2`` (the exact log-det, as the trainer uses on the toy data) and ``D = 16`` (the
roulette estimator, whose cost is the networks' vector-Jacobian products). Every model runs in
this one process, round-robin (``_common.interleaved``), on one thread; the ratio to the
reference MLP is the number to read.

    OMP_NUM_THREADS=1 python benchmarks/densenet.py [--repeats 30] [--out DIR] [--smoke]

Writes ``densenet.{json,md}`` (with the environment) to ``--out`` (default
``benchmarks/results``). Results: ``benchmarks/README.md`` ("i-DenseNet networks").
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from implicit_transforms.blocks import resflow_block

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    count_parameters,
    environment,
    interleaved,
    markdown_table,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)

REFERENCE = [64, 64]
EVENTS = [2, 16]
# (name, network, activation); the first is the reference every ratio divides by
MODELS = [
    ("mlp sin", "mlp", "sin"),
    ("mlp clipswish", "mlp", "clipswish"),
    ("densenet sin", "densenet", "sin"),
    ("densenet clipswish", "densenet", "clipswish"),
    ("densenet cpila", "densenet", "cpila"),
]


def _block(d: int, hidden: list[int], network: str, activation: str) -> torch.nn.Module:
    return resflow_block(d, hidden, network=network, activation=activation)


def matched_hidden(d: int, network: str, activation: str, target: int) -> list[int]:
    """Two hidden layers of equal size whose parameter count comes closest to ``target``."""

    def size(h: int) -> int:
        return count_parameters(_block(d, [h, h], network, activation))

    lo, hi = 1, 512  # the count grows with h: bisect for the last h at or below the target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= target else (lo, mid)
    best = min((lo, hi), key=lambda h: abs(size(h) - target))
    return [best, best]


def train_step(block: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)

    def step() -> None:
        z, logdet = block.forward_and_logdet(x)
        loss = (0.5 * z.pow(2).sum(-1) - logdet).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    one_thread()
    events, repeats, batch = (EVENTS, args.repeats, args.batch_size)
    if args.smoke:
        events, repeats, batch = [2], 1, 16
    rows, data = [], {}
    for d in events:
        torch.manual_seed(0)
        target = count_parameters(_block(d, REFERENCE, "mlp", "sin"))
        x = torch.randn(batch, d)
        steps, sizes = {}, {}
        for name, network, activation in MODELS:
            hidden = REFERENCE if name == MODELS[0][0] else None
            if hidden is None:
                hidden = matched_hidden(d, network, activation, target)
            block = _block(d, hidden, network, activation)
            sizes[name] = (hidden, count_parameters(block), type(block.logdet_train).__name__)
            steps[name] = train_step(block, x)
        times = interleaved(steps, repeats, warmup=2)
        ref = times[MODELS[0][0]]
        for name, seconds in times.items():
            hidden, params, estimator = sizes[name]
            rows.append(
                [d, name, hidden, params, estimator, f"{seconds * 1e3:.2f}", f"{seconds / ref:.2f}"]
            )
            data[f"D={d}/{name}"] = {
                "hidden": hidden,
                "parameters": params,
                "estimator": estimator,
                "seconds": seconds,
                "ratio": seconds / ref,
            }
    header = ["D", "network", "hidden / growth", "parameters", "log-det", "ms/step", "ratio"]
    table = markdown_table(header, rows)
    print(table)
    out = output_folder(args, RESULTS, "densenet")
    env = environment()
    settings = {"repeats": repeats, "batch_size": batch, "events": events}
    write_json(out / "densenet.json", {"settings": settings, "results": data}, env)
    write_markdown(out / "densenet.md", table, env)


if __name__ == "__main__":
    main()
