"""Training-mode log-densities are exact where the exact log-det costs no more than the
stochastic estimator (issue 17): events of at most ``EXACT_LOGDET_TRAIN_MAX_DIM`` elements,
measured by ``benchmarks/exact_threshold.py``. Checked for every entry point (factories, nflows
transforms, Pyro helpers) of every family, against autograd + ``slogdet`` in float64; above the
threshold the family's estimator stays; explicit estimator settings always win."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

pytest.importorskip("nflows")
pytest.importorskip("pyro")

import pyro.distributions as pdist
from implicit_transforms.plugins import nflows as nf
from implicit_transforms.plugins import pyro as py
from nflows.distributions import StandardNormal
from nflows.flows import Flow

from implicit_transforms.blocks import (
    EXACT_LOGDET_TRAIN_MAX_DIM,
    BlockOptions,
    InvertibleBlock,
    impflow_block,
    iresnet_block,
    monotone_block,
    resflow_block,
)
from implicit_transforms.logdet import (
    ExactLogDet,
    Geometric,
    PowerSeriesLogDet,
    RouletteLogDet,
)

FAMILIES = ("resflow", "impflow", "iresnet", "monotone")
FACTORIES = {
    "resflow": resflow_block,
    "impflow": impflow_block,
    "iresnet": iresnet_block,
    "monotone": monotone_block,
}
TRANSFORMS = {
    "resflow": nf.ResFlowTransform,
    "impflow": nf.ImpFlowTransform,
    "iresnet": nf.IResNetTransform,
    "monotone": nf.MonotoneTransform,
}
HELPERS = {
    "resflow": py.resflow,
    "impflow": py.impflow,
    "iresnet": py.iresnet,
    "monotone": py.monotone,
}
STOCHASTIC = {
    "resflow": RouletteLogDet,
    "impflow": RouletteLogDet,
    "iresnet": PowerSeriesLogDet,
    "monotone": RouletteLogDet,
}


def _build(host: str, family: str, dim: int, **changes: Any) -> InvertibleBlock:
    """The block an entry point builds for ``(*, dim)`` events."""
    if host == "factory":
        return FACTORIES[family](dim, [16], **changes)
    if host == "nflows":
        return TRANSFORMS[family](dim, [16], **changes).block
    return HELPERS[family](dim, **changes).block


HOSTS = ("factory", "nflows", "pyro")


def _exact_logdet(forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log|det d forward(x_i) / dx_i|`` per sample by autograd and ``slogdet``."""
    jac = torch.autograd.functional.jacobian(lambda t: forward(t).sum(0), x)  # (d, n, d)
    return torch.linalg.slogdet(jac.permute(1, 0, 2))[1]


def _perturb(block: InvertibleBlock) -> None:
    """Move the networks away from their near-identity start, so that the log-det is far
    from zero and an estimator's noise would show."""
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))


