"""ImpFlow paper, Table 3 in miniature: ImpFlow vs ResFlow vs a Glow-like coupling flow on
scikit-learn's 8x8 digits, at (about) equal parameter counts and equal CPU time.

All three are multiscale nflows flows from ``image_flow`` (logit -> squeeze -> level 1 ->
factor out half -> squeeze -> level 2): ImpFlow with ``L`` blocks per level, ResFlow with
``2L`` (each ImpFlow block has two networks: the paper's ImpFlow L=6 vs ResFlow L=12
pairing), and a Glow-like baseline whose levels are nflows layers (ActNorm -> invertible 1x1
convolution -> affine coupling with a convolutional residual net) swapped in through
``level_transform``. The models are trained round-robin in one process on one thread, each for
the same CPU-time budget, in slices of ``--slice`` seconds, so load from other jobs hits them
alike. Data: 1,797 digits with 17 grey levels, uniform dequantisation, seeded split
(train / validation / test = 70 / 10 / 20 %). Test bits/dim (17-level convention, see
``implicit_transforms.images.bits``) with the exact log-det (every block acts on at most 64
numbers), averaged over ``--eval-draws`` dequantisation draws per image; standard error over
images.

    .venv/bin/python benchmarks/images.py --budget 600 [--out DIR] [--smoke]

writes ``benchmarks/results/images/{images.json, images.md, samples.png}`` (``--out``), with
the environment.

    .venv/bin/python benchmarks/images.py --cost 300 [--repeats 10] [--out DIR]

measures what an ImpFlow step costs instead: ImpFlow trained ``--cost`` steps (so that its
solves are realistic), then its training step against a ResFlow step (median CPU times,
interleaved in one process), the network evaluations and autograd calls of each step, and the
iterations of each image block's forward solve under other solver settings (start point,
tolerance, Broyden memory, line search, Anderson) with the float32 noise floor of the residual;
writes ``cost.json`` and ``cost.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from implicit_transforms.plugins.nflows import image_flow, initialize_actnorm
from nflows.flows import Flow
from nflows.nn.nets import ConvResidualNet
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    OneByOneConvolution,
    Transform,
)

from implicit_transforms.cli.evaluation import lipschitz_bound
from implicit_transforms.images import bits_per_dim, dequantize, load_digits, summarize_bits

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    count_parameters,
    environment,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)

HERE = Path(__file__).resolve().parent
PAPER = "CIFAR-10, c = 0.9: ImpFlow (L=6) 3.452 vs ResFlow (L=12) 3.469 bits/dim"


def glow_level(hidden: int, steps: int):  # type: ignore[no-untyped-def]
    """A Glow-like level: ``steps`` x (ActNorm -> 1x1 conv -> affine coupling)."""

    def make(level: int, shape: tuple[int, int, int]) -> Transform:
        c = shape[0]
        layers: list[Transform] = []
        for i in range(steps):
            mask = torch.zeros(c)
            mask[(i % 2) :: 2] = 1

            def net(i_: int, o_: int) -> ConvResidualNet:
                return ConvResidualNet(i_, o_, hidden_channels=hidden, num_blocks=1)

            layers += [ActNorm(c), OneByOneConvolution(c), AffineCouplingTransform(mask, net)]
        return CompositeTransform(layers)

    return make


def build(name: str, args: argparse.Namespace) -> Flow:
    common: dict[str, Any] = {"levels": 2, "activation": args.activation, "coeff": args.coeff}
    if name == "impflow":
        return image_flow((1, 8, 8), "impflow", blocks_per_level=args.blocks,
                          hidden_channels=args.hidden, **common)  # fmt: skip
    if name == "resflow":
        return image_flow((1, 8, 8), "resflow", blocks_per_level=2 * args.blocks,
                          hidden_channels=args.hidden, **common)  # fmt: skip
    return image_flow((1, 8, 8), levels=2,
                      level_transform=glow_level(args.glow_hidden, args.glow_steps))  # fmt: skip


@torch.no_grad()
def test_bits(flow: Flow, images: torch.Tensor, levels: int, draws: int, seed: int) -> torch.Tensor:
    """Per-image bits/dim averaged over ``draws`` uniform dequantisations, shape ``(N,)``."""
    flow.eval()
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(images), dtype=torch.float64)
    for _ in range(draws):
        x = dequantize(images.float(), levels, torch.rand(images.shape, generator=g))
        lp = torch.cat([flow.log_prob(chunk) for chunk in x.split(256)])
        total += bits_per_dim(lp.double(), 64, levels)
    return total / draws


def _solver_iterations(flow: Flow) -> list[float] | None:
    """Mean iterations of each block's most recent forward solve (``None``: no solver)."""
    from implicit_transforms.plugins.nflows import BlockTransform

    its = [
        round(float(m.last_solve.iterations.float().mean()), 2)
        for m in flow.modules()
        if isinstance(m, BlockTransform) and m.last_solve is not None
    ]
    return its or None


