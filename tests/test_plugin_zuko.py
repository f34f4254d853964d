"""zuko plugin, in zuko's idioms: ``zuko.lazy.Flow`` built from lazy transforms, ``flow(c)``
giving a distribution, its training loop (``-flow(c).log_prob(x).mean()`` + Adam), its
direction (``call_and_ladj`` data to base, ``.inv`` to sample), and Pyro through
``pyro.contrib.zuko.ZukoToPyro``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

zuko = pytest.importorskip("zuko")

from implicit_transforms.plugins.zuko import (
    BlockLazyTransform,
    BlockTransform,
    ImpFlow,
    IResNet,
    Monotone,
    ResFlow,
    implicit_flow,
)

from implicit_transforms.solvers import Broyden, FixedPoint, SolverResult

LAZY = {"impflow": ImpFlow, "resflow": ResFlow, "iresnet": IResNet, "monotone": Monotone}


@dataclass
class CountingSolver:
    """A solver that counts its calls (the public Solver protocol, no internals touched)."""

    inner: Callable[..., SolverResult]
    calls: list[int] = field(default_factory=list)

    def __call__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, event_dims: int = 1
    ) -> SolverResult:
        self.calls.append(z0.shape[0])
        return self.inner(fn, z0, event_dims=event_dims)


def _base(d: int = 2) -> zuko.lazy.LazyDistribution:
    return zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(d), torch.ones(d), buffer=True
    )


def _mixed(name: str, d: int = 2, context: int = 0) -> zuko.lazy.Flow:
    """Our block between zuko's NSF and MAF transforms."""
    nsf = zuko.flows.NSF(d, context, transforms=1, hidden_features=[16]).transform.transforms
    maf = zuko.flows.MAF(d, context, transforms=1, hidden_features=[16]).transform.transforms
    return zuko.lazy.Flow(
        [*nsf, LAZY[name](d, context, hidden_features=[16]), *maf, LAZY[name](d, context, [16])],
        _base(d),
    )


