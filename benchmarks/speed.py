"""Speed benchmark: one table of ratios, every pair measured interleaved in one process.

    .venv/bin/python benchmarks/speed.py [--sections ...] [--repeats 15]

Sections (all by default):

* ``normflows``: a ResFlow-8 training step and 10,000 samples against normflows' ``Residual``
  flow with the same networks (2-128-128-2, LipSwish, coeff 0.97), estimator (roulette,
  Geometric(0.5), 2 exact terms, one probe, Neumann gradient), ActNorm, batch 500; sampling
  also reports the round-trip error of each library's inverse.
* ``impflow``: an ImpFlow-4 step against a ResFlow-8 step with the same networks (equal
  parameters).
* ``pyro``: a Pyro SVI step and 10,000 guide samples of ImpFlow and ResFlow guides against
  Pyro's IAF guide at (about) equal parameters.
* ``floor``: step time over the network-evaluation floor ``t_step / (t_eval x evaluations)``,
  where ``t_eval`` is one forward and backward pass of a network on the whole batch and
  ``evaluations`` counts the network's forward calls in the step weighted by the rows they
  evaluate (vector-Jacobian products inside the log-det estimator count as one evaluation each).
* ``sampling``: 10,000 samples (trained ResFlow-8 and ImpFlow-4) at the default tolerance and
  inside ``solver_tolerance(1e-4)`` / ``(1e-3)``, with the round-trip error of each.
* ``memory``: autograd's saved-tensor bytes and the peak resident memory of an ImpFlow training
  step for solver ``max_iter`` 10 and 100 (each in a fresh process).
* ``solvers``: calls of F of Broyden and fixed point to 1e-5 on a 16-D network residual at
  Lip 0.99.
* ``compile``: an ImpFlow-4 step with ``torch.compile``'d network evaluations against eager.

Needs the ``bench`` extra (normflows). Timings are medians of process CPU time (one thread)
over ``--repeats`` interleaved rounds; read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

warnings.filterwarnings("ignore", message=".*triangular_solve.*")


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median CPU seconds of each callable, run round-robin ``repeats`` times after a warm-up.

    CPU time of this (single-threaded) process, not wall time: on a shared machine other
    processes' time slices do not count against a measurement.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# -- models ----------------------------------------------------------------------------------


def our_flow(family: str, blocks: int, hidden: list[int], activation: str = "lipswish") -> Any:
    from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import ActNorm, CompositeTransform

    maker = {"resflow": ResFlowTransform, "impflow": ImpFlowTransform}[family]
    layers: list[Any] = []
    for _ in range(blocks):
        layers += [ActNorm(2), maker(2, hidden, activation=activation, coeff=0.97)]
    return Flow(CompositeTransform(layers), StandardNormal([2]))


def normflows_flow(blocks: int, hidden: list[int]) -> Any:
    import normflows as nf

    flows: list[Any] = []
    for _ in range(blocks):
        # init_zeros=False: random last layers like ours (zeros would make the inverse trivial)
        net = nf.nets.LipschitzMLP([2, *hidden, 2], lipschitz_const=0.97, init_zeros=False)
        flows += [nf.flows.ActNorm(2), nf.flows.Residual(net, reduce_memory=True)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, generator=gen) * 4 - 2
    x2 = torch.rand(n, generator=gen) - torch.randint(0, 2, (n,), generator=gen) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1)


def train_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], params: Any, data: torch.Tensor,
               batch: int) -> Callable[[], None]:  # fmt: skip
    opt = torch.optim.Adam(list(params), lr=1e-4)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = loss_fn(x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


# -- sections ----------------------------------------------------------------------------------


def _normflows_round_trip(flow: Any, z: torch.Tensor) -> float:
    x = z
    for layer in flow.flows:
        x, _ = layer(x)
    back = x
    for layer in reversed(flow.flows):
        back, _ = layer.inverse(back)
    return float((back - z).abs().max())


def section_normflows(repeats: int) -> list[tuple[str, str]]:
    from implicit_transforms import solver_tolerance

    torch.manual_seed(0)
    data = checkerboard(20000)
    ours = our_flow("resflow", 8, [128, 128])
    theirs = normflows_flow(8, [128, 128])
    for m in (ours, theirs):
        m.train()
    steps = {
        "ours": train_step(lambda x: -ours.log_prob(x).mean(), ours.parameters(), data, 500),
        "normflows": train_step(lambda x: theirs.forward_kld(x), theirs.parameters(), data, 500),
    }
    t = interleaved(steps, repeats)
    rows = [("ResFlow-8 training step / normflows (batch 500)", f"{t['ours'] / t['normflows']:.2f} "
             f"({1e3 * t['ours']:.0f} / {1e3 * t['normflows']:.0f} ms)")]  # fmt: skip
    for _ in range(300):  # sample from trained models: their solves are the realistic ones
        for step in steps.values():
            step()
    ours.eval()
    theirs.eval()
    z = torch.randn(10000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err_theirs = _normflows_round_trip(theirs, z)
        errs = {}
        for tol in (None, 1e-7):
            with solver_tolerance(tol) if tol else _nullcontext():
                x, _ = ours._transform.inverse(z)
            errs[tol] = float((ours._transform(x)[0] - z).abs().max())

    def sample_ours(tol: float | None = None) -> None:
        with torch.no_grad(), solver_tolerance(tol) if tol else _nullcontext():
            ours.sample(10000)

    def sample_theirs() -> None:
        with torch.no_grad():
            theirs.sample(10000)

    t = interleaved(
        {"ours": sample_ours, "tight": lambda: sample_ours(1e-7), "normflows": sample_theirs},
        max(3, repeats // 3),
        1,
    )
    for key, label in (("ours", "default tolerance"), ("tight", "solver_tolerance(1e-7)")):
        err = errs[None if key == "ours" else 1e-7]
        rows.append((f"ResFlow-8 10k samples / normflows, trained 300 steps, {label}",
                     f"{t[key] / t['normflows']:.2f} ({t[key]:.2f} / {t['normflows']:.2f} s; max "
                     f"round-trip error {err:.1e} vs {err_theirs:.1e})"))  # fmt: skip
    return rows


def section_impflow(repeats: int) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    data = checkerboard(20000)
    imp = our_flow("impflow", 4, [128, 128], "sin")
    res = our_flow("resflow", 8, [128, 128], "sin")
    n_imp = sum(p.numel() for p in imp.parameters())
    n_res = sum(p.numel() for p in res.parameters())
    t = interleaved(
        {
            "imp": train_step(lambda x: -imp.log_prob(x).mean(), imp.parameters(), data, 256),
            "res": train_step(lambda x: -res.log_prob(x).mean(), res.parameters(), data, 256),
        },
        repeats,
    )
    return [(f"ImpFlow-4 step / ResFlow-8 step ({n_imp} vs {n_res} parameters, batch 256)",
             f"{t['imp'] / t['res']:.2f} ({1e3 * t['imp']:.0f} / {1e3 * t['res']:.0f} ms)")]  # fmt: skip


def _trained(flow: Any, steps: int, batch: int = 256) -> Any:
    """Train a flow briefly on the checkerboard so that its solves are realistic."""
    data = checkerboard(20000, seed=3)
    step = train_step(lambda x: -flow.log_prob(x).mean(), flow.parameters(), data, batch)
    for _ in range(steps):
        step()
    return flow


def section_sampling(repeats: int) -> list[tuple[str, str]]:
    from implicit_transforms import solver_tolerance

    rows = []
    for name, flow in (
        ("ResFlow-8", _trained(our_flow("resflow", 8, [128, 128]), 150)),
        ("ImpFlow-4", _trained(our_flow("impflow", 4, [128, 128], "sin"), 150)),
    ):
        flow.eval()
        z = torch.randn(10000, 2, generator=torch.Generator().manual_seed(5))
        fns, errs = {}, {}
        for tol in (None, 1e-4, 1e-3):

            def sample(tol: float | None = tol, flow: Any = flow, z: torch.Tensor = z) -> None:
                with torch.no_grad(), solver_tolerance(tol) if tol else _nullcontext():
                    flow._transform.inverse(z)

            fns[tol] = sample
            with torch.no_grad(), solver_tolerance(tol) if tol else _nullcontext():
                x, _ = flow._transform.inverse(z)
            with torch.no_grad():  # the forward at the default tolerance
                errs[tol] = float((flow._transform(x)[0] - z).abs().max())
        t = interleaved(fns, max(3, repeats // 3), 1)
        for tol in (1e-4, 1e-3):
            rows.append((f"{name} 10k samples at tolerance {tol:g} / default (6.5e-6)",
                         f"{t[tol] / t[None]:.2f} ({t[tol]:.2f} / {t[None]:.2f} s; round-trip "
                         f"error {errs[tol]:.1e} vs {errs[None]:.1e})"))  # fmt: skip
    return rows


def _nullcontext() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def section_pyro(repeats: int) -> list[tuple[str, str]]:
    import pyro
    import pyro.distributions as dist
    from implicit_transforms.plugins.pyro import impflow, resflow
    from pyro.distributions.transforms import ComposeTransformModule
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

    d = 8
    cov = 0.5 * torch.eye(d) + 0.5  # strongly correlated Gaussian target

    def model() -> None:
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(d), cov))

    def ours(helper: Any, blocks: int) -> Any:
        return AutoNormalizingFlow(
            model,
            lambda dim: ComposeTransformModule([helper(dim, [64, 64]) for _ in range(blocks)]),
        )

    guides = {
        "IAF": AutoIAFNormal(model, hidden_dim=[64, 64], num_transforms=2),
        "ImpFlow-1": ours(impflow, 1),
        "ResFlow-2": ours(resflow, 2),
    }
    steps, samplers, params = {}, {}, {}
    for name, guide in guides.items():
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                  Trace_ELBO(num_particles=8, vectorize_particles=True))  # fmt: skip
        svi.step()
        params[name] = sum(p.numel() for p in guide.parameters())
        steps[name] = svi.step

        def sample(guide: Any = guide) -> None:
            with torch.no_grad():
                guide.get_posterior().sample((10000,))

        samplers[name] = sample
    t_step = interleaved(steps, repeats)
    t_sample = interleaved(samplers, max(3, repeats // 3), 1)
    rows = []
    for name in ("ImpFlow-1", "ResFlow-2"):
        rows.append((f"Pyro {name} guide step / IAF-2 ({params[name]} vs {params['IAF']} parameters)",
                     f"{t_step[name] / t_step['IAF']:.2f} ({1e3 * t_step[name]:.1f} / "
                     f"{1e3 * t_step['IAF']:.1f} ms)"))  # fmt: skip
        rows.append((f"Pyro {name} guide 10k samples / IAF-2",
                     f"{t_sample[name] / t_sample['IAF']:.2f} ({t_sample[name]:.3f} / "
                     f"{t_sample['IAF']:.3f} s)"))  # fmt: skip
    return rows


def _count_work(flow: Any, step: Callable[[], None]) -> tuple[float, int, int]:
    """Row-weighted forward evaluations (with grad, without) and VJPs in one step."""
    from implicit_transforms.lipschitz import LipschitzNet

    counts = {"grad": 0.0, "nograd": 0.0, "vjp": 0}
    batch = {"rows": 1}
    original = LipschitzNet.evaluate
    original_grad = torch.autograd.grad

    def counting(self: Any, x: torch.Tensor, *args: Any) -> torch.Tensor:
        key = "grad" if torch.is_grad_enabled() else "nograd"
        counts[key] += x.shape[0] / batch["rows"]
        return original(self, x, *args)

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        counts["vjp"] += 1
        return original_grad(*args, **kwargs)

    batch["rows"] = 256
    LipschitzNet.evaluate = counting  # type: ignore[method-assign]
    torch.autograd.grad = counting_grad
    try:
        step()
    finally:
        LipschitzNet.evaluate = original  # type: ignore[method-assign]
        torch.autograd.grad = original_grad
    return counts["grad"] + counts["nograd"], int(counts["grad"]), int(counts["vjp"])


def section_floor(repeats: int) -> list[tuple[str, str]]:
    from implicit_transforms.lipschitz import LipschitzMLP

    net = LipschitzMLP(2, [128, 128], activation="sin")
    x = torch.randn(256, 2)
    weights = [layer.prepare(None).detach() for layer in net.layers]

    def forward() -> None:
        with torch.no_grad():
            net.evaluate(x, weights, None)

    xg = x.clone().requires_grad_()
    out = net.evaluate(xg, [w.requires_grad_() for w in weights], None)
    v = torch.randn_like(out)

    def vjp() -> None:
        torch.autograd.grad(out, [xg, *weights], v, retain_graph=True)

    t = interleaved({"f": forward, "v": vjp}, 50)
    rows = []
    data = checkerboard(20000)
    for name, flow in (("ResFlow-8", our_flow("resflow", 8, [128, 128], "sin")),
                       ("ImpFlow-4", our_flow("impflow", 4, [128, 128], "sin"))):  # fmt: skip
        _trained(flow, 50)
        flow.train()
        step = train_step(lambda b, f=flow: -f.log_prob(b).mean(), flow.parameters(), data, 256)
        step_time = interleaved({"s": step}, repeats)["s"]
        fwd, fwd_grad, vjps = _count_work(flow, step)
        # every forward costs t_f; every VJP, and the backward of every recorded forward, t_v
        floor = fwd * t["f"] + (vjps + fwd_grad) * t["v"]
        rows.append((f"{name} step / network-evaluation floor ({fwd:.1f} forwards, "
                     f"{vjps + fwd_grad} backward passes of one network on the batch)",
                     f"{step_time / floor:.2f} ({1e3 * step_time:.1f} / {1e3 * floor:.1f} ms)"))  # fmt: skip
    return rows


def section_memory(repeats: int) -> list[tuple[str, str]]:
    code = """
