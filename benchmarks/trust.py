"""Trust benchmark: certified Lipschitz bounds under the hosts' real optimizers.

Trains ResFlow and ImpFlow blocks for a few hundred steps at lr 1e-2 on objectives that push
the flow to expand (nflows: maximum likelihood of data 100x narrower than the base; Pyro: a
guide for a posterior 100x wider than the base), with six optimizers, and reports the largest
certified Lipschitz bound over the networks in training mode after a forward, in evaluation
mode, and the round-trip error. Run by hand (any checkout, old or new: it uses only the API
both share):

    .venv/bin/python benchmarks/trust.py [--steps 250] [--repo PATH] [--out DIR] [--smoke]

``--repo DIR`` imports ``implicit_transforms`` from ``DIR`` instead (a copy of an older
checkout's ``implicit_transforms/`` with its ``plugins/`` copied inside) to measure it the same
way: the library is imported inside the functions, after ``main`` has read ``--repo``.
Prints the tables and writes ``trust.{json,md}`` (with the environment) to ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    environment,
    one_thread,
    output_folder,
    parser,
    write_json,
    write_markdown,
)

LINES: list[str] = []


def emit(line: str = "") -> None:
    """Print a line of the report and keep it for ``trust.md``."""
    print(line, flush=True)
    LINES.extend(line.split("\n"))


OPTIMIZERS = ["sgd", "adam", "adam-fused", "adamw-foreach", "clipped-adam", "p.data"]


def torch_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> Any:
    """A torch optimizer by name, or ``None`` for the manual ``p.data`` loop."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adam-fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "adamw-foreach":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    if name == "clipped-adam":
        from pyro.optim.clipped_adam import ClippedAdam

        return ClippedAdam(params, lr=lr)
    return None


def pyro_optimizer(name: str, lr: float) -> Any:
    """The Pyro wrapper of an optimizer by name (``None`` for the manual loop)."""
    import pyro

    return {
        "sgd": lambda: pyro.optim.SGD({"lr": lr}),
        "adam": lambda: pyro.optim.Adam({"lr": lr}),
        "adam-fused": lambda: pyro.optim.Adam({"lr": lr, "fused": True}),
        "adamw-foreach": lambda: pyro.optim.AdamW({"lr": lr, "foreach": True}),
        "clipped-adam": lambda: pyro.optim.ClippedAdam({"lr": lr}),
        "p.data": lambda: None,
    }[name]()


def largest_bound(module: Any) -> float:
    from implicit_transforms.lipschitz import LipschitzNet, certify

    nets = [m for m in module.modules() if isinstance(m, LipschitzNet)]
    return max(certify(n).bound for n in nets)


def nflows_run(family: str, opt_name: str, steps: int, lr: float, dim: int) -> dict[str, float]:
    from implicit_transforms.plugins import nflows as it_nflows
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform

    torch.manual_seed(0)
    maker = {"resflow": it_nflows.ResFlowTransform, "impflow": it_nflows.ImpFlowTransform}[family]
    block = maker(dim, [32, 32])
    flow = Flow(CompositeTransform([block]), StandardNormal([dim]))
    data = 0.01 * torch.randn(4096, dim)
    params = list(flow.parameters())
    opt = torch_optimizer(opt_name, params, lr)
    failed = ""
    for step in range(steps):
        batch = data[torch.randint(0, data.shape[0], (64,))]
        try:
            loss = -flow.log_prob(batch).mean()
            for p in params:
                p.grad = None
            loss.backward()
        except Exception as err:
            failed = f"step {step}: {type(err).__name__}"
            break
        if opt is None:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.data.add_(p.grad, alpha=-lr)
        else:
            opt.step()
    return _measure(flow, block.block, dim, failed)


