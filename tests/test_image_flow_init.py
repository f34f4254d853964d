"""Image flows: a call that fails leaves no state behind (issue 17).

The flow's ActNorm layers initialise themselves from their first training batch. A call that
is refused (wrong dtype or shape, NaN, a batch ActNorm cannot initialise from) must raise a
clear error and leave every ActNorm as it was, so that the next good call gives exactly what a
fresh model gives."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nflows")

from implicit_transforms.plugins.nflows import image_flow, initialize_actnorm
from implicit_transforms.plugins.nflows_images import CheckedActNorm
from nflows.flows import Flow
from nflows.transforms import ActNorm

from implicit_transforms import input_validation
from implicit_transforms.logdet import ExactLogDet

SHAPE = (1, 4, 4)


def _flow(seed: int, **kwargs: object) -> Flow:
    """A small float32 image flow; the same ``seed`` gives the same parameters. Exact
    log-dets, so two training-mode calls are comparable."""
    torch.manual_seed(seed)
    settings: dict[str, object] = {"levels": 2, "blocks_per_level": 1, "hidden_channels": 4}
    settings.update(kwargs)
    return image_flow(SHAPE, "resflow", logdet_train=ExactLogDet(), **settings).float()


def _actnorms(flow: Flow) -> list[ActNorm]:
    return [m for m in flow.modules() if isinstance(m, ActNorm)]


def _images(n: int) -> torch.Tensor:
    return (torch.rand(n, *SHAPE) * 0.9 + 0.05).float()


def _assert_untouched_then_good_call_matches_fresh(flow: Flow, seed: int, **kw: object) -> None:
    """Every ActNorm still uninitialised, float32, at its zero start; then a good float32
    call gives what a fresh model of the same seed gives."""
    for m in _actnorms(flow):
        assert not bool(m.initialized)
        assert m.log_scale.dtype == torch.float32 and m.shift.dtype == torch.float32
        assert not bool(m.log_scale.any()) and not bool(m.shift.any())
    x = _images(6)
    got = flow.log_prob(x)
    want = _flow(seed, **kw).log_prob(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-5), (got, want)
    assert all(bool(m.initialized) for m in _actnorms(flow))


def test_float64_first_call_is_refused_before_actnorm_initialises() -> None:
    flow = _flow(1)
    with pytest.raises(TypeError, match=r"float64.*float32"):
        flow.log_prob(_images(6).double())
    _assert_untouched_then_good_call_matches_fresh(flow, 1)


def test_float64_first_call_to_transform_to_noise_and_initialize_actnorm() -> None:
    flow = _flow(2)
    with pytest.raises(TypeError, match=r"float64.*float32"):
        flow.transform_to_noise(_images(6).double())
    with pytest.raises(TypeError, match=r"float64.*float32"):
        initialize_actnorm(flow, _images(6).double())
    _assert_untouched_then_good_call_matches_fresh(flow, 2)


def test_integer_and_wrong_shape_first_calls_leave_no_state() -> None:
    flow = _flow(3)
    with pytest.raises(TypeError, match=r"float32 or float64, got torch.int64"):
        flow.log_prob(torch.ones(6, *SHAPE, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 4, 4\)"):
        flow.log_prob(torch.rand(6, 1, 8, 8).float())
    _assert_untouched_then_good_call_matches_fresh(flow, 3)


def test_constant_first_batch_is_refused_naming_actnorm() -> None:
    flow = _flow(4)
    with pytest.raises(ValueError, match=r"ActNorm.*zero variance.*nothing was initiali[sz]ed"):
        flow.log_prob(torch.full((6, *SHAPE), 0.5).float())
    _assert_untouched_then_good_call_matches_fresh(flow, 4)


def test_nan_first_batch_is_refused_at_the_entry() -> None:
    flow = _flow(5)
    x = _images(6)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        flow.log_prob(x)
    _assert_untouched_then_good_call_matches_fresh(flow, 5)


def test_nan_first_batch_with_validation_off_is_refused_by_actnorm() -> None:
    """Without the entry's NaN check, ActNorm's own check still refuses to initialise."""
    flow = _flow(6)
    x = _images(6)
    x[2, 0, 1, 1] = float("nan")
    with input_validation(False), pytest.raises(ValueError, match=r"ActNorm.*NaN or Inf"):
        flow.log_prob(x)
    _assert_untouched_then_good_call_matches_fresh(flow, 6)


def test_single_image_rolls_back_the_actnorms_that_did_initialise() -> None:
    """One image: the first level's ActNorm initialises (2 x 2 values per channel), the second
    level's (1 x 1 pixels) cannot, nor can a fully connected one (one value per feature); the
    first is rolled back."""
    for kw in ({}, {"fc_blocks": 1, "fc_hidden": [8], "levels": 1}):
        flow = _flow(7, **kw)
        with pytest.raises(ValueError, match=r"ActNorm.*at least 2 .*got 1.*nothing was initiali"):
            flow.log_prob(_images(1))
        _assert_untouched_then_good_call_matches_fresh(flow, 7, **kw)


def test_failure_in_initialize_actnorm_leaves_no_state() -> None:
    flow = _flow(8)
    with pytest.raises(ValueError, match="ActNorm"):
        initialize_actnorm(flow, torch.full((6, *SHAPE), 0.25).float())
    assert initialize_actnorm(flow, _images(6)) == 2
    assert initialize_actnorm(flow, _images(6)) == 0


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2)], ids=["vectors", "images"])
def test_checked_actnorm_empty_first_batch_initialises_nothing(shape: tuple[int, ...]) -> None:
    layer = CheckedActNorm(3)
    y, ld = layer(torch.randn(*shape))
    assert y.shape == shape and ld.shape == (0,)
    assert not bool(layer.initialized) and not bool(layer.log_scale.any())


def test_conditional_flow_context_is_checked_before_actnorm() -> None:
    kw = {"context_features": 3}
    flow = _flow(10, **kw)
    with pytest.raises(TypeError, match=r"context.*float64.*float32"):
        flow.log_prob(_images(6), context=torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"context must have shape \(6, 3\)"):
        flow.log_prob(_images(6), context=torch.randn(6, 2).float())
    with pytest.raises(ValueError, match=r"context must have shape"):
        flow.sample(2, context=torch.randn(6, 2).float())
    for m in _actnorms(flow):
        assert not bool(m.initialized)
    x, ctx = _images(6), torch.randn(6, 3).float()
    got = flow.log_prob(x, context=ctx)
    assert torch.allclose(got, _flow(10, **kw).log_prob(x, context=ctx), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", ["zero-variance", "single", "nan"])
def test_checked_actnorm_refuses_degenerate_batches_and_keeps_its_state(case: str) -> None:
    layer = CheckedActNorm(3)
    x = torch.randn(5, 3)
    if case == "zero-variance":
        x[:, 1] = 2.0
        match = r"ActNorm: cannot initiali[sz]e.*feature\(s\) \[1\].*zero variance"
    elif case == "single":
        x = x[:1]
        match = r"ActNorm: cannot initiali[sz]e.*at least 2 samples per feature.*got 1"
    else:
        x[0, 2] = float("inf")
        match = r"ActNorm: cannot initiali[sz]e.*NaN or Inf"
    with pytest.raises(ValueError, match=match):
        layer(x)
    assert not bool(layer.initialized) and not bool(layer.log_scale.any())
    y, _ = layer(torch.randn(50, 3))  # a good batch initialises it as nflows does
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-12)
    assert torch.allclose(y.std(0), torch.ones(3))


def test_checked_actnorm_refuses_a_batch_of_another_dtype() -> None:
    layer = CheckedActNorm(2).float()
    with pytest.raises(TypeError, match=r"ActNorm.*float64.*float32"):
        layer(torch.randn(4, 2))
    assert layer.log_scale.dtype == torch.float32 and not bool(layer.initialized)