def grid(images: torch.Tensor, rows: int = 8) -> torch.Tensor:
    """``(rows * cols, 1, 8, 8)`` -> one ``(rows * 9, cols * 9)`` picture with 1-pixel gaps."""
    n = images.shape[0]
    cols = math.ceil(n / rows)
    out = torch.ones(rows * 9 + 1, cols * 9 + 1)
    for i in range(n):
        r, c = divmod(i, cols)
        out[1 + r * 9 : r * 9 + 9, 1 + c * 9 : c * 9 + 9] = images[i, 0]
    return out


def _blocks(flow: Flow) -> list[Any]:
    from implicit_transforms.plugins.nflows import BlockTransform

    return [m for m in flow.modules() if isinstance(m, BlockTransform)]


def _count_step(step: Any, batch: int) -> tuple[float, int]:
    """(network forward evaluations in units of the batch, ``torch.autograd.grad`` calls)."""
    from implicit_transforms.lipschitz import LipschitzNet

    counts = {"fwd": 0.0, "grad": 0}
    evaluate, grad = LipschitzNet.evaluate, torch.autograd.grad

    def counting_evaluate(self: Any, x: torch.Tensor, *a: Any) -> torch.Tensor:
        counts["fwd"] += x.shape[0] / batch
        return evaluate(self, x, *a)

    def counting_grad(*a: Any, **k: Any) -> Any:
        counts["grad"] += 1
        return grad(*a, **k)

    LipschitzNet.evaluate = counting_evaluate  # type: ignore[method-assign,assignment]
    torch.autograd.grad = counting_grad
    try:
        step()
    finally:
        LipschitzNet.evaluate = evaluate  # type: ignore[method-assign]
        torch.autograd.grad = grad
    return counts["fwd"], int(counts["grad"])