def _measure(model: Any, block: Any, dim: int, failed: str) -> dict[str, float | str]:
    model.train()
    x = torch.randn(256, dim)
    with torch.no_grad():
        try:
            block.forward_and_logdet(x)
        except Exception as err:
            failed = failed or f"forward: {type(err).__name__}"
    train_bound = largest_bound(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.eval()
    eval_bound = largest_bound(model)
    try:
        with torch.no_grad():
            y, _ = block.forward_and_logdet(x)
            x_rec, _ = block.inverse_and_logdet(y)
        err = float((x_rec - x).abs().max())
    except Exception as e:
        err = float("nan")
        failed = failed or f"round trip: {type(e).__name__}"
    return {
        "train_bound": train_bound,
        "eval_bound": eval_bound,
        "round_trip": err,
        "failed": failed,
    }


def pyro_run(family: str, opt_name: str, steps: int, lr: float, dim: int) -> dict[str, float | str]:
    import pyro
    import pyro.distributions as dist
    from implicit_transforms.plugins import pyro as it_pyro
    from pyro.infer import SVI, Trace_ELBO

    torch.manual_seed(0)
    pyro.clear_param_store()
    maker = {"resflow": it_pyro.resflow, "impflow": it_pyro.impflow}[family]
    transform = maker(dim, [32, 32])

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(dim), 100.0).to_event(1))

    def guide() -> None:
        pyro.module("t", transform)
        base = dist.Normal(torch.zeros(dim), 1.0).to_event(1)
        pyro.sample("z", dist.TransformedDistribution(base, [transform]))

    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True)
    optim = pyro_optimizer(opt_name, lr)
    failed = ""
    svi = SVI(model, guide, optim, elbo) if optim is not None else None
    for step in range(steps):
        try:
            if svi is not None:
                svi.step()
            else:
                loss = elbo.differentiable_loss(model, guide)
                params = list(transform.parameters())
                for p in params:
                    p.grad = None
                loss.backward()
                with torch.no_grad():
                    for p in params:
                        if p.grad is not None:
                            p.data.add_(p.grad, alpha=-lr)
        except Exception as err:
            failed = f"step {step}: {type(err).__name__}"
            break
    return _measure(transform, transform.block, dim, failed)


RUNS: dict[str, Callable[..., dict[str, Any]]] = {"nflows": nflows_run, "pyro": pyro_run}


def gradient_errors() -> None:
    """float32 gradients through implicit solves against float64, at two loss scales."""
    import copy

    from implicit_transforms.blocks import impflow_block, resflow_block

    emit("\nfloat32 vs float64 gradients through the solves (relative error of the gradient)")
    emit("| case | loss scale 1 | loss scale 1e-4 |\n|---|---|---|")
    cases = {
        "ResFlow inverse": (resflow_block, "inverse"),
        "ImpFlow forward": (impflow_block, "forward"),
        "ImpFlow inverse": (impflow_block, "inverse"),
    }
    for name, (factory, direction) in cases.items():
        errs = []
        for scale in (1.0, 1e-4):
            torch.manual_seed(0)
            ref = factory(4, [32], coeff=0.95).double()
            with torch.no_grad():
                for p in ref.parameters():
                    p.mul_(3.0)
            ref.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                low = copy.deepcopy(ref).float().eval()
            x = 2 * torch.randn(16, 4, dtype=torch.float64)
            w = torch.randn(16, 4, dtype=torch.float64)
            grads = []
            for model, dtype in ((ref, torch.float64), (low, torch.float32)):
                xin = x.to(dtype).detach().requires_grad_()
                run = (
                    model.inverse_and_logdet if direction == "inverse" else model.forward_and_logdet
                )
                out, ld = run(xin)
                (scale * ((out * w.to(dtype)).sum() + ld.sum())).backward()
                g = [xin.grad] + [p.grad for p in model.parameters() if p.grad is not None]
                grads.append(torch.cat([t.flatten() for t in g]).double() / scale)
            errs.append(float((grads[1] - grads[0]).norm() / grads[0].norm()))
        emit(f"| {name} | {errs[0]:.1e} | {errs[1]:.1e} |")


