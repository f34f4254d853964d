"""Where the exact log-det stops being cheaper than the stochastic estimator in training.

For each host's default networks (factories and nflows transforms: ``[64, 64]`` sine; Pyro
helpers: ``2 x max(16, 8 D)`` LipSwish) and each event size ``D``, times one training step
(forward and backward of ``log_prob``; batch 256, float32, one thread) of a single ResFlow or
ImpFlow block with ``ExactLogDet`` and with the family's default Russian-roulette estimator,
interleaved in one process, and prints the median of each and their ratio.

    .venv/bin/python benchmarks/exact_threshold.py [--repeats 15] [--dims 2 4 8 ...]

The largest ``D`` at which exact costs no more than the estimator on every host is the
training threshold (``implicit_transforms.blocks.EXACT_LOGDET_TRAIN_MAX_DIM``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyro.distributions as pdist
import torch
from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
from implicit_transforms.plugins.pyro import impflow, resflow
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from torch import Tensor, nn

from implicit_transforms.logdet import ExactLogDet, Geometric, RouletteLogDet

BATCH = 256


def roulette() -> RouletteLogDet:
    """The resflow/impflow default training estimator (see ``BlockOptions``)."""
    return RouletteLogDet(Geometric(0.5, 2), 1, gradient="neumann")


def nflows_step(family: str, dim: int, exact: bool) -> tuple[nn.Module, Callable[[], Tensor]]:
    """A one-block nflows ``Flow`` with the transforms' default hidden sizes, and its loss."""
    cls = ResFlowTransform if family == "resflow" else ImpFlowTransform
    est = ExactLogDet() if exact else roulette()
    flow = Flow(cls(dim, logdet_train=est), StandardNormal([dim])).train()
    x = torch.randn(BATCH, dim)
    return flow, lambda: -flow.log_prob(x).mean()


def pyro_step(family: str, dim: int, exact: bool) -> tuple[nn.Module, Callable[[], Tensor]]:
    """A one-block Pyro guide with the helpers' default hidden sizes, and its ELBO-style
    loss (reparameterised sample, then ``log_prob`` of that sample: a cache hit)."""
    helper = resflow if family == "resflow" else impflow
    t = helper(dim, logdet_train=ExactLogDet() if exact else roulette())
    t.train()
    q = pdist.TransformedDistribution(pdist.Normal(torch.zeros(dim), 1.0).to_event(1), [t])

    def loss() -> Tensor:
        z = q.rsample((BATCH,))
        return (q.log_prob(z) + 0.5 * z.pow(2).sum(-1)).mean()

    return t, loss


def time_step(model: nn.Module, loss: Callable[[], Tensor]) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--hosts", nargs="+", default=["nflows", "pyro"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    builders = {"nflows": nflows_step, "pyro": pyro_step}
    print("| host | block | D | exact (ms) | roulette (ms) | exact / roulette |")
    print("|---|---|---|---|---|---|")
    for host in args.hosts:
        for family in ("resflow", "impflow"):
            for dim in args.dims:
                cases = [builders[host](family, dim, exact) for exact in (True, False)]
                for case in cases:  # warm-up (spectral norms, first allocations)
                    time_step(*case)
                times: list[list[float]] = [[], []]
                for _ in range(args.repeats):
                    for i, case in enumerate(cases):
                        times[i].append(time_step(*case))
                exact_ms, est_ms = (1e3 * statistics.median(t) for t in times)
                print(
                    f"| {host} | {family} | {dim} | {exact_ms:.1f} | {est_ms:.1f} | "
                    f"{exact_ms / est_ms:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