def _exact_log_prob(flow, x, c=None):  # type: ignore[no-untyped-def]
    """log p(f(x)) + log|det df/dx| with the full Jacobian of the data-to-base transform."""
    out = []
    for i in range(x.shape[0]):
        dist = flow(None if c is None else c[i])
        f = dist.transform
        jac = torch.autograd.functional.jacobian(f, x[i])
        out.append(dist.base.log_prob(f(x[i])) + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _train(flow, x, steps, c=None):  # type: ignore[no-untyped-def]
    """zuko's training loop (its README)."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = -flow(c).log_prob(x).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return flow


@pytest.mark.parametrize("name", LAZY)
def test_log_prob_matches_slogdet(name: str) -> None:
    flow = _mixed(name)
    x = torch.randn(128, 2) * 1.5
    _train(flow, x, 3).eval()
    pts = x[:4]
    assert torch.allclose(flow().log_prob(pts), _exact_log_prob(flow, pts), atol=1e-8)


@pytest.mark.parametrize("name", LAZY)
def test_direction_call_is_the_blocks_forward(name: str) -> None:
    lazy = LAZY[name](3, hidden_features=[16]).eval()
    t = lazy()
    assert isinstance(t, BlockTransform)
    x = torch.randn(5, 3)
    z, ladj = t.call_and_ladj(x)
    assert torch.equal(z, lazy.block.forward_map(x)) and ladj.shape == (5,)
    back, ladj_inv = t.inv.call_and_ladj(z)
    assert torch.allclose(back, x, atol=1e-9) and torch.allclose(ladj_inv, -ladj, atol=1e-9)
    assert torch.allclose(t.log_abs_det_jacobian(x, z), ladj, atol=1e-12)
    assert torch.allclose(t.inv.log_abs_det_jacobian(z, x), -ladj, atol=1e-12)
    assert t.inv.inv is t and torch.allclose(t.inv(z), x, atol=1e-9)
    # torch's generic inverse protocol agrees: ``t.inv`` and ``t._inverse``
    assert torch.allclose(lazy.inv()(z), x, atol=1e-9)


@pytest.mark.parametrize("name", LAZY)
def test_round_trip_and_sample_log_prob(name: str) -> None:
    flow = _mixed(name).eval()
    dist = flow()
    x = torch.randn(16, 2)
    assert torch.allclose(dist.transform.inv(dist.transform(x)), x, atol=1e-8)
    samples = dist.sample((64,))
    assert samples.shape == (64, 2) and torch.isfinite(samples).all()
    xs, log_q = dist.rsample_and_log_prob((32,))
    assert torch.allclose(log_q, dist.log_prob(xs), atol=1e-8)


@pytest.mark.parametrize("solver_cls", [Broyden, FixedPoint], ids=["broyden", "fixed-point"])
def test_rsample_and_log_prob_solves_once_per_block(solver_cls: type) -> None:
    counters = [CountingSolver(solver_cls()) for _ in range(2)]
    flow = zuko.lazy.Flow(
        [
            ResFlow(2, hidden_features=[16], solver=counters[0]),
            ImpFlow(2, hidden_features=[16], solver=counters[1]),
        ],
        _base(),
    )
    x, log_q = flow().rsample_and_log_prob((50,))
    assert [c.calls for c in counters] == [[50], [50]]
    log_q.sum().backward()  # gradients through the solves, no further forward solve
    assert [len(c.calls) for c in counters] == [1, 1]
    assert all(p.grad is not None for p in flow.parameters())
    # log_prob on the data side never solves a residual block
    flow().log_prob(x.detach())
    assert len(counters[0].calls) == 1


@pytest.mark.parametrize("name", LAZY)
def test_gradients_reach_every_parameter(name: str) -> None:
    flow = _mixed(name)
    loss = -flow().log_prob(torch.randn(64, 2)).mean()
    loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    ours = [p for m in flow.modules() if isinstance(m, BlockLazyTransform) for p in m.parameters()]
    assert ours and all(p.grad.abs().sum() > 0 for p in ours)


def test_training_lowers_nll() -> None:
    x = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    flow = zuko.lazy.Flow(
        [ResFlow(2, hidden_features=[32]), ImpFlow(2, hidden_features=[32])], _base()
    )
    before = float(-flow().log_prob(x).mean().detach())
    _train(flow, x, 150)
    assert float(-flow().log_prob(x).mean().detach()) < before - 0.3


@pytest.mark.parametrize("name", LAZY)
def test_conditional_flow(name: str) -> None:
    flow = _mixed(name, context=3)
    x, c = torch.randn(64, 2), torch.randn(64, 3)
    _train(flow, x, 3, c).eval()
    pts, ctx = x[:3], c[:3]
    assert torch.allclose(flow(ctx).log_prob(pts), _exact_log_prob(flow, pts, ctx), atol=1e-8)
    assert not torch.allclose(flow(ctx + 1.0).log_prob(pts), flow(ctx).log_prob(pts))
    samples = flow(ctx).sample((5,))
    assert samples.shape == (5, 3, 2)
    xs, log_q = flow(ctx).rsample_and_log_prob((4,))
    assert torch.allclose(log_q, flow(ctx).log_prob(xs), atol=1e-8)


def test_svi_step_through_zuko_to_pyro() -> None:
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as pdist
    from pyro.contrib.zuko import ZukoToPyro
    from pyro.infer import SVI, Trace_ELBO

    counters = [CountingSolver(FixedPoint()), CountingSolver(Broyden())]
    flow = zuko.lazy.Flow(
        [
            ResFlow(2, hidden_features=[16], solver=counters[0]),
            ImpFlow(2, hidden_features=[16], solver=counters[1]),
        ],
        _base(),
    )

    def model() -> None:
        pyro.sample("z", pdist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1))

    def guide() -> None:
        pyro.module("flow", flow)
        pyro.sample("z", ZukoToPyro(flow()))

    pyro.clear_param_store()
    before = [p.detach().clone() for p in flow.parameters()]
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
    # one solve per block and step: the sample's log-density comes from the same pass
    assert [len(c.calls) for c in counters] == [3, 3]


def test_images() -> None:
    shape = (2, 4, 4)
    flow = zuko.lazy.Flow(
        [ResFlow(shape, hidden_features=8), ImpFlow(shape, hidden_features=8)],
        zuko.lazy.UnconditionalDistribution(
            lambda m, s: torch.distributions.Independent(torch.distributions.Normal(m, s), 3),
            torch.zeros(shape),
            torch.ones(shape),
            buffer=True,
        ),
    )
    x = torch.randn(16, *shape)
    _train(flow, x, 2).eval()
    dist = flow()
    pts = x[:2]
    exact = []
    for p in pts:
        jac = torch.autograd.functional.jacobian(dist.transform, p).reshape(32, 32)
        exact.append(dist.base.log_prob(dist.transform(p)) + torch.linalg.slogdet(jac)[1])
    assert torch.allclose(dist.log_prob(pts), torch.stack(exact), atol=1e-8)
    xs, log_q = dist.rsample_and_log_prob((3,))
    assert xs.shape == (3, *shape) and torch.allclose(log_q, dist.log_prob(xs), atol=1e-8)


def test_float32() -> None:
    flow = _mixed("impflow").float()
    x = (torch.randn(128, 2) * 5).float()
    _train(flow, x, 3)
    assert all(torch.isfinite(p).all() for p in flow.parameters())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="InvertibleBlock"):
        BlockLazyTransform(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context"):
        ResFlow(2, -1)
    with pytest.raises(TypeError, match="unknown block option"):
        ImpFlow(2, hidden_features=[8], coef=0.5)


def test_implicit_flow_is_the_trainer_default() -> None:
    flow = implicit_flow(2)
    kinds = [type(t).__name__ for t in flow.transform.transforms]
    assert (
        kinds
        == [
            "UnconditionalTransform",
            "MaskedAutoregressiveTransform",
            "UnconditionalTransform",
            "ImpFlow",
        ]
        * 2
    )
    x = torch.randn(128, 2)
    _train(flow, x, 2).eval()
    pts = x[:3]
    assert torch.allclose(flow().log_prob(pts), _exact_log_prob(flow, pts), atol=1e-8)
    cond = implicit_flow(2, 3)
    assert cond(torch.randn(3)).sample((4,)).shape == (4, 2)
