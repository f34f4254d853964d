"""Spectral normalisation, 1-Lipschitz activations, Lipschitz networks and certification."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from implicit_transforms.lipschitz import (
    LipschitzCNN,
    LipschitzMLP,
    LipSwish,
    Sine,
    SpectralConv2d,
    SpectralLinear,
    certify,
    conv_operator_norm_bound,
)


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


def test_map_fixed_until_weights_change_then_updates_in_training() -> None:
    layer = SpectralLinear(5, 5, coeff=0.9)
    x = torch.randn(3, 5)
    layer.train()
    u0 = layer.u.clone()
    assert torch.equal(layer(x), layer(x))  # a solve sees one map
    assert torch.equal(layer.u, u0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).pow(2).sum().backward()
    opt.step()
    layer(x)
    assert not torch.equal(layer.u, u0)  # updated automatically after the step
    layer.eval()
    u1 = layer.u.clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    layer(x)
    assert torch.equal(layer.u, u1)  # evaluation never updates


def test_state_dict_round_trip_and_buffers() -> None:
    a = SpectralLinear(4, 3)
    assert {"u", "v"} <= set(dict(a.named_buffers()))
    b = SpectralLinear(4, 3)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = torch.randn(2, 4)
    assert torch.equal(a(x), b(x))


def test_conv_norm_is_operator_norm_on_actual_size_and_recomputed() -> None:
    conv = SpectralConv2d(2, 3, 3, coeff=0.8)
    with torch.no_grad():
        conv.weight.mul_(4.0)
    conv(torch.randn(1, 2, 5, 5))
    assert conv.spatial_size == (5, 5)
    conv.refine(tol=1e-12)
    assert _dense_conv_norm(conv.normalized_weight().detach(), (5, 5)) == pytest.approx(
        0.8, rel=1e-6
    )
    conv(torch.randn(1, 2, 3, 4))
    assert conv.spatial_size == (3, 4)
    conv.refine(tol=1e-12)
    assert _dense_conv_norm(conv.normalized_weight().detach(), (3, 4)) == pytest.approx(
        0.8, rel=1e-6
    )


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
