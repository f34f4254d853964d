"""i-DenseNet networks and the concatenated activations (CLipSwish, CPila): Lipschitz
constants measured against their bounds, certification, state dicts, shapes, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from implicit_transforms.blocks import BlockOptions, build_block, impflow_block, resflow_block
from implicit_transforms.lipschitz import (
    ACTIVATIONS,
    CLipSwish,
    ConcatenatedActivation,
    CPila,
    LipschitzCNN,
    LipschitzDenseCNN,
    LipschitzDenseMLP,
    LipschitzMLP,
    SpectralConv2d,
    SpectralLinear,
    certify,
    make_activation,
)
from implicit_transforms.lipschitz.activations import (
    CLIPSWISH_SCALE,
    CPILA_SCALE,
    activation_expansion,
    pila,
)
from implicit_transforms.lipschitz.densenet import DenseStep, concat_weights
from implicit_transforms.recipes.spec import BlockSpec, lipschitz_net

CONCATENATED = ["clipswish", "cpila"]


# -- the concatenated activations ----------------------------------------------------------------
def _scalar_slopes(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||d act(x_i) / d x_i||_2`` for every scalar ``x_i`` (a 1-feature input)."""
    x = x.reshape(-1, 1).requires_grad_(True)
    out = act(x)  # (N, 2)
    (g1,) = torch.autograd.grad(out[:, 0].sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(out[:, 1].sum(), x)
    return torch.sqrt(g1**2 + g2**2).reshape(-1)


@pytest.mark.parametrize("name", CONCATENATED)
def test_concatenated_activation_is_1_lipschitz_and_tight(name: str) -> None:
    """The largest Jacobian norm over a fine grid is <= 1 and within 1e-9 of it: the scale
    constants are the exact suprema, not loose bounds."""
    act = make_activation(name)
    slopes = _scalar_slopes(act, torch.linspace(-8.0, 8.0, 400_001))
    assert float(slopes.max()) <= 1.0 + 1e-12
    assert float(slopes.max()) >= 1.0 - 1e-9


def test_clipswish_constant_for_every_beta() -> None:
    """``a(u) + a(-u) = 1`` makes the constant independent of ``beta``: the supremum is 1 for
    every learned ``beta`` (the grid reaches the maximiser ``u = 2.3994`` each time)."""
    for beta in (0.2, 1.0, 3.7):
        act = CLipSwish(beta=beta)
        slopes = _scalar_slopes(act, torch.linspace(-40.0, 40.0, 400_001))
        assert 1.0 - 1e-8 <= float(slopes.max()) <= 1.0 + 1e-12, beta


def test_scale_constants_match_their_closed_forms() -> None:
    # CLipSwish: C = sqrt(a*^2 + (1 - a*)^2), a* = max of sigma(u)(1 + u(1 - sigma(u))).
    u = torch.linspace(2.3, 2.5, 2_000_001)
    s = torch.sigmoid(u)
    a = float((s * (1 + u * (1 - s))).max())
    assert CLIPSWISH_SCALE == pytest.approx(math.hypot(a, 1 - a), rel=1e-12)
    assert CLIPSWISH_SCALE >= math.hypot(a, 1 - a)
    # CPila: the slope of Pila is smallest at -4/k, where it is -19 e^{-4}.
    t = torch.tensor([-0.8], requires_grad=True)
    (slope,) = torch.autograd.grad(pila(t).sum(), t)
    assert float(slope) == pytest.approx(-19 * math.exp(-4), rel=1e-12)
    assert CPILA_SCALE == pytest.approx(math.sqrt(1 + float(slope) ** 2), rel=1e-12)
    # the paper's 1.06 is this constant rounded up
    assert CPILA_SCALE < 1.06


@pytest.mark.parametrize("name", CONCATENATED)
def test_concatenated_activation_lipschitz_on_random_pairs_and_jacobians(name: str) -> None:
    act = make_activation(name)
    if isinstance(act, CLipSwish):
        with torch.no_grad():
            act.rho.fill_(0.4)
    x = 2.0 * torch.randn(20_000, 6)
    y = x + 0.5 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (act(x) - act(y)).norm(dim=-1) / (x - y).norm(dim=-1)
    assert float(ratio.max()) <= 1.0
    norms = [
        float(torch.linalg.matrix_norm(jacobian(act, p), ord=2)) for p in 1.5 * torch.randn(50, 6)
    ]
    assert max(norms) <= 1.0 + 1e-12
    # at the maximisers (CLipSwish: beta x = 2.3994; CPila: x = 0.6) the norm reaches 1
    at = 2.399357245896259 / float(act.beta.detach()) if isinstance(act, CLipSwish) else 0.6
    point = torch.full((6,), at)
    assert float(torch.linalg.matrix_norm(jacobian(act, point), ord=2)) == pytest.approx(
        1.0, abs=1e-10
    )


def test_pila_is_twice_differentiable_at_zero_and_linear_above() -> None:
    x = torch.tensor([-1e-7, 0.0, 1e-7, 2.0], requires_grad=True)
    y = pila(x)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert torch.allclose(d1, torch.ones(4), atol=1e-6)
    assert torch.allclose(d2, torch.zeros(4), atol=1e-5)
    assert float(y[3].detach()) == 2.0
    # no overflow from e^{kx} on the branch that is not taken
    assert torch.isfinite(pila(torch.tensor([1e3, -1e3]))).all()


@pytest.mark.parametrize("name", CONCATENATED)
def test_concatenated_activation_shapes(name: str) -> None:
    assert activation_expansion(name) == 2
    assert make_activation(name)(torch.randn(2, 5, 3)).shape == (2, 5, 6)
    assert make_activation(name, dim=-3)(torch.randn(2, 4, 3, 3)).shape == (2, 8, 3, 3)
    assert isinstance(make_activation(name), ConcatenatedActivation)
    assert activation_expansion("sin") == 1


def test_activation_bad_input() -> None:
    with pytest.raises(ValueError, match="activation must be one of"):
        make_activation("swish")
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_expansion("relu")
    with pytest.raises(TypeError, match="dim must be an int, got float"):
        CPila(dim=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta must be > 0"):
        CLipSwish(beta=0.0)
    with pytest.raises(ValueError, match="k must be > 0"):
        pila(torch.zeros(2), k=-1.0)


# -- the next layer's width doubles -----------------------------------------------------------
@pytest.mark.parametrize("name", CONCATENATED)
def test_mlp_and_cnn_widen_after_a_concatenated_activation(name: str) -> None:
    mlp = LipschitzMLP(3, [8, 5], activation=name)
    assert [(m.in_features, m.out_features) for m in mlp.layers] == [(3, 8), (16, 5), (10, 3)]
    assert mlp(torch.randn(4, 3)).shape == (4, 3)
    cnn = LipschitzCNN(2, 4, activation=name)
    assert [(m.in_channels, m.out_channels) for m in cnn.layers] == [(2, 4), (8, 4), (8, 2)]
    assert cnn(torch.randn(3, 2, 5, 5)).shape == (3, 2, 5, 5)


# -- DenseNets ---------------------------------------------------------------------------------
def _stretch(net: nn.Module, scale: float = 4.0) -> None:
    """Make every raw weight large (normalisation active) and the concatenation uneven."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (SpectralLinear, SpectralConv2d)):
                m.weight.mul_(scale)
        if isinstance(net, (LipschitzDenseMLP, LipschitzDenseCNN)):
            net.concat_raw.copy_(torch.randn_like(net.concat_raw))


@pytest.mark.parametrize("activation", ["clipswish", "cpila", "lipswish", "sin"])
def test_dense_mlp_certified_bound_above_exact_jacobian_norm(activation: str) -> None:
    net = LipschitzDenseMLP(3, [6, 5, 4], coeff=0.9, activation=activation)
    _stretch(net)
    cert = certify(net)
    assert cert.contractive
    norms = [
        float(torch.linalg.matrix_norm(jacobian(net, x[None])[0, :, 0], ord=2))
        for x in 2 * torch.randn(60, 3)
    ]
    assert max(norms) <= cert.bound < 1.0
    # the bound is the product of the dense layers' sqrt(eta1^2 + eta2^2 ||W||^2) and ||W_out||
    eta = concat_weights(net.concat_raw.detach())
    expected = float(torch.linalg.matrix_norm(net.layers[-1].normalized_weight().detach(), ord=2))
    for i, layer in enumerate(list(net.layers)[:-1]):
        w = float(torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2))
        expected *= math.sqrt(float(eta[i, 0]) ** 2 + float(eta[i, 1]) ** 2 * w**2)
    assert cert.bound == pytest.approx(expected, rel=1e-12)
    assert all(k.split(":")[1] in ("DenseStep", "SpectralLinear") for k in cert.layers)


def test_dense_cnn_certified_bound_above_exact_jacobian_norm() -> None:
    net = LipschitzDenseCNN(2, [3, 3], coeff=0.95, activation="clipswish")
    _stretch(net)
    x = torch.randn(1, 2, 4, 4)
    net(x)  # the convolutions learn their input size
    cert = certify(net)
    flat = jacobian(net, x).reshape(32, 32)
    assert float(torch.linalg.matrix_norm(flat, ord=2)) <= cert.bound < 1.0
    for x in torch.randn(5, 1, 2, 4, 4):
        flat = jacobian(net, x).reshape(32, 32)
        assert float(torch.linalg.matrix_norm(flat, ord=2)) <= cert.bound


def test_concatenation_weights_are_normalised_and_learn() -> None:
    net = LipschitzDenseMLP(2, [4, 4], activation="clipswish")
    eta = concat_weights(net.concat_raw)
    assert torch.allclose(eta, torch.full((2, 2), 2**-0.5))
    with torch.no_grad():
        net.concat_raw.copy_(10 * torch.randn(2, 2))
    eta = concat_weights(net.concat_raw)
    assert torch.allclose((eta**2).sum(-1), torch.ones(2)) and bool((eta > 0).all())
    net(torch.randn(5, 2)).square().sum().backward()
    assert net.concat_raw.grad is not None and bool(net.concat_raw.grad.abs().sum() > 0)


def test_dense_step_bound_is_tight_for_a_linear_activation_free_layer() -> None:
    # x -> [eta1 x, eta2 W x] with an orthogonal-direction W: the bound sqrt(eta1^2 +
    # eta2^2 ||W||^2) is attained at W's top right singular vector.
    layer = SpectralLinear(3, 3, coeff=0.8, bias=False)
    eta = torch.tensor([0.6, 0.8])
    step = DenseStep(layer, nn.Identity(), eta)
    w = layer.normalized_weight().detach()
    stacked = torch.cat([0.6 * torch.eye(3), 0.8 * w])
    exact = float(torch.linalg.matrix_norm(stacked, ord=2))
    assert certify(nn.Sequential(step)).bound == pytest.approx(exact, rel=1e-10)


def test_dense_state_dict_round_trip_recomputes_the_normalisation() -> None:
    a = LipschitzDenseMLP(3, [5, 5], coeff=0.9, activation="cpila")
    _stretch(a)
    x = torch.randn(7, 3)
    torch.manual_seed(12345)
    b = LipschitzDenseMLP(3, [5, 5], coeff=0.9, activation="cpila")
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    # a state dict with larger weights and stale singular vectors: the bound is recomputed
    state = {k: v.clone() for k, v in a.state_dict().items()}
    for k in state:
        if k.endswith("weight"):
            state[k] *= 50.0
        if k.endswith(".u") or k.endswith(".v"):
            state[k] = torch.randn_like(state[k])
    b.load_state_dict(state)
    for layer in b.layers:
        norm = float(torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2))
        assert norm <= 0.9 * (1 + 1e-9)
    assert certify(b).bound < 0.9 + 1e-9


def test_dense_cnn_state_dict_round_trip() -> None:
    a = LipschitzDenseCNN(2, [3, 3], coeff=0.9, activation="clipswish")
    x = torch.randn(2, 2, 5, 5)
    a(x)
    b = LipschitzDenseCNN(2, [3, 3], coeff=0.9, activation="clipswish")
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_dense_cnn_shapes() -> None:
    net = LipschitzDenseCNN(3, [4, 6], activation="cpila", context_features=2)
    widths = [(m.in_channels, m.out_channels, m.kernel_size) for m in net.layers]
    assert widths == [(3, 4, 3), (11, 6, 3), (23, 3, 3)]  # 3 + 2*4 = 11, 11 + 2*6 = 23
    for size in ((4, 4), (5, 7)):
        assert net(torch.randn(2, 3, *size), torch.randn(2, 2)).shape == (2, 3, *size)
    sin = LipschitzDenseCNN(3, [4], activation="sin", kernel_size=1)
    assert [m.in_channels for m in sin.layers] == [3, 7]
    assert sin.expected_event_shape() == (3, None, None)


def test_context_enters_as_a_bias_and_the_bound_holds_in_x() -> None:
    net = LipschitzDenseMLP(3, [6, 6], coeff=0.9, activation="clipswish", context_features=2)
    _stretch(net)
    ctx = torch.randn(1, 2)
    x = torch.randn(1, 3)
    assert not torch.allclose(net(x, ctx), net(x, ctx + 1))
    cert = certify(net)
    for c in 3 * torch.randn(10, 1, 2):
        jac = jacobian(lambda v, c=c: net(v, c), x)[0, :, 0]
        assert float(torch.linalg.matrix_norm(jac, ord=2)) <= cert.bound < 1


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: LipschitzDenseMLP(3, []), ValueError, "growth must have at least one entry"),
        (lambda: LipschitzDenseMLP(3, 8), TypeError, "growth must be a sequence"),  # type: ignore[arg-type]
        (lambda: LipschitzDenseMLP(3, [4, 0]), ValueError, "growth entries must be a positive"),
        (lambda: LipschitzDenseMLP(0, [4]), ValueError, "features must be a positive int"),
        (lambda: LipschitzDenseMLP(3, [4], coeff=1.0), ValueError, "coeff must be in"),
        (lambda: LipschitzDenseMLP(3, [4], activation="relu"), ValueError, "activation must be"),
        (lambda: LipschitzDenseCNN(3, [4], kernel_size=2), ValueError, "kernel_size"),
        (lambda: LipschitzDenseCNN(3, [4], context_features=0), ValueError, "context_features"),
        (lambda: lipschitz_net(3, [4], network="resnet"), ValueError, "network must be one of"),
        (lambda: lipschitz_net((2, 3), [4], network="densenet"), ValueError, "event_shape"),
        (lambda: resflow_block(3, network="dense"), ValueError, "network must be one of"),
        (lambda: BlockOptions(network=1), TypeError, "network must be a str, got int"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_names_the_argument(make, error: type[Exception], match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        make()


def test_dense_block_rejects_a_wrong_input_shape() -> None:
    block = resflow_block(3, [4], network="densenet")
    with pytest.raises(ValueError, match="3"):
        block(torch.randn(5, 4))


# -- the option, in every family and through the spec ------------------------------------------
@pytest.mark.parametrize("family", ["iresnet", "resflow", "impflow"])
def test_every_family_builds_densenets(family: str) -> None:
    block = build_block(family, 3, [4, 4], network="densenet", activation="clipswish")
    nets = block.networks()
    assert nets and all(isinstance(n, LipschitzDenseMLP) for n in nets)
    assert all(isinstance(a, CLipSwish) for n in nets for a in n.activations)
    image = build_block(family, (2, 4, 4), 3, network="densenet", activation="cpila")
    assert all(isinstance(n, LipschitzDenseCNN) for n in image.networks())
    block.eval()
    x = torch.randn(4, 3)
    y, _ = block.forward_and_logdet(x)
    assert torch.allclose(block.inverse_and_logdet(y)[0], x, atol=1e-6)
    assert certify(block).contractive


def test_spec_round_trip_keeps_the_network_and_old_specs_load() -> None:
    spec = BlockSpec.from_options("impflow", 3, [8], network="densenet", activation="cpila")
    data = spec.to_dict()
    assert data["network"] == "densenet" and data["activation"] == "cpila"
    again = BlockSpec.from_dict(data)
    assert again == spec and isinstance(again.build().networks()[0], LipschitzDenseMLP)
    del data["network"]  # a spec written before the option existed
    assert BlockSpec.from_dict(data).network == "mlp"


def test_registry_names_every_activation() -> None:
    assert {"clipswish", "cpila"} <= set(ACTIVATIONS)
    assert BlockOptions(activation="cpila").activation == "cpila"


def test_impflow_densenet_fits_where_the_block_trains() -> None:
    """A short fit moves the concatenation weights and keeps the bound below 1."""
    block = impflow_block(2, [8, 8], network="densenet", activation="clipswish", coeff=0.9)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    x = torch.randn(64, 2) * torch.tensor([2.0, 0.5])
    raw0 = block.net_x.concat_raw.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        z, logdet = block.forward_and_logdet(x)
        loss = (0.5 * z.square().sum(-1) - logdet).mean()
        loss.backward()
        opt.step()
    assert not torch.equal(block.net_x.concat_raw.detach(), raw0)
    assert certify(block).contractive


def test_zero_init_reaches_densenets() -> None:
    from implicit_transforms.recipes.spec import lipschitz_net

    x = torch.randn(16, 3, dtype=torch.float64)
    nets = []
    for zero_init in (False, True):
        torch.manual_seed(0)
        nets.append(lipschitz_net(3, [8, 8], network="densenet", zero_init=zero_init).double())

    def jac_norm(net: torch.nn.Module) -> float:
        xi = x.clone().requires_grad_()
        rows = [torch.autograd.grad(net(xi)[:, i].sum(), xi)[0] for i in range(3)]
        return float(torch.stack(rows, 1).norm())

    # a shift of the identity at the start: the Jacobian ~1000 times smaller, not zero
    assert 0 < jac_norm(nets[1]) < 1e-2 * jac_norm(nets[0])
    nets[1](x).pow(2).sum().backward()
    grads = [p.grad for p in nets[1].parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