import resource, sys, torch
sys.path.insert(0, 'benchmarks')
import speed
from implicit_transforms.solvers import Broyden
from implicit_transforms.plugins.nflows import ImpFlowTransform
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import CompositeTransform
torch.manual_seed(0)
max_iter = int(sys.argv[1])
solver = Broyden(max_iter=max_iter, atol=1e-30, rtol=0.0, on_failure='ignore')
flow = Flow(CompositeTransform([ImpFlowTransform(2, [128, 128], activation='sin', solver=solver)
                                for _ in range(4)]), StandardNormal([2]))
x = speed.checkerboard(4096)
saved = [0]
def pack(t):
    saved[0] += t.numel() * t.element_size()
    return t
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    loss = -flow.log_prob(x).mean()
loss.backward()
print(saved[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = {}
    for max_iter in (10, 100):
        res = subprocess.run([sys.executable, "-c", code, str(max_iter)], capture_output=True,
                             text=True, check=True)  # fmt: skip
        saved, rss = (int(v) for v in res.stdout.split())
        out[max_iter] = (saved / 2**20, rss / 2**10)
    return [("ImpFlow-4 step memory, max_iter 100 / 10 (batch 4096, every solve runs to max_iter)",
             f"saved tensors {out[100][0] / out[10][0]:.2f} ({out[100][0]:.1f} / {out[10][0]:.1f} "
             f"MiB); peak RSS {out[100][1] / out[10][1]:.2f} ({out[100][1]:.0f} / "
             f"{out[10][1]:.0f} MiB)")]  # fmt: skip


def section_solvers(repeats: int) -> list[tuple[str, str]]:
    from implicit_transforms.solvers import anderson, broyden, fixed_point

    # z + tanh(A z) = y, A symmetric with eigenvalues spread over [-0.99, 0.99]: Lip 0.99,
    # with directions where the plain iteration oscillates and where it crawls.
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    a = q @ torch.diag(torch.linspace(-0.99, 0.99, 16)) @ q.T
    y = 0.3 * torch.randn(256, 16, generator=gen)  # small: tanh stays near linear, Lip ~0.99

    def fn(z: torch.Tensor) -> torch.Tensor:
        return z + torch.tanh(z @ a.T) - y

    res = {
        name: solve(fn, y, atol=1e-5, rtol=1e-5, max_iter=100000)
        for name, solve in (("fp", fixed_point), ("anderson", anderson), ("broyden", broyden))
    }
    return [(f"fixed point / {name} sample evaluations to 1e-5, z + tanh(Az) = y, 16-D, Lip 0.99",
             f"{res['fp'].sample_evals / res[key].sample_evals:.1f}x ({res['fp'].sample_evals} / "
             f"{res[key].sample_evals}; max iterations {int(res['fp'].iterations.max())} / "
             f"{int(res[key].iterations.max())})")
            for name, key in (("Broyden", "broyden"), ("Anderson", "anderson"))]  # fmt: skip


def section_compile(repeats: int) -> list[tuple[str, str]]:
    data = checkerboard(20000)
    eager = our_flow("impflow", 4, [128, 128], "sin")
    compiled = our_flow("impflow", 4, [128, 128], "sin")
    compiled.load_state_dict(eager.state_dict())
    for m in compiled.modules():
        if hasattr(m, "compile_evaluation") and m is not compiled:
            m.compile_evaluation()
    t0 = time.perf_counter()
    steps = {
        "eager": train_step(lambda x: -eager.log_prob(x).mean(), eager.parameters(), data, 256),
        "compiled": train_step(
            lambda x: -compiled.log_prob(x).mean(), compiled.parameters(), data, 256
        ),
    }
    steps["compiled"]()
    first = time.perf_counter() - t0
    t = interleaved(steps, repeats, warmup=5)
    return [("ImpFlow-4 step, torch.compile'd network evaluations / eager (CPU)",
             f"{t['compiled'] / t['eager']:.2f} ({1e3 * t['compiled']:.0f} / "
             f"{1e3 * t['eager']:.0f} ms; first compiled step {first:.0f} s)")]  # fmt: skip


SECTIONS: dict[str, Callable[[int], list[tuple[str, str]]]] = {
    "normflows": section_normflows,
    "impflow": section_impflow,
    "sampling": section_sampling,
    "pyro": section_pyro,
    "floor": section_floor,
    "memory": section_memory,
    "solvers": section_solvers,
    "compile": section_compile,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, CPU time")
    print("| measurement | ratio (absolute) |\n|---|---|")
    for name in args.sections.split(","):
        for label, value in SECTIONS[name](args.repeats):
            print(f"| {label} | {value} |", flush=True)


if __name__ == "__main__":
    main()
