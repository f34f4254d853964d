"""The ready-made ``implicit_flow`` of each host is the trainer's default model (rq-impflow)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nflows")

from implicit_transforms.plugins.default_flow import default_flow
from implicit_transforms.plugins.nflows_flows import implicit_flow

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.models import build_flow


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_nflows_implicit_flow_is_the_trainers_default_model() -> None:
    trainer = build_flow(TrainConfig().resolved(), torch.zeros(2), torch.ones(2))
    ours = implicit_flow(2)
    trainer_kinds = [type(t).__name__ for t in trainer._transform._transforms][1:]  # Standardize
    assert [type(t).__name__ for t in ours._transform._transforms] == trainer_kinds
    assert _count(ours) == _count(trainer) == 54_470  # benchmarks/README.md's table
    blocks = [t.block for t in ours._transform._transforms if hasattr(t, "block")]
    trainer_blocks = [t.block for t in trainer._transform._transforms if hasattr(t, "block")]
    for a, b in zip(blocks, trainer_blocks, strict=True):
        assert type(a.logdet_train) is type(b.logdet_train)
        assert type(a.solver) is type(b.solver)
        assert _near_zero(a) == _near_zero(b) == {True}  # the trainer's --zero-init default


def _near_zero(block: torch.nn.Module) -> set[bool]:
    """Whether each network's last layer starts near zero (``zero_init``)."""
    return {bool(net.layers[-1].weight.abs().max() < 2e-3) for net in block.networks()}  # type: ignore[attr-defined, operator]


def test_nflows_implicit_flow_log_prob_matches_slogdet() -> None:
    flow = implicit_flow(2, layers=2, hidden_features=(16,))
    opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
    x = torch.randn(64, 2)
    for _ in range(3):
        opt.zero_grad()
        (-flow.log_prob(x).mean()).backward()
        opt.step()
    flow.eval()
    for xi in x[:3]:
        jac = torch.autograd.functional.jacobian(lambda v: flow._transform(v[None])[0][0], xi)
        z = flow._transform(xi[None])[0]
        exact = flow._distribution.log_prob(z)[0] + torch.linalg.slogdet(jac)[1]
        assert torch.allclose(flow.log_prob(xi[None])[0], exact, atol=1e-8)


def test_nflows_implicit_flow_with_context() -> None:
    flow = implicit_flow(2, 3, layers=2, hidden_features=(16,)).eval()
    x, c = torch.randn(5, 2), torch.randn(5, 3)
    assert not torch.allclose(flow.log_prob(x, c), flow.log_prob(x, c + 1))
    assert flow.sample(4, torch.randn(2, 3)).shape == (2, 4, 2)


def test_settings_are_checked() -> None:
    with pytest.raises(TypeError, match="unknown setting"):
        default_flow(layer=3)
    with pytest.raises(ValueError, match="layers must be >= 2"):
        default_flow(layers=1)
    with pytest.raises(ValueError, match="features must be an int >= 2"):
        implicit_flow(1)
