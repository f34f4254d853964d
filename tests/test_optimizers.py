"""The Lipschitz guarantee under the hosts' real optimizers.

Each case trains a block for a few hundred steps at lr 1e-2 on an objective that pushes the
flow to expand (nflows: likelihood of data 100x narrower than the base; Pyro: a guide for a
posterior 100x wider than the base), then checks the certified bound of every network in
training mode after a forward and in evaluation mode, and a round trip to tolerance. The
optimizers are the ones users bring: fused and foreach kernels and Pyro's ``ClippedAdam``
write the weights without the version-counter bumps that a naive implementation relies on,
and the manual loop writes through ``p.data``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cases import round_trip_bound

pyro = pytest.importorskip("pyro")
pytest.importorskip("nflows")

import pyro.distributions as dist
from implicit_transforms.plugins.nflows import ImpFlowTransform, MonotoneTransform, ResFlowTransform
from implicit_transforms.plugins.pyro import impflow, monotone, resflow
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import CompositeTransform
from pyro.infer import SVI, Trace_ELBO
from pyro.optim.clipped_adam import ClippedAdam

from implicit_transforms import ImplicitBlock, InvertibleBlock
from implicit_transforms.lipschitz import certify
from implicit_transforms.solvers import default_tolerance

D, HIDDEN, STEPS, LR = 3, [16, 16], 200, 1e-2
NFLOWS_TRANSFORMS = {
    "resflow": ResFlowTransform,
    "impflow": ImpFlowTransform,
    "monotone": MonotoneTransform,
}
PYRO_HELPERS = {"resflow": resflow, "impflow": impflow, "monotone": monotone}

TORCH_OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], Any]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=LR),
    "adam": lambda p: torch.optim.Adam(p, lr=LR),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=LR, fused=True),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=LR, foreach=True),
    "clipped-adam": lambda p: ClippedAdam(p, lr=LR),
    "p.data": lambda p: None,
}
PYRO_OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "sgd": lambda: pyro.optim.SGD({"lr": LR}),
    "adam": lambda: pyro.optim.Adam({"lr": LR}),
    "adam-fused": lambda: pyro.optim.Adam({"lr": LR, "fused": True}),
    "adamw-foreach": lambda: pyro.optim.AdamW({"lr": LR, "foreach": True}),
    "clipped-adam": lambda: pyro.optim.ClippedAdam({"lr": LR}),
    "p.data": lambda: None,
}


def _manual_step(params: list[torch.nn.Parameter]) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.data.add_(p.grad, alpha=-LR)


def _check_guarantee(model: torch.nn.Module, block: InvertibleBlock) -> None:
    x = torch.randn(64, D)
    model.train()
    block.forward_and_logdet(x)
    trained = certify(model)
    assert len(trained.networks) == len(block.networks())
    assert trained.contractive, f"training mode: {trained}"
    model.eval()  # refines and certifies; a bound >= 1 would warn (an error in tests)
    evaluated = certify(model)
    assert evaluated.contractive, f"evaluation mode: {evaluated}"
    with torch.no_grad():
        y, _ = block.forward_and_logdet(x)
        # An implicit forward is itself a solve: x is then a root of the inverse residual only
        # up to that solve's residual (explicit forwards are exact up to rounding).
        fwd = block.last_solve.residual if isinstance(block, ImplicitBlock) else 0.0
        x_rec, _ = block.inverse_and_logdet(y)
    # ||x_rec - x|| <= (||F(x_rec)|| + ||F(x)||) / (1 - Lip), ||F(x_rec)|| <= tol (1 + ||x||)
    # (cases.round_trip_bound) and ||F(x)|| the implicit forward solve's residual.
    tol = default_tolerance(x.dtype)
    err = (x_rec - x).norm(dim=1)
    bound = round_trip_bound(block, x_rec, y, tol, evaluated.bound) + fwd / (1 - evaluated.bound)
    assert bool((err <= bound).all()), float((err / bound).max())


@pytest.mark.parametrize("family", ["resflow", "impflow", "monotone"])
@pytest.mark.parametrize("opt_name", TORCH_OPTIMIZERS)
def test_nflows_training_keeps_every_network_contractive(family: str, opt_name: str) -> None:
    maker = NFLOWS_TRANSFORMS[family]
    transform = maker(D, HIDDEN)
    flow = Flow(CompositeTransform([transform]), StandardNormal([D]))
    data = 0.01 * torch.randn(2048, D)
    params = list(flow.parameters())
    opt = TORCH_OPTIMIZERS[opt_name](params)
    for _ in range(STEPS):
        loss = -flow.log_prob(data[torch.randint(0, data.shape[0], (64,))]).mean()
        for p in params:
            p.grad = None
        loss.backward()
        _manual_step(params) if opt is None else opt.step()
    _check_guarantee(flow, transform.block)


@pytest.mark.parametrize("family", ["resflow", "impflow", "monotone"])
@pytest.mark.parametrize("opt_name", PYRO_OPTIMIZERS)
def test_pyro_svi_keeps_every_network_contractive(family: str, opt_name: str) -> None:
    pyro.clear_param_store()
    transform = PYRO_HELPERS[family](D, HIDDEN)

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(D), 100.0).to_event(1))

    def guide() -> None:
        pyro.module("t", transform)
        base = dist.Normal(torch.zeros(D), 1.0).to_event(1)
        pyro.sample("z", dist.TransformedDistribution(base, [transform]))

    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    optim = PYRO_OPTIMIZERS[opt_name]()
    svi = None if optim is None else SVI(model, guide, optim, elbo)
    params = list(transform.parameters())
    for _ in range(STEPS):
        if svi is not None:
            svi.step()
            continue
        loss = elbo.differentiable_loss(model, guide)
        for p in params:
            p.grad = None
        loss.backward()
        _manual_step(params)
    _check_guarantee(transform, transform.block)


def test_load_state_dict_into_an_evaluating_model_is_seen() -> None:
    """Weights loaded while the model is in evaluation mode are normalised on the next call."""
    trained = ResFlowTransform(D, HIDDEN)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(20.0)
    fresh = ResFlowTransform(D, HIDDEN)
    fresh.eval()
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(8, D)
    fresh.forward(x)
    assert certify(fresh).contractive


@pytest.mark.parametrize("family", ["resflow", "impflow", "monotone"])
@pytest.mark.parametrize("opt_name", ["adam-fused", "clipped-adam", "p.data"])
def test_convolutional_blocks_stay_contractive_in_training(family: str, opt_name: str) -> None:
    """Convolutions are normalised by the exact norm of a circular convolution (a guaranteed
    bound), so the certificate holds at every step, not only after a refinement."""
    maker = NFLOWS_TRANSFORMS[family]
    transform = maker((2, 4, 4), 6)
    data = 0.01 * torch.randn(256, 2, 4, 4)
    params = list(transform.parameters())
    opt = TORCH_OPTIMIZERS[opt_name](params)
    for step in range(100):
        z, ld = transform(data[torch.randint(0, data.shape[0], (16,))])
        loss = (0.5 * z.pow(2).flatten(1).sum(1) - ld).mean()
        for p in params:
            p.grad = None
        loss.backward()
        _manual_step(params) if opt is None else opt.step()
        if step % 25 == 24:
            transform(data[:2])
            assert certify(transform).contractive, step
    transform.eval()
    assert certify(transform).contractive
