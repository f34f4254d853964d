"""The Lipschitz bound and its cost at every width: dense layers 128-1024, convolutions 64-512.

Two measurements, each from the public API only, so the same script runs on any version of
the library (run it once per checkout and compare):

* ``bounds``: a ResFlow block ``[W, W]`` (D = 4) trained for ``--steps`` steps on an expanding
  objective with Adam at lr 1e-3 / 3e-3 / 1e-2 and SGD at lr 1e-1; after **every** training
  forward, the exact norm (float64 SVD) of every weight the block applied, over ``coeff``.
  Above 1 the guarantee is broken.
* ``cost``: CPU time of one training step (forward, log-det, backward, Adam step) of the same
  block (dense, batch 256) and of a ``LipschitzCNN`` on 8x8 inputs (batch 16): 16 image
  channels and ``C`` hidden ones (the shape of ``image_flow``'s networks: its 3x3
  convolutions have one small side), and ``C`` of both (every convolution wide), medians over
  ``--repeats`` steps, one thread.

Run with ``--compare OTHER_CHECKOUT`` to interleave the cost measurement with another
checkout of the library in subprocesses (A, B, A, B, ...) and print the ratios.

    OMP_NUM_THREADS=1 python benchmarks/widths.py --compare ../old-checkout [--out DIR] [--smoke]

Times are medians of process CPU time (``_common.median_time``). Writes ``widths.{json,md}``
(with the environment) to ``--out`` (default ``benchmarks/results``). Results:
``benchmarks/README.md`` ("Certified bounds at every width").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from implicit_transforms.blocks import resflow_block
from implicit_transforms.lipschitz import LipschitzCNN

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    environment,
    median_time,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)

WIDTHS = [128, 256, 384, 512, 1024]
CHANNELS = [64, 128, 256, 512]  # hidden channels of a LipschitzCNN on 16 image channels
WIDE_CHANNELS = [96, 128, 256]  # image and hidden channels both this wide (3x3 convs certified)
OPTIMIZERS = {
    "adam-1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam-3e-3": lambda p: torch.optim.Adam(p, lr=3e-3),
    "adam-1e-2": lambda p: torch.optim.Adam(p, lr=1e-2),
    "sgd-1e-1": lambda p: torch.optim.SGD(p, lr=1e-1),
}


def _applied_worst(model: torch.nn.Module) -> float:
    worst = 0.0
    for m in model.modules():
        if hasattr(m, "normalized_weight") and hasattr(m, "coeff") and m.weight.dim() == 2:
            w = m.normalized_weight().detach().double()
            worst = max(worst, float(torch.linalg.matrix_norm(w, ord=2)) / m.coeff)
    return worst


def bounds(width: int, opt_name: str, steps: int) -> float:
    torch.manual_seed(0)
    block = resflow_block(4, [width, width])
    opt = OPTIMIZERS[opt_name](list(block.parameters()))
    data = 0.01 * torch.randn(1024, 4)
    worst = 0.0
    for _ in range(steps):
        z, ld = block.forward_and_logdet(data[torch.randint(0, 1024, (64,))])
        worst = max(worst, _applied_worst(block))
        loss = (0.5 * z.pow(2).sum(1) - ld).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return worst


def cost_dense(width: int, repeats: int) -> float:
    torch.manual_seed(0)
    block = resflow_block(4, [width, width])
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)
    x = torch.randn(256, 4)

    def step() -> None:
        z, ld = block.forward_and_logdet(x)
        loss = (0.5 * z.pow(2).sum(1) - ld).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return median_time(step, repeats, warmup=2)


def cost_conv(image_channels: int, hidden: int, repeats: int) -> float:
    torch.manual_seed(0)
    net = LipschitzCNN(image_channels, hidden, coeff=0.97)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(16, image_channels, 8, 8)

    def step() -> None:
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return median_time(step, repeats, warmup=2)


def _costs(repeats: int) -> dict[str, float]:
    out = {f"dense-{w}": cost_dense(w, repeats) for w in WIDTHS}
    out.update({f"conv-16x{c}": cost_conv(16, c, repeats) for c in CHANNELS})
    out.update({f"conv-{c}x{c}": cost_conv(c, c, max(3, repeats // 3)) for c in WIDE_CHANNELS})
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compare", type=Path, help="another checkout with its own .venv")
    p.add_argument("--only", choices=["bounds", "cost"])
    p.add_argument("--json", action="store_true", help="print one JSON object (internal)")
    args = p.parse_args()
    one_thread()
    if args.smoke:
        WIDTHS[:] = [8, 16]
        CHANNELS[:] = [4]
        WIDE_CHANNELS[:] = [4]
        args.steps, args.repeats, args.rounds = 2, 1, 1
    result: dict[str, dict[str, float]] = {}
    if args.only in (None, "bounds"):
        result["bounds"] = {
            f"{w}/{o}": bounds(w, o, args.steps) for w in WIDTHS for o in OPTIMIZERS
        }
    if args.json:
        if args.only in (None, "cost"):
            result["cost"] = _costs(args.repeats)
        print(json.dumps(result))
        return
    out = output_folder(args, RESULTS, "widths")
    env = environment()
    lines: list[str] = []
    if "bounds" in result:
        lines.append("applied norm / coeff, worst over every training forward (> 1: broken)")
        for key, value in result["bounds"].items():
            lines.append(f"  {key:>16}: {value:.4f}")
        print("\n".join(lines), flush=True)
    if args.only == "bounds":
        _write(out, args, result, {}, lines, env)
        return
    runs: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    for _ in range(args.rounds):
        for name, root in (("this", None), ("other", args.compare)):
            if root is None and name == "other":
                continue
            here = Path(__file__).resolve()
            python = str(root / ".venv/bin/python") if root else sys.executable
            cmd = [python, str(here), "--only", "cost", "--json", "--repeats", str(args.repeats)]
            cmd += ["--smoke"] if args.smoke else []
            child_env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_env)
            runs[name].append(json.loads(proc.stdout)["cost"])
    cost_lines = [
        "training step, CPU ms (median over rounds)"
        + (" and ratio this/other" if args.compare else "")
    ]
    for key in runs["this"][0]:
        this = sorted(r[key] for r in runs["this"])[len(runs["this"]) // 2] * 1e3
        line = f"  {key:>10}: {this:9.2f}"
        if runs["other"]:
            other = sorted(r[key] for r in runs["other"])[len(runs["other"]) // 2] * 1e3
            line += f"  other {other:9.2f}  ratio {this / other:.2f}"
        cost_lines.append(line)
    print("\n".join(cost_lines))
    _write(out, args, result, runs, lines + cost_lines, env)


def _write(
    out: Path,
    args: object,
    result: dict[str, dict[str, float]],
    runs: dict[str, list[dict[str, float]]],
    lines: list[str],
    env: dict[str, object],
) -> None:
    settings = {k: str(v) for k, v in vars(args).items()}
    data = {"settings": settings, "bounds": result.get("bounds", {}), "cost_runs": runs}
    write_json(out / "widths.json", data, env)
    write_markdown(out / "widths.md", "```\n" + "\n".join(lines) + "\n```", env)
    print(f"wrote {out / 'widths.json'}")


if __name__ == "__main__":
    main()
