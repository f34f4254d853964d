"""Spectral normalisation, 1-Lipschitz activations, Lipschitz networks and certification."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from implicit_transforms.lipschitz import (
    LipschitzCNN,
    LipschitzMLP,
    LipschitzNet,
    LipSwish,
    Sine,
    SpectralConv2d,
    SpectralLinear,
    certify,
    conv_operator_norm_bound,
)
from implicit_transforms.lipschitz.spectral import circular_grid


def _dense_conv_norm(weight: torch.Tensor, size: tuple[int, int]) -> float:
    c_in = weight.shape[1]
    n = c_in * size[0] * size[1]
    basis = torch.eye(n).reshape(n, c_in, *size)
    dense = F.conv2d(basis, weight, padding=weight.shape[-1] // 2).reshape(n, -1)
    return float(torch.linalg.matrix_norm(dense, ord=2))


@pytest.mark.parametrize("coeff", [0.0, 1.0, 1.5, -0.2])
def test_coeff_validated(coeff: float) -> None:
    with pytest.raises(ValueError, match="coeff must be in"):
        SpectralLinear(3, 3, coeff=coeff)
    with pytest.raises(ValueError, match="coeff must be in"):
        LipschitzMLP(3, [4], coeff=coeff)


def test_coeff_type_validated() -> None:
    with pytest.raises(TypeError, match="coeff"):
        SpectralLinear(3, 3, coeff="0.9")  # type: ignore[arg-type]


def test_linear_normalised_weight_respects_coeff() -> None:
    layer = SpectralLinear(6, 4, coeff=0.7)
    with torch.no_grad():
        layer.weight.mul_(5.0)
    layer.refine(tol=1e-12)
    sigma = float(torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2))
    assert sigma == pytest.approx(0.7, rel=1e-8)
    assert certify(layer).bound == pytest.approx(sigma, rel=1e-12)


def test_map_fixed_between_weight_changes_and_exact_after_any_write() -> None:
    layer = SpectralLinear(5, 5, coeff=0.9)
    x = torch.randn(3, 5)
    assert torch.equal(layer(x), layer(x))  # a solve sees one map
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        # Writes that leave the version counter and the storage pointer alone, or bypass
        # autograd, must all be seen: p.data, an in-place op under no_grad, a copy_.
        for write in (
            lambda w: w.data.mul_(3.0),
            lambda w: w.detach().add_(0.5),
            lambda w: w.data.copy_(torch.randn_like(w) * 4),
        ):
            with torch.no_grad():
                write(layer.weight)
            exact = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
            assert float(layer.sigma().detach()) == pytest.approx(exact, rel=1e-10)
            applied = float(torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2))
            assert applied == pytest.approx(min(exact, 0.9), rel=1e-10)


def test_sigma_gradient_is_the_top_singular_pair() -> None:
    layer = SpectralLinear(4, 6)
    (grad,) = torch.autograd.grad(layer.sigma(), layer.weight)
    u, _, vh = torch.linalg.svd(layer.weight.detach())
    assert torch.allclose(grad, torch.outer(u[:, 0], vh[0]), atol=1e-8) or torch.allclose(
        grad, torch.outer(-u[:, 0], -vh[0]), atol=1e-8
    )


def test_large_dense_layers_use_a_certified_bound() -> None:
    layer = SpectralLinear(300, 300, coeff=0.9)
    assert not layer.exact and SpectralLinear(300, 3).exact
    exact = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
    # Training mode: a guaranteed upper bound, within the certificate's slack of the norm.
    assert exact <= float(layer.sigma().detach()) <= exact * 1.01
    layer.eval()  # refines the estimate, then certifies a tight bound
    assert exact <= float(layer.sigma().detach()) <= exact * (1 + 5e-4)
    with pytest.raises(TypeError, match="margin"):
        SpectralLinear(3, 3, margin=0.02)  # type: ignore[call-arg]


def test_nonfinite_weight_is_reported() -> None:
    layer = SpectralLinear(3, 3)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(torch.randn(2, 3))


def test_state_dict_round_trip_and_buffers() -> None:
    a = SpectralLinear(4, 3)
    assert {"u", "v"} <= set(dict(a.named_buffers()))
    b = SpectralLinear(4, 3)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = torch.randn(2, 4)
    assert torch.equal(a(x), b(x))


def _circular_norm(weight: torch.Tensor, size: tuple[int, int]) -> float:
    grid = circular_grid(size, weight.shape[-1])
    spec = torch.fft.fft2(weight, s=grid).permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(spec, ord=2).max())


@pytest.mark.parametrize("size", [(5, 5), (3, 4), (1, 1)])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_circular_norm_bounds_the_zero_padded_convolution(
    kernel: int, size: tuple[int, int]
) -> None:
    for _ in range(5):
        weight = torch.randn(3, 2, kernel, kernel)
        assert _circular_norm(weight, size) >= _dense_conv_norm(weight, size) * (1 - 1e-12)


def test_exact_conv_norm_holds_at_every_call_on_the_actual_size() -> None:
    conv = SpectralConv2d(2, 3, 3, coeff=0.8)
    assert conv.exact
    for size in [(5, 5), (3, 4)]:
        with torch.no_grad():
            conv.weight.mul_(4.0)  # no forward in between: the next call must see it
        conv(torch.randn(1, 2, *size))
        assert conv.spatial_size == size
        w = conv.normalized_weight().detach()
        assert _circular_norm(w, size) == pytest.approx(0.8, rel=1e-9)
        assert _dense_conv_norm(w, size) <= 0.8 * (1 + 1e-9)
    (grad,) = torch.autograd.grad(conv.sigma(), conv.weight)  # derivative of the top value
    eps = 1e-6
    direction = torch.randn_like(conv.weight)
    with torch.no_grad():
        conv.weight.add_(eps * direction)
    up = float(conv.sigma().detach())
    with torch.no_grad():
        conv.weight.sub_(2 * eps * direction)
    down = float(conv.sigma().detach())
    assert (up - down) / (2 * eps) == pytest.approx(float((grad * direction).sum()), rel=1e-5)


def test_certified_conv_norm_bounds_the_convolution_at_every_size() -> None:
    conv = SpectralConv2d(2, 3, 3, coeff=0.8, exact=False)
    with torch.no_grad():
        conv.weight.mul_(4.0)
    for size in [(5, 5), (3, 4)]:
        conv(torch.randn(1, 2, *size))
        assert conv.spatial_size == size
        circular = conv_operator_norm_bound(conv.weight.detach(), size)
        bound = float(conv.sigma().detach())
        # Certified: at least the circular norm (which bounds the padded convolution's)...
        assert circular <= bound <= circular * 1.01
        applied = _dense_conv_norm(conv.normalized_weight().detach(), size)
        assert applied <= 0.8 * (1 + 1e-9)
        conv.refine(tol=1e-12)
        assert float(conv.sigma().detach()) <= circular * (1 + 5e-4)
    assert not SpectralConv2d(100, 100, 3).exact and SpectralConv2d(100, 100, 1).exact


def test_conv_state_dict_adopts_saved_spatial_size() -> None:
    a = SpectralConv2d(2, 2, 3)
    a(torch.randn(1, 2, 6, 6))
    b = SpectralConv2d(2, 2, 3)
    b.load_state_dict(a.state_dict())
    assert b.spatial_size == (6, 6)
    a.eval()
    b.eval()
    x = torch.randn(2, 2, 6, 6)
    assert torch.equal(a(x), b(x))


def test_conv_certificate_is_an_upper_bound() -> None:
    weight = torch.randn(3, 2, 3, 3)
    for size in [(4, 4), (7, 5)]:
        exact = _dense_conv_norm(weight, size)
        assert conv_operator_norm_bound(weight, size) >= exact * (1 - 1e-12)
    conv = SpectralConv2d(2, 3, 3, coeff=0.9)
    conv(torch.randn(1, 2, 20, 20))  # 800 elements: certified exactly from the dense operator
    exact = _dense_conv_norm(conv.normalized_weight().detach(), (20, 20))
    assert certify(conv).bound >= exact
    assert certify(conv).bound == pytest.approx(exact, rel=1e-9)
    assert (
        certify(conv, input_size=(40, 40)).bound
        >= _dense_conv_norm(conv.normalized_weight().detach(), (8, 8)) * 0.999
    )


def test_conv_rejects_wrong_input() -> None:
    conv = SpectralConv2d(2, 3, 3)
    with pytest.raises(ValueError, match=r"expects input \(B, 2, H, W\)"):
        conv(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="odd"):
        SpectralConv2d(2, 3, 2)


@pytest.mark.parametrize(
    "act",
    [LipSwish(0.1), LipSwish(1.0), LipSwish(10.0), LipSwish(100.0), Sine(), torch.nn.ELU()],
    ids=["lipswish-0.1", "lipswish-1", "lipswish-10", "lipswish-100", "sin", "elu"],
)
def test_activations_are_one_lipschitz(act: torch.nn.Module) -> None:
    x = torch.linspace(-20, 20, 400001, requires_grad=True)
    (d,) = torch.autograd.grad(act(x).sum(), x)
    assert float(d.abs().max()) <= 1.0
    assert certify(act).bound == 1.0


def test_lipswish_beta_is_learnable_and_positive() -> None:
    act = LipSwish()
    assert float(act.beta.detach()) == pytest.approx(1.0)
    act(torch.randn(5)).sum().backward()
    assert act.rho.grad is not None


@pytest.mark.parametrize("activation", ["lipswish", "elu", "sin"])
def test_mlp_certified_and_jacobian_below_bound(activation: str) -> None:
    g = LipschitzMLP(3, [16, 16], coeff=0.9, activation=activation, context_features=2)
    for layer in g.layers:
        layer.refine(tol=1e-12)
    cert = certify(g)
    assert cert.contractive and cert.bound <= 0.9**3 * (1 + 1e-8)
    ctx = torch.randn(2)
    for _ in range(20):
        x = torch.randn(3) * 3
        jac = torch.autograd.functional.jacobian(lambda t: g(t[None], ctx[None])[0], x)
        assert float(torch.linalg.matrix_norm(jac, ord=2)) <= cert.bound + 1e-12


def test_mlp_context_checks() -> None:
    g = LipschitzMLP(3, [8], context_features=2)
    with pytest.raises(ValueError, match="context_features=2 but got context=None"):
        g(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no context"):
        LipschitzMLP(3, [8])(torch.zeros(1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="features"):
        LipschitzMLP(0, [8])
    with pytest.raises(ValueError, match="activation"):
        LipschitzMLP(3, [8], activation="relu6")


def test_cnn_shapes_context_and_certificate() -> None:
    g = LipschitzCNN(2, 6, coeff=0.9, context_features=3)
    x = torch.randn(4, 2, 5, 5)
    out = g(x, torch.randn(4, 3))
    assert out.shape == x.shape
    for layer in g.layers:
        layer.refine(tol=1e-12)
    cert = certify(g)
    assert cert.contractive
    assert set(cert.layers) == {
        "0:SpectralConv2d",
        "1:LipSwish",
        "2:SpectralConv2d",
        "3:LipSwish",
        "4:SpectralConv2d",
    }


def test_certify_rejects_unknown_layers() -> None:
    with pytest.raises(TypeError, match="no Lipschitz bound known"):
        certify(torch.nn.Softplus(beta=3))


def test_certify_any_model_reports_every_network() -> None:
    pytest.importorskip("nflows")
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from implicit_transforms.plugins.nflows import ImpFlowTransform, ResFlowTransform
    from implicit_transforms.plugins.pyro import impflow, resflow
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform, ReversePermutation
    from pyro.distributions.transforms import ComposeTransformModule
    from pyro.infer.autoguide import AutoNormalizingFlow

    from implicit_transforms.blocks import impflow_block, resflow_block

    block = impflow_block(2, [8])
    cert = certify(block)
    assert set(cert.networks) == {"net_x", "net_z"} and cert.contractive
    assert cert.bound == max(c.bound for c in cert.networks.values())
    assert cert.networks["net_x"].bound == certify(block.net_x).bound
    flow = Flow(
        CompositeTransform(
            [ImpFlowTransform(2, [8]), ReversePermutation(2), ResFlowTransform(2, [8])]
        ),
        StandardNormal([2]),
    )
    assert len(certify(flow).networks) == 3
    assert "impflow" not in str(certify(flow)) and "3 networks" in str(certify(flow))
    t = ComposeTransformModule([resflow(2, [8]), impflow(2, [8])])
    assert len(certify(t).networks) == 3
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), list(t))
    assert len(certify(q).networks) == 3

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoNormalizingFlow(model, lambda d: ComposeTransformModule([resflow(d, [8])]))
    guide()
    assert len(certify(guide).networks) == 1
    conv_block = resflow_block((2, 4, 4), 4)
    with pytest.raises(ValueError, match="run one forward pass"):
        certify(conv_block)  # a convolution's norm depends on the input size it sees
    conv_block(torch.randn(1, 2, 4, 4))
    assert certify(conv_block).contractive
    with pytest.raises(ValueError, match="no Lipschitz network"):
        certify(torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)}))
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        certify(3.0)


def test_eval_refines_and_warns_when_a_network_is_not_contractive() -> None:
    from implicit_transforms import LipschitzWarning
    from implicit_transforms.blocks import resflow_block

    block = resflow_block(2, [8], activation="elu")
    block.eval()  # fine: no warning (warnings are errors in the tests)
    block.train()
    block.net.activations[0].alpha = 3.0  # an ELU with alpha 3 is 3-Lipschitz
    with pytest.warns(LipschitzWarning, match="not be invertible"):
        block.eval()


# -- zero_init: networks that start near zero ------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda z: LipschitzMLP(3, [16, 16], zero_init=z), (32, 3)),
        (lambda z: LipschitzCNN(2, 8, zero_init=z), (4, 2, 5, 5)),
        # a 300 x 300 last layer takes the certified (power iteration + Cholesky) norm
        (lambda z: LipschitzMLP(300, [300], zero_init=z), (8, 300)),
    ],
    ids=["mlp", "cnn", "mlp-certified"],
)
def test_zero_init_divides_the_last_weight_only_and_trains(
    make: Callable[[bool], LipschitzNet], shape: tuple[int, ...]
) -> None:
    x = torch.randn(shape)
    torch.manual_seed(0)
    plain = make(False)
    torch.manual_seed(0)
    near = make(True)
    ws = [(a.weight, b.weight) for a, b in zip(plain.layers, near.layers, strict=True)]
    for a, b in ws[:-1]:
        assert torch.equal(a, b)
    assert torch.equal(ws[-1][1], ws[-1][0] / 1000)
    # g starts near its last bias: its Lipschitz constant is at most ||W_last|| ~ 1e-3 * ...
    out = near(x)
    spread = (out - near(torch.zeros_like(x))).abs().max().detach()
    assert torch.isfinite(out).all() and float(spread) < 2e-2 * float(x.abs().max())
    # the normalisation does not divide by the tiny norm: W' = W (s < c), exactly
    last = near.layers[-1]
    sigma = float(last.sigma().detach())
    assert 0 < sigma < 1e-2 and torch.equal(last.normalized_weight(), last.weight)
    out.square().sum().backward()
    for name, p in near.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().max()) > 0, name


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "certified"])
def test_a_zero_weight_is_normalised_without_dividing_by_zero(exact: bool) -> None:
    layer = SpectralLinear(6, 5, exact=exact)
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.randn(4, 6, requires_grad=True)
    y = layer(x)
    assert torch.isfinite(y).all() and torch.equal(y, layer.bias.expand(4, 5))
    y.sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and float(layer.weight.grad.abs().max()) > 0
    sigma = layer.sigma().detach()
    assert float(sigma) >= 0 and bool(torch.isfinite(sigma))


def test_zero_init_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="zero_init must be a bool, got int"):
        LipschitzMLP(2, [4], zero_init=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="zero_init must be a bool, got str"):
        LipschitzCNN(2, 4, zero_init="yes")  # type: ignore[arg-type]