def _hard_problems(dtype: torch.dtype) -> dict[str, tuple[Callable[..., Any], torch.Tensor]]:
    """Residuals near the Lipschitz limit: ImpFlow-block residuals with saturated layers
    (coeff 0.99, inputs of scale 8) and ``z + s(A z) = y`` with A's eigenvalues in
    [-0.99, -0.79], where the plain iteration oscillates."""
    from implicit_transforms.lipschitz import LipschitzMLP

    out: dict[str, tuple[Callable[..., Any], torch.Tensor]] = {}
    for d in (2, 16):
        for act in ("sin", "lipswish"):
            nets = []
            for seed in (1, 2):
                torch.manual_seed(seed)
                g = LipschitzMLP(d, [64, 64], coeff=0.99, activation=act)
                with torch.no_grad():
                    for layer in g.layers:
                        layer.weight.mul_(10.0)
                g = g.to(dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    g.eval()
                nets.append(g)
            torch.manual_seed(3)
            x = (8.0 * torch.randn(256, d)).to(dtype)
            with torch.no_grad():
                target = x + nets[0](x)
            out[f"ImpFlow residual, D={d}, {act}"] = (
                lambda z, g=nets[1], t=target: z + g(z) - t,
                target,
            )
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(-0.99 + 0.2 * torch.rand(64, generator=gen, dtype=torch.float64)) @ q.T
    y = 3 * torch.randn(256, 64, generator=gen, dtype=torch.float64)
    a, y = a.to(dtype), y.to(dtype)
    out["z + tanh(Az) = y, D=64"] = (lambda z: z + torch.tanh(z @ a.T) - y, y)
    out["z + sin(Az) = y, D=64"] = (lambda z: z + torch.sin(z @ a.T) - y, y)
    return out


def solver_work(max_iter: int = 300) -> None:
    """Anderson in float32 and Broyden's evaluation counts on hard problems."""
    from implicit_transforms.solvers import anderson, broyden

    emit("\nAnderson with its default regularisation, float32 (status, batched evaluations)")
    emit("| problem | outcome |\n|---|---|")
    for name, (fn, z0) in _hard_problems(torch.float32).items():
        try:
            with torch.no_grad():
                r = anderson(fn, z0, on_failure="ignore", max_iter=max_iter)
            outcome = f"{r.status.name.lower()}, {r.num_evals} evaluations"
        except Exception as err:
            outcome = f"raised {type(err).__module__}.{type(err).__name__}"
        emit(f"| {name} | {outcome} |")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, None)):
        emit(f"\nBroyden, {dtype}, tolerance {tol or 'default'}: batched evaluations (converged)")
        emit("| problem | default | line_search='armijo' |\n|---|---|---|")
        for name, (fn, z0) in _hard_problems(dtype).items():
            cells = []
            for kw in ({}, {"line_search": "armijo"}):
                with torch.no_grad():
                    r = broyden(
                        fn, z0, atol=tol, rtol=tol, max_iter=max_iter, on_failure="ignore", **kw
                    )  # type: ignore[arg-type]
                cells.append(f"{r.num_evals} ({float(r.converged.double().mean()):.2f})")
            emit(f"| {name} | {cells[0]} | {cells[1]} |")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--repo", default=None, help="import implicit_transforms from this checkout")
    p.add_argument(
        "--sections",
        default="optimizers,gradients,solvers",
        help="comma-separated: optimizers, gradients, solvers",
    )
    args = p.parse_args()
    if args.repo:
        sys.path.insert(0, args.repo)
    max_iter = 300
    if args.smoke:
        args.steps, max_iter = 2, 5
    out = output_folder(args, RESULTS, "trust")
    one_thread()
    import implicit_transforms

    env = environment(implicit_transforms=implicit_transforms.__file__)
    emit(f"implicit_transforms from {implicit_transforms.__file__}")
    sections = args.sections.split(",")
    rows: list[dict[str, Any]] = []
    if "gradients" in sections:
        gradient_errors()
    if "solvers" in sections:
        solver_work(max_iter)
    if "optimizers" in sections:
        emit(
            f"{args.steps} steps, lr {args.lr}, D={args.dim}, nets [32, 32]; largest certified "
            "Lip(g)"
        )
        emit(
            "| host | block | optimizer | Lip, training after a forward | Lip, eval | round trip "
            "| note |\n|---|---|---|---|---|---|---|"
        )
        for host, run in RUNS.items():
            for family in ("resflow", "impflow"):
                for opt in OPTIMIZERS:
                    t0 = time.perf_counter()
                    r = run(family, opt, args.steps, args.lr, args.dim)
                    note = r["failed"] or f"{time.perf_counter() - t0:.0f} s"
                    rows.append({"host": host, "block": family, "optimizer": opt, **r})
                    emit(
                        f"| {host} | {family} | {opt} | {r['train_bound']:.4f} | "
                        f"{r['eval_bound']:.4f} | {r['round_trip']:.1e} | {note} |"
                    )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    write_json(out / "trust.json", {"settings": settings, "optimizer_runs": rows}, env)
    write_markdown(out / "trust.md", "\n".join(LINES), env)
    print(f"wrote {out / 'trust.json'}")


if __name__ == "__main__":
    main()
