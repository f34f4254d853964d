"""ImpFlow paper, Fig. 2: residual flows cannot fit a steep 1-D function; one implicit block can.

Fits f(x) = L x (slope L = 10 on the ball [-1, 1]) by least squares with 1, 2 and 3 residual
blocks, with one implicit block and with one monotone (Cayley) block, whose slopes reach
(1 + c)/(1 - c) for a network with Lipschitz constant c. Theorem 3 of the paper: any l-block residual flow has
sup-error >= r/2 (L - 2^l) on a ball of radius r where f expands by L, while one implicit
block represents f exactly.

Run:  .venv/bin/python benchmarks/steep_1d.py [--steps 2000] [--out benchmarks/results] [--smoke]
Prints the table and writes steep_1d.json (with the environment), steep_1d.md and steep_1d.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from implicit_transforms import InvertibleBlock, impflow_block, monotone_block, resflow_block

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    environment,
    markdown_table,
    output_folder,
    parser,
    write_json,
    write_markdown,
)

SLOPE = 10.0
RADIUS = 1.0


def target(x: torch.Tensor) -> torch.Tensor:
    """The steep monotone function to fit."""
    return SLOPE * x


def theorem3_bound(n_blocks: int) -> float:
    """Lower bound r/2 (L - 2^l) on the sup error of an l-block residual flow (0 if vacuous)."""
    return max(0.0, RADIUS / 2 * (SLOPE - 2.0**n_blocks))


class Stack(nn.Module):
    """Blocks applied in sequence (forward direction only)."""

    def __init__(self, blocks: list[InvertibleBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.forward_and_logdet(x)[0]
        return x


def fit(model: nn.Module, steps: int, lr: float = 5e-3, seed: int = 0) -> tuple[float, float]:
    """Least-squares fit on [-r, r]; returns (sup error, RMS error) on a fine grid."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x = (torch.rand(256, 1) * 2 - 1) * RADIUS
        loss = (model(x) - target(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    grid = torch.linspace(-RADIUS, RADIUS, 401)[:, None]
    with torch.no_grad():
        err = (model(grid) - target(grid)).abs()
    return float(err.max()), float(err.pow(2).mean().sqrt())


def build(kind: str, n_blocks: int, hidden: int = 32) -> nn.Module:
    """``kind`` is 'resflow', 'impflow' or 'monotone'; the papers' LipSwish networks (the
    recorded runs)."""
    factory = {"resflow": resflow_block, "impflow": impflow_block, "monotone": monotone_block}[kind]
    return Stack(
        [factory(1, [hidden, hidden], coeff=0.97, activation="lipswish") for _ in range(n_blocks)]
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()
    if args.smoke:
        args.steps = 2
    out = output_folder(args, RESULTS, "steep_1d")
    env = environment()
    torch.set_default_dtype(torch.float64)
    rows = []
    models = {}
    for kind, n in [
        ("resflow", 1),
        ("resflow", 2),
        ("resflow", 3),
        ("impflow", 1),
        ("monotone", 1),
    ]:
        torch.manual_seed(0)
        model = build(kind, n)
        start = time.perf_counter()
        sup, rms = fit(model, args.steps)
        seconds = time.perf_counter() - start
        bound = theorem3_bound(n) if kind == "resflow" else 0.0
        rows.append(
            {
                "model": f"{kind}-{n}",
                "sup_error": sup,
                "rms_error": rms,
                "theorem3_lower_bound": bound,
                "seconds": seconds,
            }
        )
        models[f"{kind}-{n}"] = model
        print(
            f"{kind}-{n:<2d} sup error {sup:8.4f}  rms {rms:8.4f}  Thm-3 bound {bound:6.2f}  ({seconds:.0f}s)"
        )
    write_json(out / "steep_1d.json", {"steps": args.steps, "slope": SLOPE, "rows": rows}, env)
    table = markdown_table(
        ["model", "sup error", "RMS error", "Theorem-3 lower bound r/2 (L - 2^l)"],
        [
            [
                r["model"],
                f"{r['sup_error']:.3f}",
                f"{r['rms_error']:.3f}",
                f"{r['theorem3_lower_bound']:.2f}",
            ]
            for r in rows
        ],
    )
    write_markdown(out / "steep_1d.md", table, env)
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install implicit-transforms[plot]): no figure")
        return
    grid = torch.linspace(-RADIUS, RADIUS, 401)[:, None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, target(grid), "k--", label="target f(x) = 10x")
    with torch.no_grad():
        for name, model in models.items():
            ax.plot(grid, model(grid), label=name)
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.legend()
    ax.set_title("Fitting a steep 1-D function (ImpFlow paper, Fig. 2)")
    fig.tight_layout()
    fig.savefig(out / "steep_1d.png", dpi=120)
    print(f"wrote {out / 'steep_1d.json'} and {out / 'steep_1d.png'}")


if __name__ == "__main__":
    main()