def _solve_variants(block: Any, x: torch.Tensor) -> list[tuple[str, str]]:
    """Iterations of one ImpFlow block's forward solve ``z + g_z(z) = x + g_x(x)`` per setting."""
    from implicit_transforms.solvers import Anderson, Broyden, default_tolerance, rowwise

    b = block.block
    rows = []
    with torch.no_grad(), b.frozen():
        target = x + b.net_x(x, None)

        def residual(t: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
            return t + b.net_z(t, None) - (target if r is None else target[r])

        starts = {"target": target, "x": x, "one fixed-point step": target - b.net_z(target, None)}
        variants = {
            "default (Broyden, start x + g_x(x))": (Broyden(on_failure="ignore"), "target"),
            "start x": (Broyden(on_failure="ignore"), "x"),
            "start one fixed-point step (+1 evaluation)": (Broyden(on_failure="ignore"),
                                                           "one fixed-point step"),
            "tolerance 2e-5": (Broyden(on_failure="ignore", atol=2e-5, rtol=2e-5), "target"),
            "tolerance 1e-4": (Broyden(on_failure="ignore", atol=1e-4, rtol=1e-4), "target"),
            "memory 64 (dense)": (Broyden(on_failure="ignore", history=64), "target"),
            "Armijo line search": (Broyden(on_failure="ignore", line_search="armijo"), "target"),
            "Anderson": (Anderson(on_failure="ignore"), "target"),
        }  # fmt: skip
        for name, (solver, start) in variants.items():
            res = solver(rowwise(residual), starts[start], event_dims=3)
            it = res.iterations.float()
            rows.append((name, f"{float(it.mean()):.2f} (max {int(it.max())}), "
                               f"{res.sample_evals} sample evaluations"))  # fmt: skip
    # float32 noise floor: the float32 residual at a float64 root, against the tolerance
    b64 = copy.deepcopy(b).double()
    x64 = x.double()
    with torch.no_grad(), b64.frozen():
        t64 = x64 + b64.net_x(x64, None)
        root = Broyden(atol=1e-12, rtol=1e-12, on_failure="ignore")(
            lambda t: t + b64.net_z(t, None) - t64, t64, event_dims=3
        ).root.float()
    with torch.no_grad(), b.frozen():
        floor = torch.linalg.vector_norm((root + b.net_z(root, None) - target).flatten(1), dim=1)
    tol = default_tolerance(torch.float32) * (1 + root.flatten(1).norm(dim=1))
    rows.append(("float32 residual at the float64 root / tolerance",
                 f"median {float((floor / tol).median()):.3f}, max {float((floor / tol).max()):.3f}"))  # fmt: skip
    return rows


def cost(args: argparse.Namespace, data: Any, init: torch.Tensor) -> None:
    """The ``--cost`` mode (see the module docstring)."""
    from _common import interleaved

    levels, train = data.levels, data.train.float()
    flows = {}
    for name in ("impflow", "resflow"):
        torch.manual_seed(0)
        flows[name] = build(name, args)
        initialize_actnorm(flows[name], init)

    def stepper(flow: Flow, seed: int) -> Any:
        opt = torch.optim.Adam(flow.parameters(), lr=args.lr)
        gen = torch.Generator().manual_seed(seed)

        def step() -> None:
            idx = torch.randint(0, len(train), (args.batch_size,), generator=gen)
            x = dequantize(train[idx], levels, torch.rand(args.batch_size, 1, 8, 8, generator=gen))
            loss = bits_per_dim(flow.log_prob(x), 64, levels).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps = {name: stepper(flow, 0) for name, flow in flows.items()}
    for _ in range(args.cost):
        steps["impflow"]()
    counts = {name: _count_step(step, args.batch_size) for name, step in steps.items()}
    its = _solver_iterations(flows["impflow"])
    t = interleaved(steps, args.repeats)
    rows = [
        (f"ImpFlow step / ResFlow step (ImpFlow trained {args.cost} steps, batch "
         f"{args.batch_size}, median of {args.repeats})",
         f"{t['impflow'] / t['resflow']:.2f} ({1e3 * t['impflow']:.0f} / "
         f"{1e3 * t['resflow']:.0f} ms)"),
        ("network forwards (batch units) / autograd.grad calls per step, ImpFlow",
         f"{counts['impflow'][0]:.1f} / {counts['impflow'][1]}"),
        ("same, ResFlow", f"{counts['resflow'][0]:.1f} / {counts['resflow'][1]}"),
        ("ImpFlow forward-solve iterations per block (training step)", str(its)),
    ]  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, len(train), (256,), generator=gen)
    x = dequantize(train[idx], levels, torch.rand(256, 1, 8, 8, generator=gen))
    inputs: dict[int, torch.Tensor] = {}
    blocks = _blocks(flows["impflow"])
    hooks = [
        blk.register_forward_pre_hook(
            lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone())
        )
        for i, blk in enumerate(blocks)
    ]
    with torch.no_grad():
        flows["impflow"].log_prob(x)  # training mode: the inputs the blocks see in training
    for h in hooks:
        h.remove()
    for i, blk in enumerate(blocks):
        rows += [(f"block {i} {tuple(inputs[i].shape[1:])}: {name}", value)
                 for name, value in _solve_variants(blk, inputs[i])]  # fmt: skip
    env = environment()
    write_json(args.out / "cost.json", {"settings": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, env)  # fmt: skip
    table = "| measurement | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    write_markdown(args.out / "cost.md", table, env)
    print(table)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cost", type=int, default=None, metavar="STEPS",
                   help="measure step costs and solves after STEPS ImpFlow steps instead")  # fmt: skip
    p.add_argument("--repeats", type=int, default=10, help="timed rounds of --cost")
    p.add_argument("--budget", type=float, default=600.0, help="CPU seconds per model")
    p.add_argument("--slice", type=float, default=20.0, help="seconds per round-robin turn")
    p.add_argument("--blocks", type=int, default=2, help="ImpFlow blocks per level")
    p.add_argument("--hidden", type=int, default=32, help="hidden channels of every CNN")
    p.add_argument("--glow-hidden", type=int, default=15)
    p.add_argument("--glow-steps", type=int, default=4)
    p.add_argument("--activation", default="lipswish")
    p.add_argument("--coeff", type=float, default=0.97)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-draws", type=int, default=8)
    p.add_argument("--models", nargs="+", default=["impflow", "resflow", "glow"])
    args = p.parse_args()
    if args.smoke:
        args.budget, args.slice, args.blocks, args.hidden = 0.5, 0.5, 1, 4
        args.glow_hidden, args.glow_steps, args.eval_draws = 4, 1, 1
    args.out = output_folder(args, HERE / "results" / "images", "images")
    one_thread()
    env = environment()
    torch.set_default_dtype(torch.float32)
    data = load_digits(val_fraction=0.1, test_fraction=0.2, seed=0)
    levels = data.levels
    train = data.train.float()
    init = dequantize(train[:512], levels, torch.rand(512, 1, 8, 8,
                                                       generator=torch.Generator().manual_seed(1)))  # fmt: skip
    if args.cost is not None:
        if args.smoke:
            args.cost, args.repeats = 1, 1
        cost(args, data, init)
        return
    runs: dict[str, dict[str, Any]] = {}
    for name in args.models:
        torch.manual_seed(0)
        flow = build(name, args)
        initialize_actnorm(flow, init)
        runs[name] = {
            "flow": flow,
            "opt": torch.optim.Adam(flow.parameters(), lr=args.lr),
            "gen": torch.Generator().manual_seed(0),
            "cpu": 0.0,
            "steps": 0,
            "curve": [],
        }
        print(f"{name}: {count_parameters(flow, trainable_only=True)} parameters", flush=True)
    n = len(train)
    while any(r["cpu"] < args.budget for r in runs.values()):
        for name, r in runs.items():
            if r["cpu"] >= args.budget:
                continue
            flow, opt, gen = r["flow"], r["opt"], r["gen"]
            flow.train()
            start = time.process_time()
            losses = []
            while time.process_time() - start < min(args.slice, args.budget - r["cpu"]):
                idx = torch.randint(0, n, (args.batch_size,), generator=gen)
                x = dequantize(
                    train[idx], levels, torch.rand(args.batch_size, 1, 8, 8, generator=gen)
                )
                lr = args.lr * min(1.0, (r["steps"] + 1) / 100)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = bits_per_dim(flow.log_prob(x), 64, levels).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
                opt.step()
                r["steps"] += 1
                losses.append(float(loss))
            r["cpu"] += time.process_time() - start
            r["iterations"] = _solver_iterations(flow)  # the slice's last training step
            val = summarize_bits(test_bits(flow, data.validation, levels, 1, seed=7))
            r["curve"].append((round(r["cpu"], 1), r["steps"], round(val.mean, 4)))
            print(f"{name}: cpu {r['cpu']:.0f} s, {r['steps']} steps, train {sum(losses) / max(1, len(losses)):.3f}, "
                  f"val {val.mean:.3f} bits/dim", flush=True)  # fmt: skip
    results: dict[str, Any] = {"settings": vars(args) | {"out": str(args.out)}, "models": {}}
    pictures = {"data": grid(data.test[:64].float() / (levels - 1))}
    for name, r in runs.items():
        flow = r["flow"]
        bpd = test_bits(flow, data.test, levels, args.eval_draws, seed=11)
        s = summarize_bits(bpd)
        with torch.no_grad():
            torch.manual_seed(3)
            samples = flow.sample(64).clamp(0, 1)
            z = flow.transform_to_noise(
                dequantize(data.test[:64].float(), levels, torch.full((64, 1, 8, 8), 0.5))
            )
            back = flow._transform.inverse(z)[0]
            x0 = dequantize(data.test[:64].float(), levels, torch.full((64, 1, 8, 8), 0.5))
            recon = float((back - x0).abs().max())
        pictures[name] = grid(samples)
        results["models"][name] = {
            "parameters": count_parameters(flow, trainable_only=True),
            "steps": r["steps"],
            "cpu_seconds": round(r["cpu"], 1),
            "test_bits_per_dim": s.mean,
            "test_bits_per_dim_stderr": s.stderr,
            "n_test": s.n,
            "round_trip_max_error": recon,
            "cpu_ms_per_step": round(1e3 * r["cpu"] / max(1, r["steps"]), 1),
            "solver_iterations": r.get("iterations"),
            "lipschitz_bound": lipschitz_bound(flow),
            "validation_curve": r["curve"],
        }
        print(f"{name}: test {s}", flush=True)
    write_json(args.out / "images.json", results, env)
    lines = [
        "| model | test bits/dim (± s.e.) | parameters | steps | CPU s | max round-trip error | certified Lip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in results["models"].items():
        lip = m["lipschitz_bound"]
        lines.append(
            f"| {name} | {m['test_bits_per_dim']:.4f} ± {m['test_bits_per_dim_stderr']:.4f} | "
            f"{m['parameters']} | {m['steps']} | {m['cpu_seconds']:.0f} | "
            f"{m['round_trip_max_error']:.1e} | {'-' if lip is None else f'{lip:.3f}'} |"
        )
    steps = {name: m["cpu_ms_per_step"] for name, m in results["models"].items()}
    if "impflow" in steps and "resflow" in steps:
        lines.append(
            f"\nImpFlow step / ResFlow step (CPU time per step over the whole budget): "
            f"{steps['impflow'] / steps['resflow']:.2f} ({steps['impflow']:.0f} / "
            f"{steps['resflow']:.0f} ms)"
        )
    for name, m in results["models"].items():
        if m["solver_iterations"] is not None:
            lines.append(f"\n{name}: last training step's forward solves, mean iterations per "
                         f"block {m['solver_iterations']}")  # fmt: skip
    table = "\n".join(lines) + "\n"
    write_markdown(args.out / "images.md", table, env)
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(pictures), figsize=(3.2 * len(pictures), 3.5))
        for ax, (name, pic) in zip(axes, pictures.items(), strict=True):
            ax.imshow(pic.numpy(), cmap="gray_r", vmin=0, vmax=1)
            title = "test data" if name == "data" else (
                f"{name}: {results['models'][name]['test_bits_per_dim']:.3f} bits/dim")  # fmt: skip
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.out / "samples.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no figure")


if __name__ == "__main__":
    main()
