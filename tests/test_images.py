"""Image flows: every piece and the whole multiscale flow against exact slogdet on tiny images
(float64), round trips, sampling shapes, bits/dim and dequantisation, data sets, bad input."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nflows")

from implicit_transforms.plugins.nflows import (
    FlattenTransform,
    LogitTransform,
    image_flow,
    initialize_actnorm,
    level_shapes,
)
from nflows.nn.nets import ConvResidualNet
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    OneByOneConvolution,
    SqueezeTransform,
    Transform,
)

from implicit_transforms.images import (
    VariationalDequantizer,
    bits_per_dim,
    dequantize,
    load_digits,
    logit_forward,
    logit_inverse,
    summarize_bits,
)

FAMILIES = ("impflow", "resflow", "iresnet", "monotone")
SHAPES = ((1, 4, 4), (3, 4, 4))


def _jacobian_logdet(fn, x):  # type: ignore[no-untyped-def]
    """log|det d fn(x_i) / dx_i| of every event of the batch ``x`` by autograd and slogdet.

    The events are independent, so one Jacobian of the batch-summed outputs holds every
    per-event Jacobian (one backward pass per output coordinate for the whole batch)."""
    n, d = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(n, -1).sum(0), x)
    jac = jac.reshape(d, n, d).permute(1, 0, 2)
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert bool((sign != 0).all())
    return logabsdet


def _check_transform_logdet(t: Transform, x: torch.Tensor, atol: float = 1e-9) -> None:
    _, ld = t(x)
    exact = _jacobian_logdet(lambda v: t(v)[0], x)
    assert torch.allclose(ld, exact, atol=atol), (ld, exact)


def _images(shape: tuple[int, ...], n: int = 3) -> torch.Tensor:
    return torch.rand(n, *shape) * 0.9 + 0.05


# -- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_logit_logdet_matches_slogdet_and_inverts(shape: tuple[int, int, int]) -> None:
    t = LogitTransform(0.05)
    x = _images(shape)
    _check_transform_logdet(t, x)
    y, ld = t(x)
    back, ld_inv = t.inverse(y)
    assert torch.allclose(back, x, atol=1e-12) and torch.allclose(ld_inv, -ld, atol=1e-10)
    # the pure functions agree and the edges stay finite with alpha > 0
    y2, _ = logit_forward(torch.tensor([[0.0, 1.0]]), 0.05)
    assert bool(torch.isfinite(y2).all())
    x2, _ = logit_inverse(torch.tensor([[-50.0, 50.0]]), 0.05)
    lo, hi = -0.05 / 0.9, 0.95 / 0.9  # the image of R under the inverse
    assert bool(((x2 >= lo) & (x2 <= hi)).all())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_squeeze_actnorm_flatten_logdets_match_slogdet(shape: tuple[int, int, int]) -> None:
    x = torch.randn(2, *shape)
    _check_transform_logdet(SqueezeTransform(), x)
    norm = ActNorm(shape[0])
    with torch.no_grad():
        norm.log_scale.normal_()
        norm.shift.normal_()
    norm.initialized.fill_(True)
    _check_transform_logdet(norm, x)
    flat = FlattenTransform(shape)
    y, ld = flat(x)
    assert y.shape == (2, math.prod(shape)) and bool((ld == 0).all())
    assert torch.equal(flat.inverse(y)[0], x)


def test_level_shapes() -> None:
    assert level_shapes((1, 8, 8), 2) == [(4, 4, 4), (8, 2, 2)]
    assert level_shapes((3, 32, 32), 3) == [(12, 16, 16), (24, 8, 8), (48, 4, 4)]
    assert level_shapes((3, 4, 4), 2, squeeze_first=False) == [(3, 4, 4), (4, 2, 2)]
    with pytest.raises(ValueError, match="not even"):
        level_shapes((1, 6, 6), 2)
    with pytest.raises(ValueError, match=r"shape must be \(C, H, W\)"):
        level_shapes((16,), 1)
    with pytest.raises(ValueError, match="too few to factor out"):
        level_shapes((1, 4, 4), 2, squeeze_first=False)


# -- the whole flow ---------------------------------------------------------------------------


def _flow_logdet_check(flow, x, context=None, atol=1e-8):  # type: ignore[no-untyped-def]
    """log p(x) = log N(f(x)) + log|det J_f(x)| with the exact Jacobian of the full flow."""
    flow.eval()
    with torch.no_grad():
        lp = flow.log_prob(x, context=context)
        z = flow.transform_to_noise(x, context=context)
        base = flow._distribution.log_prob(z, context=context)
    exact = _jacobian_logdet(lambda v: flow._transform(v, context=context)[0], x)
    assert torch.allclose(lp, base + exact, atol=atol), (lp, base + exact)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_image_flow_logdet_matches_slogdet(family: str, shape: tuple[int, int, int]) -> None:
    flow = image_flow(shape, family, levels=2, blocks_per_level=1, hidden_channels=6)
    x = _images(shape, 2)
    initialize_actnorm(flow, _images(shape, 16))
    _flow_logdet_check(flow, x)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_flow_round_trip_and_samples(family: str) -> None:
    shape = (3, 4, 4)
    flow = image_flow(shape, family, levels=2, blocks_per_level=2, hidden_channels=6, fc_blocks=1,
                      fc_hidden=[16])  # fmt: skip
    assert initialize_actnorm(flow, _images(shape, 16)) == 5
    assert initialize_actnorm(flow, _images(shape, 16)) == 0  # once only
    flow.eval()
    x = _images(shape, 4)
    with torch.no_grad():
        z, ld = flow._transform(x)
        back, ld_inv = flow._transform.inverse(z)
        assert z.shape == (4, 48)
        assert torch.allclose(back, x, atol=1e-9) and torch.allclose(ld_inv, -ld, atol=1e-8)
        samples = flow.sample(5)
        assert samples.shape == (5, *shape)
        assert bool(torch.isfinite(samples).all())
        s, lp = flow.sample_and_log_prob(3)
        assert s.shape == (3, *shape)
        assert torch.allclose(lp, flow.log_prob(s), atol=1e-8)


def test_fully_connected_end_and_context_match_slogdet() -> None:
    shape = (1, 4, 4)
    flow = image_flow(shape, "resflow", levels=2, blocks_per_level=1, hidden_channels=6,
                      fc_blocks=2, fc_hidden=[16], context_features=3)  # fmt: skip
    with torch.no_grad():
        flow._distribution._context_encoder.weight.normal_(0, 0.3)
    ctx = torch.randn(2, 3)
    initialize_actnorm(flow, _images(shape, 16), context=torch.randn(16, 3))
    _flow_logdet_check(flow, _images(shape, 2), context=ctx)
    flow.eval()
    with torch.no_grad():
        assert flow.sample(4, context=ctx).shape == (2, 4, *shape)


def _glow_level(level: int, shape: tuple[int, int, int]) -> Transform:
    c = shape[0]
    mask = torch.zeros(c)
    mask[: c // 2] = 1

    def net(i: int, o: int) -> ConvResidualNet:
        return ConvResidualNet(i, o, hidden_channels=8, num_blocks=1)

    return CompositeTransform(
        [ActNorm(c), OneByOneConvolution(c), AffineCouplingTransform(mask, net)]
    )


def test_nflows_coupling_layers_swap_in_at_any_level() -> None:
    shape = (1, 4, 4)
    for swap in (0, 1):
        flow = image_flow(shape, "impflow", levels=2, blocks_per_level=1, hidden_channels=6,
                          level_transform=lambda level, s, k=swap: _glow_level(level, s) if level == k else None)  # fmt: skip
        kinds = [type(m).__name__ for m in flow.modules()]
        assert kinds.count("AffineCouplingTransform") == 1 and kinds.count("ImplicitBlock") == 1
        initialize_actnorm(flow, _images(shape, 16))
        _flow_logdet_check(flow, _images(shape, 2), atol=1e-7)
    with pytest.raises(TypeError, match="must return an nflows Transform or None"):
        image_flow(shape, level_transform=lambda level, s: torch.nn.Identity())


def test_training_step_reduces_loss_and_all_parameters_get_gradients() -> None:
    shape = (1, 4, 4)
    flow = image_flow(shape, "impflow", levels=2, blocks_per_level=1, hidden_channels=6)
    x = _images(shape, 32)
    initialize_actnorm(flow, x)
    loss = -flow.log_prob(x).mean()
    loss.backward()
    for name, p in flow.named_parameters():
        if "_distribution" in name:
            continue
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


# -- bits per dimension and dequantisation ----------------------------------------------------


def test_bits_per_dim_formula_by_hand() -> None:
    # D = 4 sub-pixels, L = 256: -(log p - 4 log 256) / (4 ln 2)
    log_p = torch.tensor([2.0, -1.5])
    by_hand = torch.tensor([(4 * math.log(256) - 2.0) / (4 * math.log(2)),
                            (4 * math.log(256) + 1.5) / (4 * math.log(2))])  # fmt: skip
    assert torch.allclose(bits_per_dim(log_p, 4, 256), by_hand)
    assert math.isclose(float(bits_per_dim(log_p, 4, 256)[0]), 8 - 2 / (4 * math.log(2)))
    # the uniform density on [0, 1]^D scores log2(L) bits/dim
    assert torch.allclose(bits_per_dim(torch.zeros(3), 64, 17), torch.full((3,), math.log2(17)))
    # a variational log q raises the bound by log q / (D ln 2)
    bpd_q = bits_per_dim(log_p, 4, 256, log_q=torch.tensor([0.4, 0.4]))
    assert torch.allclose(
        bpd_q - bits_per_dim(log_p, 4, 256), torch.full((2,), 0.4 / (4 * math.log(2)))
    )
    s = summarize_bits(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert s.mean == 2.5 and math.isclose(s.stderr, math.sqrt(5 / 3) / 2) and s.n == 4
    with pytest.raises(ValueError, match="dims must be a positive int"):
        bits_per_dim(log_p, 0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        bits_per_dim(log_p, 4, 1)


def test_bits_per_dim_of_an_image_flow_counts_the_logit_logdet() -> None:
    """The flow's log p(x) on [0, 1]^D includes the logit transform: check it by the exact
    Jacobian of logit and of the rest separately."""
    shape = (1, 4, 4)
    flow = image_flow(shape, "resflow", levels=1, blocks_per_level=1, hidden_channels=4)
    flow.eval()
    x = _images(shape, 1)
    with torch.no_grad():
        lp = flow.log_prob(x)
    y, ld_logit = logit_forward(x, 0.05)
    rest = flow._transform._transforms[1]
    z, _ = rest(y)
    exact_rest = _jacobian_logdet(lambda v: rest(v)[0], y)[0]
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    assert torch.allclose(lp[0], base + exact_rest + ld_logit[0], atol=1e-9)
    bpd = bits_per_dim(lp, 16, 17)
    assert math.isclose(float(bpd[0]), -(float(lp[0]) - 16 * math.log(17)) / (16 * math.log(2)))


def test_uniform_dequantisation_stays_in_its_cell() -> None:
    levels = 17
    k = torch.randint(0, levels, (500, 1, 4, 4))
    x = dequantize(k, levels, torch.rand(500, 1, 4, 4))
    assert bool((x >= k / levels).all()) and bool((x < (k + 1) / levels).all())
    assert bool((x >= 0).all()) and bool((x < 1).all())
    # the extreme noise values hit the cell's edges
    assert torch.equal(dequantize(k, levels, torch.zeros(500, 1, 4, 4)), k / levels)
    with pytest.raises(ValueError, match="same shape"):
        dequantize(k, levels, torch.rand(3))


def test_variational_dequantizer_density_by_change_of_variables() -> None:
    levels = 17
    q = VariationalDequantizer(2, levels, hidden_channels=8)
    with torch.no_grad():  # a non-trivial q
        q.net[-1].weight.normal_(0, 0.3)
    k = torch.randint(0, levels, (3, 2, 4, 4)).double()
    eps = torch.randn(3, 2, 4, 4, requires_grad=True)
    u, log_q = q(k, eps)
    assert bool(((u > 0) & (u < 1)).all())
    # u depends on eps element-wise: du/deps is diagonal, read off with one backward
    (du,) = torch.autograd.grad(u.sum(), eps)
    log_normal = torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1)
    expected = log_normal - du.log().flatten(1).sum(1)
    assert torch.allclose(log_q, expected.detach(), atol=1e-10)
    x = dequantize(k, levels, u)
    assert bool((x >= k / levels).all()) and bool((x < (k + 1) / levels).all())


# -- data and bad input -----------------------------------------------------------------------


def test_digits_are_17_level_images_split_by_seed() -> None:
    pytest.importorskip("sklearn")
    a = load_digits(val_fraction=0.1, test_fraction=0.1, seed=0)
    b = load_digits(val_fraction=0.1, test_fraction=0.1, seed=0)
    c = load_digits(val_fraction=0.1, test_fraction=0.1, seed=1)
    assert a.shape == (1, 8, 8) and a.levels == 17 and a.dims == 64
    assert len(a.train) + len(a.validation) + len(a.test) == 1797
    assert a.train.dtype == torch.uint8 and int(a.train.max()) == 16 and int(a.train.min()) == 0
    assert torch.equal(a.test, b.test) and not torch.equal(a.test, c.test)
    assert set(a.train_labels.tolist()) == set(range(10))


def test_bad_input_one_line_errors() -> None:
    flow = image_flow((1, 4, 4), "resflow", levels=2, blocks_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 4, 4\), got \(2, 1, 8, 8\)"):
        flow.log_prob(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 4, 4\), got \(2, 16\)"):
        flow.log_prob(torch.rand(2, 16))  # vectors for an image model
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        flow.log_prob(torch.rand(2, 1, 4, 4) * 255)  # pixels not scaled by 1/L
    with pytest.raises(ValueError, match="not even"):
        image_flow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="blocks_per_level"):
        image_flow((1, 4, 4), blocks_per_level=0)
    with pytest.raises(TypeError, match="unknown block option"):
        image_flow((1, 4, 4), coef=0.9)
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_image_flow_on_cuda(family: str) -> None:
    """float32 on the GPU: training step, evaluation log-density, round trip and samples."""
    shape = (3, 8, 8)
    flow = image_flow(shape, family, levels=2, blocks_per_level=1, hidden_channels=8).to(
        "cuda", torch.float32
    )
    x = torch.rand(16, *shape, device="cuda")
    initialize_actnorm(flow, x)
    loss = -flow.log_prob(x).mean()
    loss.backward()
    assert all(p.grad is None or p.grad.is_cuda for p in flow.parameters())
    flow.eval()
    with torch.no_grad():
        z, _ = flow._transform(x)
        back, _ = flow._transform.inverse(z)
        assert float((back - x).abs().max()) < 1e-3
        s = flow.sample(4)
        assert s.is_cuda and s.shape == (4, *shape)
