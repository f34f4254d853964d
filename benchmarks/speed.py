"""Speed benchmark: one table of ratios, every pair measured interleaved in one process.

    .venv/bin/python benchmarks/speed.py [--sections ...] [--repeats 15] [--out DIR] [--smoke]

Sections (all by default):

* ``normflows``: a ResFlow-8 training step and 10,000 samples against normflows' ``Residual``
  flow with the same networks (2-128-128-2, LipSwish, coeff 0.97), estimator (roulette,
  Geometric(0.5), 2 exact terms, one probe, Neumann gradient), ActNorm, batch 500; sampling
  also reports the round-trip error of each library's inverse.
* ``impflow``: an ImpFlow-4 step against a ResFlow-8 step with the same networks (equal
  parameters).
* ``families``: a Monotone-8 and an ImpFlow-4 training step against ResFlow-8 with the same
  networks, in 2-D and 64-D, fresh and briefly trained.
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
over ``--repeats`` interleaved rounds (``_common.interleaved``); read the ratios. Prints the
table and writes ``speed.md`` and ``speed.json`` (with the environment) to ``--out``
(default ``benchmarks/results``). ``--smoke`` runs every section at toy sizes in seconds.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from implicit_transforms.data import TOY_DATASETS

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

warnings.filterwarnings("ignore", message=".*triangular_solve.*")


@dataclass(frozen=True)
class Sizes:
    """The sizes the sections measure at (the defaults are the recorded runs')."""

    hidden: tuple[int, ...] = (128, 128)
    res_blocks: int = 8  # ResFlow-8 ...
    imp_blocks: int = 4  # ... against ImpFlow-4 (same networks)
    data: int = 20000
    batch: int = 256
    normflows_batch: int = 500
    samples: int = 10000
    normflows_train: int = 300  # steps before sampling (realistic solves)
    sampling_train: int = 150
    floor_train: int = 50
    pyro_hidden: tuple[int, ...] = (64, 64)
    memory_batch: int = 4096
    memory_max_iters: tuple[int, int] = (10, 100)
    floor_repeats: int = 50

    @classmethod
    def smoke(cls) -> Sizes:
        """Toy sizes: every section runs in seconds (the test suite)."""
        return cls((8,), 2, 1, 512, 32, 32, 64, 2, 2, 2, (8,), 64, (2, 3), 2)


# -- models ----------------------------------------------------------------------------------


def our_flow(
    family: str, blocks: int, hidden: list[int], activation: str = "lipswish", dim: int = 2
) -> Any:
    from implicit_transforms.plugins.nflows import (
        ImpFlowTransform,
        MonotoneTransform,
        ResFlowTransform,
    )
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import ActNorm, CompositeTransform

    maker = {"resflow": ResFlowTransform, "impflow": ImpFlowTransform,
             "monotone": MonotoneTransform}[family]  # fmt: skip
    layers: list[Any] = []
    for _ in range(blocks):
        layers += [ActNorm(dim), maker(dim, hidden, activation=activation, coeff=0.97)]
    return Flow(CompositeTransform(layers), StandardNormal([dim]))


def normflows_flow(blocks: int, hidden: list[int]) -> Any:
    import normflows as nf

    flows: list[Any] = []
    for _ in range(blocks):
        # init_zeros=False: random last layers like ours (zeros would make the inverse trivial)
        net = nf.nets.LipschitzMLP([2, *hidden, 2], lipschitz_const=0.97, init_zeros=False)
        flows += [nf.flows.ActNorm(2), nf.flows.Residual(net, reduce_memory=True)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """The library's checkerboard (:data:`implicit_transforms.data.TOY_DATASETS`) at half
    scale (unit squares on ``[-2, 2]^2``, the scale these measurements have always used), float32."""
    gen = torch.Generator().manual_seed(seed)
    return (TOY_DATASETS["checkerboard"](n, gen) / 2).float()


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


def section_normflows(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    from implicit_transforms import solver_tolerance

    torch.manual_seed(0)
    data = checkerboard(sz.data)
    ours = our_flow("resflow", sz.res_blocks, list(sz.hidden))
    theirs = normflows_flow(sz.res_blocks, list(sz.hidden))
    for m in (ours, theirs):
        m.train()
    b = sz.normflows_batch
    steps = {
        "ours": train_step(lambda x: -ours.log_prob(x).mean(), ours.parameters(), data, b),
        "normflows": train_step(lambda x: theirs.forward_kld(x), theirs.parameters(), data, b),
    }
    t = interleaved(steps, repeats)
    rows = [("ResFlow-8 training step / normflows (batch 500)", f"{t['ours'] / t['normflows']:.2f} "
             f"({1e3 * t['ours']:.0f} / {1e3 * t['normflows']:.0f} ms)")]  # fmt: skip
    for _ in range(sz.normflows_train):  # sample from trained models: realistic solves
        for step in steps.values():
            step()
    ours.eval()
    theirs.eval()
    z = torch.randn(sz.samples, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err_theirs = _normflows_round_trip(theirs, z)
        errs = {}
        for tol in (None, 1e-7):
            with solver_tolerance(tol) if tol else _nullcontext():
                x, _ = ours._transform.inverse(z)
            errs[tol] = float((ours._transform(x)[0] - z).abs().max())

    def sample_ours(tol: float | None = None) -> None:
        with torch.no_grad(), solver_tolerance(tol) if tol else _nullcontext():
            ours.sample(sz.samples)

    def sample_theirs() -> None:
        with torch.no_grad():
            theirs.sample(sz.samples)

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


def section_impflow(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    data = checkerboard(sz.data)
    imp = our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin")
    res = our_flow("resflow", sz.res_blocks, list(sz.hidden), "sin")
    n_imp = count_parameters(imp)
    n_res = count_parameters(res)
    t = interleaved(
        {
            "imp": train_step(lambda x: -imp.log_prob(x).mean(), imp.parameters(), data, sz.batch),
            "res": train_step(lambda x: -res.log_prob(x).mean(), res.parameters(), data, sz.batch),
        },
        repeats,
    )
    rows = [(f"ImpFlow-4 step / ResFlow-8 step ({n_imp} vs {n_res} parameters, batch 256)",
             f"{t['imp'] / t['res']:.2f} ({1e3 * t['imp']:.0f} / {1e3 * t['res']:.0f} ms)")]  # fmt: skip
    # Trained flows solve harder problems than fresh ones: the setting (batch 500).
    for flow in (imp, res):
        _trained(flow, sz.sampling_train, batch=sz.normflows_batch, n_data=sz.data)
    t = interleaved(
        {
            "imp": train_step(lambda x: -imp.log_prob(x).mean(), imp.parameters(), data,
                              sz.normflows_batch),
            "res": train_step(lambda x: -res.log_prob(x).mean(), res.parameters(), data,
                              sz.normflows_batch),
        },
        repeats,
    )  # fmt: skip
    rows.append((f"ImpFlow-4 step / ResFlow-8 step, trained {sz.sampling_train} steps, batch "
                 f"{sz.normflows_batch}",
                 f"{t['imp'] / t['res']:.2f} ({1e3 * t['imp']:.0f} / {1e3 * t['res']:.0f} ms)"))  # fmt: skip
    return rows


def section_families(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    """A training step of Monotone-8 and ImpFlow-4 against ResFlow-8 of the same networks
    (the Monotone and ResFlow blocks hold one network each, an ImpFlow block two), each
    family's defaults otherwise, in 2-D (checkerboard, exact training log-det) and in 64-D
    (a correlated Gaussian, the roulette log-det), fresh flows and after brief training."""
    rows: list[tuple[str, str]] = []
    for dim in (2, 64):
        torch.manual_seed(0)
        if dim == 2:
            data = checkerboard(sz.data)
        else:  # a fixed correlated Gaussian: x = A e, A with singular values in [0.3, 3]
            gen = torch.Generator().manual_seed(5)
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
            scale = torch.logspace(math.log10(0.3), math.log10(3.0), dim)
            data = (torch.randn(sz.data, dim, generator=gen) @ (q * scale).T).float()
        flows = {
            "res": our_flow("resflow", sz.res_blocks, list(sz.hidden), "sin", dim),
            "imp": our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin", dim),
            "mono": our_flow("monotone", sz.res_blocks, list(sz.hidden), "sin", dim),
        }
        n = {k: count_parameters(f) for k, f in flows.items()}
        for stage in ("fresh", "trained"):
            if stage == "trained":
                for f in flows.values():
                    step = train_step(lambda x, f=f: -f.log_prob(x).mean(), f.parameters(),
                                      data, sz.batch)  # fmt: skip
                    for _ in range(sz.floor_train):
                        step()
            t = interleaved(
                {k: train_step(lambda x, f=f: -f.log_prob(x).mean(), f.parameters(), data,
                               sz.batch) for k, f in flows.items()},
                repeats,
            )  # fmt: skip
            where = f"{dim}-D, {stage}" + (
                f" ({sz.floor_train} steps)" if stage == "trained" else ""
            )
            for k, name in (("mono", "Monotone-8"), ("imp", "ImpFlow-4")):
                rows.append((f"{name} step / ResFlow-8 step, {where}, batch {sz.batch} "
                             f"({n[k]} vs {n['res']} parameters)",
                             f"{t[k] / t['res']:.2f} ({1e3 * t[k]:.0f} / {1e3 * t['res']:.0f} ms)"))  # fmt: skip
            rows.append((f"Monotone-8 step / ImpFlow-4 step, {where}",
                         f"{t['mono'] / t['imp']:.2f}"))  # fmt: skip
    return rows


def _trained(flow: Any, steps: int, batch: int = 256, n_data: int = 20000) -> Any:
    """Train a flow briefly on the checkerboard so that its solves are realistic."""
    data = checkerboard(n_data, seed=3)
    step = train_step(lambda x: -flow.log_prob(x).mean(), flow.parameters(), data, batch)
    for _ in range(steps):
        step()
    return flow


def section_sampling(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    from implicit_transforms import solver_tolerance

    rows = []
    for name, flow in (
        ("ResFlow-8", _trained(our_flow("resflow", sz.res_blocks, list(sz.hidden)),
                               sz.sampling_train, sz.batch, sz.data)),
        ("ImpFlow-4", _trained(our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin"),
                               sz.sampling_train, sz.batch, sz.data)),
    ):  # fmt: skip
        flow.eval()
        z = torch.randn(sz.samples, 2, generator=torch.Generator().manual_seed(5))
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


def section_pyro(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
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
            lambda dim: ComposeTransformModule(
                [helper(dim, list(sz.pyro_hidden)) for _ in range(blocks)]
            ),
        )

    guides = {
        "IAF": AutoIAFNormal(model, hidden_dim=list(sz.pyro_hidden), num_transforms=2),
        "ImpFlow-1": ours(impflow, 1),
        "ResFlow-2": ours(resflow, 2),
    }
    steps, samplers, params = {}, {}, {}
    for name, guide in guides.items():
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                  Trace_ELBO(num_particles=8, vectorize_particles=True))  # fmt: skip
        svi.step()
        params[name] = count_parameters(guide)
        steps[name] = svi.step

        def sample(guide: Any = guide) -> None:
            with torch.no_grad():
                guide.get_posterior().sample((sz.samples,))

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


def _count_work(flow: Any, step: Callable[[], None], rows: int) -> tuple[float, int, int]:
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

    batch["rows"] = rows
    LipschitzNet.evaluate = counting  # type: ignore[method-assign]
    torch.autograd.grad = counting_grad
    try:
        step()
    finally:
        LipschitzNet.evaluate = original  # type: ignore[method-assign]
        torch.autograd.grad = original_grad
    return counts["grad"] + counts["nograd"], int(counts["grad"]), int(counts["vjp"])


def section_floor(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    from implicit_transforms.lipschitz import LipschitzMLP

    net = LipschitzMLP(2, list(sz.hidden), activation="sin")
    x = torch.randn(sz.batch, 2)
    weights = [layer.prepare(None).detach() for layer in net.layers]

    def forward() -> None:
        with torch.no_grad():
            net.evaluate(x, weights, None)

    xg = x.clone().requires_grad_()
    out = net.evaluate(xg, [w.requires_grad_() for w in weights], None)
    v = torch.randn_like(out)

    def vjp() -> None:
        torch.autograd.grad(out, [xg, *weights], v, retain_graph=True)

    t = interleaved({"f": forward, "v": vjp}, sz.floor_repeats)
    rows = []
    data = checkerboard(sz.data)
    for name, flow in (("ResFlow-8", our_flow("resflow", sz.res_blocks, list(sz.hidden), "sin")),
                       ("ImpFlow-4", our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin"))):  # fmt: skip
        _trained(flow, sz.floor_train, sz.batch, sz.data)
        flow.train()
        step = train_step(lambda b, f=flow: -f.log_prob(b).mean(), flow.parameters(), data, sz.batch)  # fmt: skip
        step_time = interleaved({"s": step}, repeats)["s"]
        fwd, fwd_grad, vjps = _count_work(flow, step, sz.batch)
        # every forward costs t_f; every VJP, and the backward of every recorded forward, t_v
        floor = fwd * t["f"] + (vjps + fwd_grad) * t["v"]
        rows.append((f"{name} step / network-evaluation floor ({fwd:.1f} forwards, "
                     f"{vjps + fwd_grad} backward passes of one network on the batch)",
                     f"{step_time / floor:.2f} ({1e3 * step_time:.1f} / {1e3 * floor:.1f} ms)"))  # fmt: skip
    return rows


def section_memory(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    out = {}
    low, high = sz.memory_max_iters
    for max_iter in (low, high):  # each in a fresh process: the peak RSS is the step's own
        cmd = [sys.executable, __file__, "--child-memory", str(max_iter), str(sz.memory_batch),
               ",".join(map(str, sz.hidden))]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        saved, rss = (int(v) for v in res.stdout.split())
        out[max_iter] = (saved / 2**20, rss / 2**10)
    return [(f"ImpFlow-4 step memory, max_iter {high} / {low} (batch {sz.memory_batch}, every "
             "solve runs to max_iter)",
             f"saved tensors {out[high][0] / out[low][0]:.2f} ({out[high][0]:.1f} / "
             f"{out[low][0]:.1f} MiB); peak RSS {out[high][1] / out[low][1]:.2f} "
             f"({out[high][1]:.0f} / {out[low][1]:.0f} MiB)")]  # fmt: skip


def memory_child(max_iter: int, batch: int, hidden: list[int]) -> tuple[int, int]:
    """Saved-tensor bytes and peak RSS (KiB) of one ImpFlow-4 training step whose every solve
    runs to ``max_iter`` (run in a fresh process by :func:`section_memory`)."""
    from implicit_transforms.plugins.nflows import ImpFlowTransform
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform

    from implicit_transforms.solvers import Broyden

    torch.manual_seed(0)
    solver = Broyden(max_iter=max_iter, atol=1e-30, rtol=0.0, on_failure="ignore")
    flow = Flow(
        CompositeTransform(
            [ImpFlowTransform(2, hidden, activation="sin", solver=solver) for _ in range(4)]
        ),
        StandardNormal([2]),
    )
    x = checkerboard(batch)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -flow.log_prob(x).mean()
    loss.backward()
    return saved[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def section_solvers(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
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


def section_compile(repeats: int, sz: Sizes) -> list[tuple[str, str]]:
    data = checkerboard(sz.data)
    eager = our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin")
    compiled = our_flow("impflow", sz.imp_blocks, list(sz.hidden), "sin")
    compiled.load_state_dict(eager.state_dict())
    for m in compiled.modules():
        if hasattr(m, "compile_evaluation") and m is not compiled:
            m.compile_evaluation()
    t0 = time.perf_counter()
    steps = {
        "eager": train_step(
            lambda x: -eager.log_prob(x).mean(), eager.parameters(), data, sz.batch
        ),
        "compiled": train_step(
            lambda x: -compiled.log_prob(x).mean(), compiled.parameters(), data, sz.batch
        ),
    }
    steps["compiled"]()
    first = time.perf_counter() - t0
    t = interleaved(steps, repeats, warmup=5)
    return [("ImpFlow-4 step, torch.compile'd network evaluations / eager (CPU)",
             f"{t['compiled'] / t['eager']:.2f} ({1e3 * t['compiled']:.0f} / "
             f"{1e3 * t['eager']:.0f} ms; first compiled step {first:.0f} s)")]  # fmt: skip


SECTIONS: dict[str, Callable[[int, Sizes], list[tuple[str, str]]]] = {
    "normflows": section_normflows,
    "impflow": section_impflow,
    "families": section_families,
    "sampling": section_sampling,
    "pyro": section_pyro,
    "floor": section_floor,
    "memory": section_memory,
    "solvers": section_solvers,
    "compile": section_compile,
}


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child-memory"]:  # internal: one measurement of section_memory
        max_iter, batch, hidden = args_in[1:4]
        print(*memory_child(int(max_iter), int(batch), [int(h) for h in hidden.split(",")]))
        return
    p = parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(args_in)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections must be among {', '.join(SECTIONS)}, got {', '.join(sorted(unknown))}")
    out = output_folder(args, RESULTS, "speed")
    sizes = Sizes.smoke() if args.smoke else Sizes()
    repeats = 1 if args.smoke else args.repeats
    one_thread()
    env = environment()
    print(f"torch {torch.__version__}, one thread, CPU time")
    print("| measurement | ratio (absolute) |\n|---|---|")
    rows: list[tuple[str, str]] = []
    for name in args.sections.split(","):
        for label, value in SECTIONS[name](repeats, sizes):
            print(f"| {label} | {value} |", flush=True)
            rows.append((label, value))
    settings = {"sections": args.sections, "repeats": repeats, "sizes": asdict(sizes)}
    write_json(out / "speed.json", {"settings": settings, "rows": rows}, env)
    table = markdown_table(["measurement", "ratio (absolute)"], rows)
    print(f"wrote {write_markdown(out / 'speed.md', table, env)}")


if __name__ == "__main__":
    main()
