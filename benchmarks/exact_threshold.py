"""Where the exact log-det stops being cheaper than the stochastic estimator in training.

For each host's default networks (factories and nflows transforms: ``[64, 64]`` sine; Pyro
helpers: ``2 x max(16, 8 D)`` LipSwish) and each event size ``D``, times one training step
(forward and backward of ``log_prob``; batch 256, float32, one thread) of a single ResFlow or
ImpFlow block with ``ExactLogDet`` and with the family's default Russian-roulette estimator,
interleaved in one process (``_common.interleaved``: medians of process CPU time), and prints
the median of each and their ratio; writes ``exact_threshold.{json,md}`` (with the
environment) to ``--out`` (default ``benchmarks/results``).

    .venv/bin/python benchmarks/exact_threshold.py [--repeats 15] [--dims 2 4 8 ...] [--smoke]

The largest ``D`` at which exact costs no more than the estimator on every host is the
training threshold (``implicit_transforms.blocks.EXACT_LOGDET_TRAIN_MAX_DIM``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pyro.distributions as pdist
import torch
from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
from implicit_transforms.plugins.pyro import impflow, resflow
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from torch import Tensor, nn

from implicit_transforms.logdet import ExactLogDet, Geometric, RouletteLogDet

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


def training_step(model: nn.Module, loss: Callable[[], Tensor]) -> Timed:
    """Forward and backward of ``loss`` timed; zeroing the gradients is not."""
    return Timed(lambda: loss().backward(), before=lambda: model.zero_grad(set_to_none=True))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--hosts", nargs="+", default=["nflows", "pyro"], choices=["nflows", "pyro"])
    args = p.parse_args()
    if args.smoke:
        args.repeats, args.dims = 1, [2]
    out = output_folder(args, RESULTS, "exact_threshold")
    one_thread()
    env = environment()
    torch.manual_seed(0)
    builders = {"nflows": nflows_step, "pyro": pyro_step}
    header = ["host", "block", "D", "exact (ms)", "roulette (ms)", "exact / roulette"]
    print(markdown_table(header, []))
    rows = []
    for host in args.hosts:
        for family in ("resflow", "impflow"):
            for dim in args.dims:
                cases = {
                    "exact": training_step(*builders[host](family, dim, True)),
                    "roulette": training_step(*builders[host](family, dim, False)),
                }
                # one warm-up round (spectral norms, first allocations)
                t = interleaved(cases, args.repeats, warmup=1)
                exact_ms, est_ms = 1e3 * t["exact"], 1e3 * t["roulette"]
                row = [host, family, dim, f"{exact_ms:.1f}", f"{est_ms:.1f}"]
                row.append(f"{exact_ms / est_ms:.2f}")
                rows.append(row)
                print("| " + " | ".join(map(str, row)) + " |", flush=True)
    settings = {"repeats": args.repeats, "dims": args.dims, "hosts": args.hosts, "batch": BATCH}
    write_json(out / "exact_threshold.json", {"settings": settings, "rows": rows}, env)
    write_markdown(out / "exact_threshold.md", markdown_table(header, rows), env)
    print(f"wrote {out / 'exact_threshold.json'}")


if __name__ == "__main__":
    main()
