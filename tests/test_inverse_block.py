"""Directions are objects: ``block.inv`` (an ``InverseBlock``) and the maps that skip the log-det.

An inverse is a view of a block with its directions exchanged, not a class flag: the Pyro
adapter runs a block or its ``.inv`` with the same code, and ``forward_map`` / ``inverse_map``
skip every log-det without a mutable switch on the block.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

from implicit_transforms.blocks import InvertibleBlock, impflow_block, monotone_block, resflow_block
from implicit_transforms.blocks.base import InverseBlock
from implicit_transforms.logdet import ExactLogDet

FAMILIES = {"resflow": resflow_block, "impflow": impflow_block, "monotone": monotone_block}


def _block(family: str, context_features: int | None = None) -> InvertibleBlock:
    block = FAMILIES[family](2, [8], context_features=context_features)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the identity, so that no direction passes trivially
        for p in block.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return block.eval()


def _jacobian_logdet(fn, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    return torch.stack(
        [
            torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda t: fn(t[None])[0], xi))[
                1
            ]
            for xi in x
        ]
    )


# -- the view ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_inverse_view_exchanges_the_directions(family: str) -> None:
    block = _block(family)
    inverse = block.inv
    assert isinstance(inverse, InverseBlock) and inverse.inv is block
    assert inverse.event_dims == block.event_dims and inverse.context_features is None
    x = torch.randn(5, 2)
    y, ld = block.forward_and_logdet(x)
    x_back, ld_back = inverse.forward_and_logdet(y)
    assert torch.allclose(x_back, x, atol=1e-9) and torch.allclose(ld_back, -ld, atol=1e-9)
    y_again, ld_again = inverse.inverse_and_logdet(x)
    assert torch.equal(y_again, y) and torch.equal(ld_again, ld)
    assert torch.allclose(inverse.forward_map(y), x, atol=1e-9)
    assert torch.equal(inverse.inverse_map(x), block.forward_map(x))
    assert inverse.last_solve is block.last_solve


@pytest.mark.parametrize("family", FAMILIES)
def test_inverse_view_logdet_is_the_jacobian_of_the_inverse(family: str) -> None:
    block = _block(family)
    inverse = block.inv
    y = block.forward_map(torch.randn(4, 2))
    x = inverse.forward_map(y)
    exact = _jacobian_logdet(inverse.forward_map, y)
    assert torch.allclose(inverse.logdet_pair(y, x), exact, atol=1e-8)
    assert torch.allclose(inverse.logdet(y), exact, atol=1e-8)
    assert torch.allclose(inverse(y)[1], exact, atol=1e-8)


def test_inverse_view_refuses_what_is_not_a_block() -> None:
    with pytest.raises(TypeError, match="block must be an InvertibleBlock, got Linear"):
        InverseBlock(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_blocks_hold_no_direction_state() -> None:
    """``forward_map`` used to set a ``_skip_logdet`` flag on the block for the length of the
    call; the maps now skip the log-det without any state, so the flag is gone."""
    assert not hasattr(InvertibleBlock, "_skip_logdet")
    assert not hasattr(_block("resflow"), "_skip_logdet")


class _Shift(InvertibleBlock):
    """A block from outside the library that implements only the two ``*_and_logdet``."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.ones(2))
        self.context_features = None
        self.event_dims = 1

    def forward_and_logdet(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x + self.b, x.new_zeros(x.shape[:-1])

    def inverse_and_logdet(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y - self.b, y.new_zeros(y.shape[:-1])


def test_maps_of_a_block_that_only_implements_the_pairs() -> None:
    block = _Shift()
    x = torch.randn(3, 2)
    assert torch.equal(block.forward_map(x), x + 1)
    assert torch.equal(block.inverse_map(x), x - 1)
    assert torch.equal(block.inv.forward_map(x), x - 1)


# -- forward_map / inverse_map skip all log-det work (counted in network evaluations) -------


@contextmanager
def _rows_evaluated(block: InvertibleBlock) -> Iterator[dict[str, int]]:
    """Rows (samples) each network of ``block`` evaluates inside the scope."""
    counts = {name: 0 for name, _ in block.named_children()}
    hooks = [
        net.register_forward_hook(
            lambda _m, args, _out, name=name: counts.__setitem__(
                name, counts[name] + args[0].shape[0]
            )
        )
        for name, net in block.named_children()
    ]
    try:
        yield counts
    finally:
        for h in hooks:
            h.remove()


class _CountingExact(ExactLogDet):
    """The exact log-det, counting its calls (a real estimator given as ``logdet_eval``)."""

    calls = 0

    def __call__(self, g, x, *, event_dims=1):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().__call__(g, x, event_dims=event_dims)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("family", FAMILIES)
def test_maps_alone_evaluate_only_what_the_map_needs(family: str, direction: str) -> None:
    """Sampling (no autograd): a residual block's explicit map is one evaluation of ``g`` per
    sample; every other network evaluation belongs to the solve (``sample_evals``), and the
    log-det estimator is never called."""
    block = _block(family)
    counting = _CountingExact()
    block.logdet_eval = counting
    x = torch.randn(6, 2)
    block_map = block.forward_map if direction == "forward" else block.inverse_map
    with torch.no_grad(), _rows_evaluated(block) as rows:
        out = block_map(x)
    assert counting.calls == 0
    if family == "resflow" and direction == "forward":
        assert rows == {"net": 6}
    elif family == "resflow":
        assert block.last_solve is not None and rows == {"net": block.last_solve.sample_evals}
    elif family == "monotone":  # only the solve for w: the output is sqrt(2) w - input
        assert block.last_solve is not None and rows == {"net": block.last_solve.sample_evals}
    else:  # the source network once per sample (the solve's target), the other in the solve
        src, dst = ("net_x", "net_z") if direction == "forward" else ("net_z", "net_x")
        assert block.last_solve is not None
        assert rows == {src: 6, dst: block.last_solve.sample_evals}
    with_logdet = block.forward_and_logdet if direction == "forward" else block.inverse_and_logdet
    assert torch.allclose(with_logdet(x)[0], out, atol=1e-9) and counting.calls > 0


# -- the Pyro adapter runs a block or its view with the same code ------------------------------

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist
from implicit_transforms.plugins.pyro import (
    BlockTransformModule,
    ConditionalBlockTransformModule,
    ConditionalInverseBlockTransformModule,
    FlowDistribution,
    InverseBlockTransformModule,
    ResFlow,
)

from implicit_transforms.solvers import FixedPoint


def test_inverse_modules_are_a_view_not_a_flag() -> None:
    block = _block("resflow")
    old = InverseBlockTransformModule(block)
    new = BlockTransformModule(block.inv)
    assert not hasattr(old, "_swapped")
    assert old.block is block and new.block is block
    assert isinstance(old.bijection, InverseBlock) and old.bijection.inv is block
    # the parameters are registered once, under the same names as the forward module's
    keys = set(BlockTransformModule(block).state_dict())
    assert set(old.state_dict()) == set(new.state_dict()) == keys
    assert len(list(old.parameters())) == len(list(block.parameters()))
    copied = copy.deepcopy(new)  # the view follows its block into a copy (pickling, too)
    assert copied.bijection.inv is copied.block and copied.block is not block
    z = torch.randn(5, 2)
    assert torch.allclose(old(z), new(z)) and torch.allclose(new(z), block.inverse_map(z))
    x = new(z)
    expected = -block.logdet_pair(x, z)
    assert torch.allclose(old.log_abs_det_jacobian(z, x.clone()), expected, atol=1e-12)


def test_with_cache_keeps_the_class_and_the_direction() -> None:
    block = _block("resflow")
    for module in (InverseBlockTransformModule(block), ResFlow(block), ResFlow(block.inv)):
        other = module.with_cache(0)
        assert type(other) is type(module) and other._cache_size == 0
        assert other.bijection is module.bijection and other.block is block


def test_conditional_inverse_conditions_into_the_inverse() -> None:
    block = _block("resflow", context_features=3)
    ctx = torch.randn(3)
    for conditional in (
        ConditionalInverseBlockTransformModule(block),
        ConditionalBlockTransformModule(block.inv),
    ):
        t = conditional.condition(ctx)
        assert isinstance(t.bijection, InverseBlock) and t.bijection.inv is block
        assert set(conditional.state_dict()) == set(
            ConditionalBlockTransformModule(block).state_dict()
        )
        z = torch.randn(4, 2)
        assert torch.allclose(t(z), block.inverse_map(z, ctx))
    assert isinstance(
        ConditionalInverseBlockTransformModule(block).condition(ctx), InverseBlockTransformModule
    )


def test_adapters_refuse_what_is_not_a_block() -> None:
    with pytest.raises(TypeError, match="InvertibleBlock or an InverseBlock"):
        BlockTransformModule(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="block must be an InvertibleBlock, got InverseBlock"):
        InverseBlockTransformModule(_block("resflow").inv)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context_features"):
        ConditionalBlockTransformModule(_block("resflow").inv)


def test_inverted_residual_scores_without_a_solve_and_samples_with_one() -> None:
    solves = []

    class Spy(FixedPoint):
        def __call__(self, fn, z0, *, event_dims=1, **kw):  # type: ignore[no-untyped-def]
            solves.append(1)
            return super().__call__(fn, z0, event_dims=event_dims, **kw)

    block = resflow_block(2, [8], solver=Spy())
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    for q in (
        dist.TransformedDistribution(base, [BlockTransformModule(block.inv)]),
        FlowDistribution(base, [block.inv]),
    ):
        solves.clear()
        q.log_prob(torch.randn(5, 2))
        assert solves == []
        q.sample((5,))
        assert solves == [1]


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_distribution_takes_a_view_as_pyro_takes_its_module(family: str) -> None:
    block = _block(family)
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    ours = FlowDistribution(base, [block.inv])
    pyros = dist.TransformedDistribution(base, [BlockTransformModule(block.inv, cache_size=0)])
    z = torch.randn(6, 2)
    assert torch.allclose(ours.log_prob(z), pyros.log_prob(z), atol=1e-9)
    torch.manual_seed(1)
    s_ours, lq = ours.rsample_and_log_prob((6,))
    torch.manual_seed(1)
    s_pyro = pyros.rsample((6,))
    assert torch.allclose(s_ours, s_pyro, atol=1e-9)
    assert torch.allclose(lq, pyros.log_prob(s_pyro.detach().clone()), atol=1e-8)