# -- 2-D: exact and deterministic in training mode, at every entry point ----------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_training_logdet_is_exact_in_2d(family: str) -> None:
    block = FACTORIES[family](2, [16]).train()
    _perturb(block)
    x = torch.randn(64, 2)
    ld1 = block.forward_and_logdet(x)[1]
    ld2 = block.forward_and_logdet(x.clone())[1]
    assert torch.equal(ld1, ld2)
    exact = _exact_logdet(block.forward_map, x)
    assert torch.allclose(ld1, exact, atol=1e-6), (ld1 - exact).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_nflows_training_log_prob_is_exact_in_2d(family: str) -> None:
    transform = TRANSFORMS[family](2)
    flow = Flow(transform, StandardNormal([2])).train()
    _perturb(transform.block)
    x = torch.randn(64, 2)
    lp1, lp2 = flow.log_prob(x), flow.log_prob(x.clone())
    assert torch.equal(lp1, lp2)
    y = transform.block.forward_map(x).detach()
    exact = -0.5 * y.pow(2).sum(-1) - torch.log(torch.tensor(2 * torch.pi))
    exact = exact + _exact_logdet(transform.block.forward_map, x)
    assert torch.allclose(lp1, exact, atol=1e-6), (lp1 - exact).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_pyro_training_log_prob_is_exact_in_2d(family: str) -> None:
    """The issue's case: two ``q.log_prob(z)`` of equal values (no cache hit) used to differ
    by about 0.3 nats."""
    t = HELPERS[family](2).train()
    _perturb(t.block)
    q = pdist.TransformedDistribution(pdist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    z = torch.randn(64, 2)
    lp1, lp2 = q.log_prob(z), q.log_prob(z.clone())
    assert torch.equal(lp1, lp2)
    x = t.block.inverse_map(z).detach()
    assert torch.allclose(t.block.forward_map(x), z, atol=1e-8)
    exact = -0.5 * x.pow(2).sum(-1) - torch.log(torch.tensor(2 * torch.pi))
    exact = exact - _exact_logdet(t.block.forward_map, x)
    assert torch.allclose(lp1, exact, atol=1e-6), (lp1 - exact).abs().max()


def test_pyro_conditional_helpers_are_exact_in_2d() -> None:
    for helper in (
        py.conditional_resflow,
        py.conditional_impflow,
        py.conditional_iresnet,
        py.conditional_monotone,
    ):
        assert isinstance(helper(2, 3).block.logdet_train, ExactLogDet), helper.__name__


# -- the threshold: one constant, read by every entry point -----------------------------------


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_entry_point_switches_at_the_one_threshold(host: str, family: str) -> None:
    at = _build(host, family, EXACT_LOGDET_TRAIN_MAX_DIM)
    above = _build(host, family, EXACT_LOGDET_TRAIN_MAX_DIM + 1)
    assert isinstance(at.logdet_train, ExactLogDet)
    assert isinstance(above.logdet_train, STOCHASTIC[family])


def test_images_count_elements_not_channels() -> None:
    """The threshold is on the event's number of elements, ``C H W``."""
    n = EXACT_LOGDET_TRAIN_MAX_DIM
    assert isinstance(resflow_block((1, 1, n), 4).logdet_train, ExactLogDet)
    assert isinstance(resflow_block((1, 1, n + 1), 4).logdet_train, RouletteLogDet)


def test_above_the_threshold_training_log_prob_stays_stochastic() -> None:
    t = py.resflow(EXACT_LOGDET_TRAIN_MAX_DIM + 1).train()
    _perturb(t.block)
    q = pdist.TransformedDistribution(
        pdist.Normal(torch.zeros(EXACT_LOGDET_TRAIN_MAX_DIM + 1), 1.0).to_event(1), [t]
    )
    z = torch.randn(64, EXACT_LOGDET_TRAIN_MAX_DIM + 1)
    draws = [q.log_prob(z.clone()) for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


# -- explicit settings win ---------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(
    ("family", "changes"),
    [
        ("resflow", {"n_probes": 2}),
        ("impflow", {"n_exact_terms": 3}),
        ("iresnet", {"n_terms": 7}),
        ("resflow", {"generator": torch.Generator()}),
        ("iresnet", {"n_probes": 1}),
    ],
    ids=["n_probes", "n_exact_terms", "n_terms", "generator", "n_probes-default-value"],
)
def test_estimator_settings_win_below_the_threshold(
    host: str, family: str, changes: dict[str, Any]
) -> None:
    block = _build(host, family, 2, **changes)
    assert isinstance(block.logdet_train, STOCHASTIC[family])


@pytest.mark.parametrize("host", HOSTS)
def test_explicit_logdet_train_and_options_win(host: str) -> None:
    mine = RouletteLogDet(Geometric(0.5, 1), 1)
    assert _build(host, "resflow", 2, logdet_train=mine).logdet_train is mine
    opts = BlockOptions(n_probes=3)
    block = _build(host, "impflow", 2, options=opts)
    assert isinstance(block.logdet_train, RouletteLogDet) and block.logdet_train.n_probes == 3
    exact = ExactLogDet(max_dim=8)
    assert _build(host, "iresnet", 40, logdet_train=exact).logdet_train is exact


def test_resolve_without_an_event_shape_keeps_the_family_estimator() -> None:
    assert isinstance(BlockOptions().resolve("resflow").logdet_train, RouletteLogDet)
    assert isinstance(BlockOptions().resolve("resflow", (2,)).logdet_train, ExactLogDet)
    assert isinstance(
        BlockOptions().resolve("iresnet", (1, 1, EXACT_LOGDET_TRAIN_MAX_DIM + 1)).logdet_train,
        PowerSeriesLogDet,
    )


def test_threshold_benchmark_runs_in_smoke_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``benchmarks/exact_threshold.py`` (the measurement behind the constant) still runs."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "exact_threshold.py"
    spec = importlib.util.spec_from_file_location("exact_threshold", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    argv = ["exact_threshold.py", "--repeats", "1", "--dims", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)
    rows = [
        r
        for r in capsys.readouterr().out.splitlines()
        if r.startswith("| nflows") or r.startswith("| pyro")
    ]
    assert len(rows) == 4  # two hosts x two families
