"""What nflows and Pyro users do: their exception machinery, their conventions, odd inputs."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
import torch

pyro = pytest.importorskip("pyro")
pytest.importorskip("nflows")

import pyro.distributions as dist
from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
from implicit_transforms.plugins.pyro import impflow, resflow
from nflows.distributions import ConditionalDiagonalNormal, StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    ReversePermutation,
)
from pyro.distributions.transforms import ComposeTransformModule
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from implicit_transforms import (
    ConvergenceError,
    ConvergenceWarning,
    InvertibleBlock,
    LipschitzWarning,
)
from implicit_transforms.blocks import impflow_block, iresnet_block, monotone_block, resflow_block
from implicit_transforms.solvers import Broyden, SolverStatus, fixed_point

BLOCKS: dict[str, Callable[[], InvertibleBlock]] = {
    "iresnet-mlp": lambda: iresnet_block(3, [8]),
    "resflow-mlp": lambda: resflow_block(3, [8]),
    "impflow-mlp": lambda: impflow_block(3, [8]),
    "resflow-cnn": lambda: resflow_block((2, 4, 4), 4),
    "impflow-cnn": lambda: impflow_block((2, 4, 4), 4),
    "monotone-mlp": lambda: monotone_block(3, [8]),
    "monotone-cnn": lambda: monotone_block((2, 4, 4), 4),
}
EVENTS = {"mlp": (3,), "cnn": (2, 4, 4)}


@pytest.fixture(autouse=True)
def _clear_param_store():  # type: ignore[no-untyped-def]
    pyro.clear_param_store()
    yield


# -- exceptions that survive hosts ---------------------------------------------------------


def _failed_result():  # type: ignore[no-untyped-def]
    y = torch.randn(3, 2)
    return fixed_point(lambda z: z - 3 * torch.sin(z) - y, y, max_iter=2, on_failure="ignore")


def test_convergence_error_rebuilds_from_one_message_and_pickles() -> None:
    result = _failed_result()
    err = ConvergenceError("solve failed", result)
    rebuilt = type(err)(str(err))  # how Pyro's poutine re-raises
    assert str(rebuilt) == "solve failed" and rebuilt.result is None
    try:
        try:
            raise err
        except ConvergenceError as inner:
            raise type(inner)(f"{inner}\nshapes...") from inner
    except ConvergenceError as outer:
        assert outer.result is result  # found along __cause__
    restored = pickle.loads(pickle.dumps(err))
    assert isinstance(restored, ConvergenceError) and str(restored) == "solve failed"
    assert restored.result is not None
    assert torch.equal(restored.result.root, result.root)
    assert restored.result.status is SolverStatus.MAX_ITER
    warning = pickle.loads(pickle.dumps(ConvergenceWarning("slow")))
    assert isinstance(warning, ConvergenceWarning) and str(warning) == "slow"
    assert str(LipschitzWarning("x")) == "x"


def test_solver_failure_inside_svi_is_caught_as_convergence_error() -> None:
    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    transform = impflow(2, [8], solver=Broyden(max_iter=1, rtol=1e-14, atol=1e-14))
    guide = AutoNormalizingFlow(model, lambda d: ComposeTransformModule([transform]))
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    with pytest.raises(ConvergenceError) as info:
        svi.step()
    assert "did not reach the tolerance" in str(info.value)
    assert info.value.result is not None and info.value.result.status is SolverStatus.MAX_ITER


# -- nflows: unconditional blocks inside conditional flows ---------------------------------


def test_unconditional_blocks_ignore_the_context_of_a_conditional_flow() -> None:
    transform = CompositeTransform(
        [
            ImpFlowTransform(2, [8]),
            ReversePermutation(2),
            MaskedAffineAutoregressiveTransform(2, 8, context_features=3),
            ResFlowTransform(2, [8]),
            ImpFlowTransform(2, [8], context_features=3),
        ]
    )
    flow = Flow(transform, ConditionalDiagonalNormal([2], context_encoder=torch.nn.Linear(3, 4)))
    flow.eval()
    x, ctx = torch.randn(5, 2), torch.randn(5, 3)
    lp = flow.log_prob(x, ctx)
    assert lp.shape == (5,) and bool(torch.isfinite(lp).all())
    samples = flow.sample(4, ctx[:2])
    assert samples.shape == (2, 4, 2)
    noise, _ = transform(x, ctx)
    back, _ = transform.inverse(noise, ctx)
    assert torch.allclose(back, x, atol=1e-9)
    # The core block itself stays strict: a context it cannot use is a mistake there.
    with pytest.raises(ValueError, match="without context_features"):
        impflow_block(2, [8]).forward_and_logdet(x, ctx)


# -- Pyro's param store ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resflow", "impflow"])
def test_param_store_save_and_load_restores_the_guide(family: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(3), 5.0).to_event(1))

    helper = {"resflow": resflow, "impflow": impflow}[family]

    def make_guide() -> AutoNormalizingFlow:
        return AutoNormalizingFlow(model, lambda d: ComposeTransformModule([helper(d, [16])]))

    guide = make_guide()
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 3e-2}), Trace_ELBO())
    for _ in range(30):
        svi.step()
    guide.eval()
    probe = torch.randn(7, 3)
    before = guide.get_posterior().log_prob(probe)
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)

    pyro.clear_param_store()
    torch.manual_seed(12345)  # a different initialisation, overwritten by the load
    restored = make_guide()
    restored()  # builds the prototype
    pyro.get_param_store().load(path)
    # Pyro's route for plain nn.Module transforms: copy the stored values into the module
    # (its spectral state is not in the store and must follow the new weights exactly).
    pyro.module("AutoNormalizingFlow.transform", restored.transform, update_module_params=True)
    restored.eval()
    after = restored.get_posterior().log_prob(probe)
    assert torch.allclose(before, after, atol=1e-6, rtol=0), float((before - after).abs().max())


# -- empty batches and dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", BLOCKS)
def test_empty_batch_gives_empty_outputs(name: str, mode: str) -> None:
    block = BLOCKS[name]()
    event = EVENTS[name.split("-")[1]]
    block(torch.randn(2, *event))  # materialise size-dependent state
    block.train(mode == "train")
    x = torch.randn(0, *event, requires_grad=True)
    y, ld = block.forward_and_logdet(x)
    assert y.shape == x.shape and ld.shape == (0,)
    back, ld_inv = block.inverse_and_logdet(y)
    assert back.shape == x.shape and ld_inv.shape == (0,)
    (back.sum() + ld_inv.sum() + ld.sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    y2, ld2 = block.forward_and_logdet(torch.randn(2, 0, *event))
    assert y2.shape == (2, 0, *event) and ld2.shape == (2, 0)


def test_empty_batch_through_the_hosts() -> None:
    flow = Flow(CompositeTransform([ImpFlowTransform(2, [8]), ResFlowTransform(2, [8])]),
                StandardNormal([2]))  # fmt: skip
    assert flow.log_prob(torch.randn(0, 2)).shape == (0,)
    noise, _ = flow._transform.inverse(torch.randn(0, 2))  # nflows' sample(0) refuses n = 0
    assert noise.shape == (0, 2)
    # torch's TransformedDistribution cannot sum an empty batch (_sum_rightmost reshapes to
    # (0, -1)); the transform itself handles it.
    t = resflow(2, [8])
    empty = torch.randn(0, 2)
    y = t(empty)
    assert y.shape == (0, 2) and t.log_abs_det_jacobian(empty, y).shape == (0,)
    assert t.inv(y.clone()).shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["resflow-mlp", "impflow-mlp"])
def test_half_precision_is_refused_with_the_dtype_named(name: str, dtype: torch.dtype) -> None:
    block = BLOCKS[name]().to(dtype)
    x = torch.randn(4, 3).to(dtype)
    for call in (block.forward_and_logdet, block.inverse_and_logdet):
        with pytest.raises(TypeError, match=str(dtype)):
            call(x)


def test_mismatched_dtypes_are_refused_clearly() -> None:
    block = resflow_block(3, [8]).float()
    with pytest.raises(TypeError, match="move the block"):
        block.forward_and_logdet(torch.randn(2, 3, dtype=torch.float64))


def test_flow_moved_to_float64_names_the_base_distribution_when_sampling() -> None:
    """nflows' StandardNormal samples in the default dtype whatever ``flow.to`` did: the error
    names that cause (not 'move the block to float32'), and its advice works."""
    torch.set_default_dtype(torch.float32)  # the conftest fixture restores float64
    flow = Flow(
        CompositeTransform([ResFlowTransform(2, [8]), ImpFlowTransform(2, [8])]),
        StandardNormal([2]),
    )
    assert flow.sample(3).dtype == torch.float32  # float32 stays fine
    flow = flow.to(torch.float64)
    with pytest.raises(TypeError, match=r"base distribution.*set_default_dtype\(torch\.float64\)"):
        flow.sample(3)
    torch.set_default_dtype(torch.float64)
    assert flow.sample(3).dtype == torch.float64
    noise = torch.randn(3, 2, dtype=torch.float32)
    samples, _ = flow._transform.inverse(noise.to(torch.float64))
    assert samples.dtype == torch.float64
