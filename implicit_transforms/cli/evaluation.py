"""Evaluation of a trained flow: exact test likelihood, round trips, solver statistics.

All functions run the flow in evaluation mode (exact log-det for ``D <= 64``) without
gradients and process the data in batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from nflows.flows import Flow
from torch import Tensor, nn

from implicit_transforms.cli.models import blocks_of
from implicit_transforms.cli.session import Session
from implicit_transforms.lipschitz import LipschitzNet, certify
from implicit_transforms.lipschitz.spectral import SpectralConv2d, SpectralLinear
from implicit_transforms.logdet import ExactLogDet, LogDetEstimator

__all__ = [
    "SolveLog",
    "evaluation_logdets",
    "evaluation_mode",
    "is_exact",
    "lipschitz_bound",
    "log_prob",
    "nll_summary",
    "reconstruction_error",
    "refine_spectral_norms",
    "sample",
    "split_nll",
]


@dataclass
class SolveLog:
    """Per-block solver iteration counts collected over several calls.

    ``mean`` is the average number of iterations of one block solve (over samples, blocks
    and calls); ``max`` the largest count of any sample; both are ``None`` when no block
    solved anything (e.g. the explicit direction of a residual flow).
    """

    total: float = 0.0
    count: int = 0
    max: int | None = None
    _blocks: list[nn.Module] = field(default_factory=list, repr=False)

    @property
    def mean(self) -> float | None:
        """Mean iterations per block solve, ``None`` if there was none."""
        return self.total / self.count if self.count else None

    @contextmanager
    def watch(self, flow: nn.Module) -> Iterator[None]:
        """Record the solves made by the blocks of ``flow`` inside the ``with`` body."""
        blocks = list(blocks_of(flow))
        for b in blocks:
            b.last_solve = None
        yield
        for b in blocks:
            r = b.last_solve
            if r is None:
                continue
            its = r.iterations.float()
            self.total += float(its.mean())
            self.count += 1
            self.max = max(self.max or 0, int(its.max()))


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode and no autograd inside the body; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluation_logdets(flow: nn.Module, event_numel: int) -> list[LogDetEstimator]:
    """The log-det estimator of every block of ``flow`` in evaluation mode, for events of
    ``event_numel`` numbers (blocks default to the exact log-det up to 64 numbers, their
    training estimator above; the trainer gives large events a 30-term power series)."""
    with evaluation_mode(flow):
        return [b.estimator(event_numel) for b in blocks_of(flow)]


def is_exact(estimators: list[LogDetEstimator]) -> bool:
    """Whether every estimator computes the exact log-det (true for none: couplings only)."""
    return all(isinstance(e, ExactLogDet) for e in estimators)


def _batched(x: Tensor, batch_size: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(batch_size)])


def log_prob(flow: Flow, x: Tensor, batch_size: int, solves: SolveLog | None = None) -> Tensor:
    """``log p(x)`` per sample (data units), shape ``(N,)``, in evaluation mode."""
    log = solves or SolveLog()

    def one(chunk: Tensor) -> Tensor:
        with log.watch(flow):
            return flow.log_prob(chunk)

    with evaluation_mode(flow):
        return _batched(x, batch_size, one)


def sample(
    flow: Flow,
    n: int,
    features: int,
    batch_size: int,
    generator: torch.Generator,
    solves: SolveLog | None = None,
) -> Tensor:
    """``n`` samples of a flow with a standard normal base in ``R^features``, drawn with
    ``generator`` (noise to data); shape ``(n, features)``."""
    log = solves or SolveLog()
    transform = flow._transform
    param = next(iter(flow.parameters()))
    out = []
    with evaluation_mode(flow):
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            noise = torch.randn(m, features, generator=generator, device=param.device)
            with log.watch(flow):
                x, _ = transform.inverse(noise.to(param.dtype))
            out.append(x)
    return torch.cat(out) if out else param.new_zeros(0, features)


def reconstruction_error(
    flow: Flow, x: Tensor, batch_size: int, forward: SolveLog, inverse: SolveLog
) -> Tensor:
    """``|inverse(forward(x)) - x|`` per sample (max over features, data units; images: on the
    ``[0, 1]`` scale), shape ``(N,)``."""
    transform = flow._transform

    def one(chunk: Tensor) -> Tensor:
        with forward.watch(flow):
            z, _ = transform(chunk)
        with inverse.watch(flow):
            back, _ = transform.inverse(z)
        return (back - chunk).abs().flatten(1).amax(dim=1)

    with evaluation_mode(flow):
        return _batched(x, batch_size, one)


def split_nll(
    session: Session,
    split: str,
    batch_size: int,
    seed: int,
    solves: SolveLog | None = None,
    *,
    shard: bool = False,
) -> Tensor:
    """Per-sample negative log-likelihood (nats) of a whole split in evaluation mode, ``(N,)``
    (float64, CPU); for images the dequantisation bound (see
    :class:`~implicit_transforms.cli.models.DensityModel`).

    The split is cut into chunks of ``batch_size``; chunk ``i``'s dequantisation noise comes
    from the seed ``seed + i``, so the result does not depend on how the chunks are shared. With
    ``shard`` each process of a distributed run evaluates every ``world.size``-th chunk and the
    results are summed over processes (every rank gets the full vector).
    """
    log = solves or SolveLog()
    data = session.split(split)
    n = int(data.shape[0])
    world = session.world
    out = torch.zeros(n, dtype=torch.float64)
    with evaluation_mode(session.model):
        for i, start in enumerate(range(0, n, batch_size)):
            if shard and i % world.size != world.rank:
                continue
            chunk = data[start : start + batch_size]
            noise = session.noise(tuple(chunk.shape), seed + i)
            with log.watch(session.flow):
                nll = session.model(session.to_model(chunk), noise)
            out[start : start + len(chunk)] = nll.double().cpu()
    if shard and world.distributed:
        out = world.sum(out.to(session.device)).cpu()
    return out


def refine_spectral_norms(model: nn.Module, tol: float = 1e-6) -> None:
    """Run every spectral layer's power iteration to ``tol`` (before evaluation)."""
    for m in model.modules():
        if isinstance(m, (SpectralLinear, SpectralConv2d)) and m._ready():
            m.refine(tol)


def lipschitz_bound(model: nn.Module) -> float | None:
    """Largest certified ``Lip`` over the Lipschitz networks of ``model`` (``None``: none)."""
    bounds = [certify(m).bound for m in model.modules() if isinstance(m, LipschitzNet)]
    return max(bounds) if bounds else None


def nll_summary(logp: Tensor, features: int) -> dict[str, float | None]:
    """Mean negative log-likelihood in nats and bits per sample, bits per dimension, and the
    standard error of the mean in bits (``None`` for a single sample, which has none)."""
    nll = -logp.double()
    n = nll.numel()
    mean = float(nll.mean())
    return {
        "nll_nats": mean,
        "nll_bits": mean / math.log(2),
        "nll_bits_per_dim": mean / math.log(2) / features,
        "nll_bits_stderr": float(nll.std() / math.sqrt(n)) / math.log(2) if n > 1 else None,
    }
