"""The Lipschitz guarantee by every route weights can take, at every width.

Round 2 held the bound under optimizers; these are the other ways users change weights
(loading edited, averaged or transplanted state, re-initialising, ``vector_to_parameters``)
and the layers wider than the exact eigen-decomposition's limit, checked after **every**
training forward by the exact SVD of the weight each layer applies, plus the functional path
(``torch.func``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from implicit_transforms.blocks import impflow_block, resflow_block
from implicit_transforms.lipschitz import LipschitzMLP, SpectralConv2d, SpectralLinear, certify
from implicit_transforms.lipschitz.norms import (
    certified_norm_bound,
    circular_grid,
    circular_spectrum,
)
from implicit_transforms.lipschitz.spectral import _SpectralMixin

SLACK = 1e-9  # float rounding of the checks themselves


def _applied_norm(layer: _SpectralMixin) -> float:
    """The exact norm (float64 SVD) of the weight the layer applies now, over ``coeff``."""
    w = layer.normalized_weight().detach().double()
    if isinstance(layer, SpectralConv2d):
        size = layer.spatial_size
        assert size is not None
        if layer.kernel_size == 1:
            norm = torch.linalg.matrix_norm(w[:, :, 0, 0], ord=2)
        else:
            spec = circular_spectrum(w, circular_grid(size, layer.kernel_size))
            norm = torch.linalg.matrix_norm(spec, ord=2).amax()
    else:
        norm = torch.linalg.matrix_norm(w, ord=2)
    return float(norm) / layer.coeff


def _worst(model: nn.Module) -> float:
    layers = [m for m in model.modules() if isinstance(m, _SpectralMixin)]
    assert layers
    return max(_applied_norm(m) for m in layers)


# -- certified_norm_bound ------------------------------------------------------------------
@pytest.mark.parametrize("estimate_factor", [1.0, 0.999, 0.9, 0.3, 1e-6, float("nan")])
@pytest.mark.parametrize("complex_", [False, True])
def test_certified_bound_is_an_upper_bound_for_any_estimate(
    estimate_factor: float, complex_: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    dtype = torch.complex128 if complex_ else torch.float64
    mats = torch.randn(5, 30, 20, generator=gen, dtype=dtype)
    true = float(torch.linalg.matrix_norm(mats, ord=2).amax())
    nb = certified_norm_bound(mats, true * estimate_factor)
    assert nb.bound >= true
    if estimate_factor >= 0.999:
        assert nb.bound <= true * 1.005 and not nb.exact
    else:
        assert nb.bound <= true * 1.01  # the exact fallback (or a retry) keeps it tight


# -- state from anywhere ---------------------------------------------------------------------
def _net(width: int = 32) -> LipschitzMLP:
    return LipschitzMLP(3, [width, width], coeff=0.97).double()


@pytest.mark.parametrize("width", [32, 300])
def test_edited_state_dict_is_normalised_from_its_content(width: int) -> None:
    net = _net(width)
    net(torch.randn(4, 3, dtype=torch.float64))
    sd = net.state_dict()
    sd["layers.1.weight"] = torch.randn(width, width, dtype=torch.float64) * 0.5
    # Forged "current" flag of an earlier version: must be ignored, never trusted.
    sd["layers.1.estimate_current"] = torch.ones((), dtype=torch.bool)
    net.load_state_dict(sd)
    net(torch.randn(4, 3, dtype=torch.float64))
    assert _worst(net) <= 1 + SLACK
    assert certify(net).contractive


@pytest.mark.parametrize("width", [32, 300])
def test_averaged_state_dicts_are_normalised(width: int) -> None:
    models = [_net(width) for _ in range(3)]
    for m in models:
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(5.0)  # raw weights far beyond the bound, as after long training
        m(torch.randn(4, 3, dtype=torch.float64))
    avg = {k: sum(m.state_dict()[k] for m in models) / 3 for k in models[0].state_dict()}
    target = _net(width)
    target.load_state_dict(avg)
    for mode in (True, False):
        target.train(mode)
        target(torch.randn(4, 3, dtype=torch.float64))
        assert _worst(target) <= 1 + SLACK


def test_transplanted_reinitialised_and_vector_written_layers() -> None:
    net, donor = _net(300), _net(300)
    with torch.no_grad():
        donor.layers[1].weight.mul_(7.0)
    donor(torch.randn(2, 3, dtype=torch.float64))
    net(torch.randn(2, 3, dtype=torch.float64))
    net.layers[1] = donor.layers[1]  # a layer moved between models
    net(torch.randn(2, 3, dtype=torch.float64))
    assert _worst(net) <= 1 + SLACK
    nn.init.xavier_uniform_(net.layers[1].weight, gain=3.0)
    net(torch.randn(2, 3, dtype=torch.float64))
    assert _worst(net) <= 1 + SLACK
    vec = torch.nn.utils.parameters_to_vector(net.parameters())
    torch.nn.utils.vector_to_parameters(vec * 4.0, net.parameters())
    net(torch.randn(2, 3, dtype=torch.float64))
    assert _worst(net) <= 1 + SLACK


def test_block_state_dict_average_samples_without_error() -> None:
    blocks = [resflow_block(2, [16, 16]).double() for _ in range(3)]
    for b in blocks:
        with torch.no_grad():
            for p in b.parameters():
                p.add_(torch.randn_like(p))
    avg = {k: sum(b.state_dict()[k] for b in blocks) / 3 for k in blocks[0].state_dict()}
    block = resflow_block(2, [16, 16]).double()
    block.load_state_dict(avg)
    block.eval()
    assert certify(block).contractive
    z = torch.randn(100, 2, dtype=torch.float64)
    x, _ = block.inverse_and_logdet(z)  # raises ConvergenceError if not contractive
    assert torch.isfinite(x).all()


# -- any width, checked after every training forward ---------------------------------------
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float], Any]] = {
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adam-fused": lambda p, lr: torch.optim.Adam(p, lr=lr, fused=True),
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
}


@pytest.mark.parametrize(
    ("width", "opt_name", "lr"),
    [
        (384, "adam", 1e-2),
        (384, "sgd", 1e-1),
        (512, "adam-fused", 3e-3),
        (512, "adam", 1e-2),
        (1024, "adam", 1e-3),
    ],
)
def test_wide_layers_hold_the_bound_after_every_training_forward(
    width: int, opt_name: str, lr: float
) -> None:
    torch.manual_seed(0)
    block = resflow_block(4, [width, width])
    params = list(block.parameters())
    opt = OPTIMIZERS[opt_name](params, lr)
    data = 0.01 * torch.randn(256, 4)
    worst = 0.0
    for _ in range(6):
        z, ld = block.forward_and_logdet(data[torch.randint(0, 256, (32,))])
        worst = max(worst, _worst(block))  # the map this forward applied
        loss = (0.5 * z.pow(2).sum(1) - ld).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert worst <= 1 + 1e-5, worst  # float32 weights: the SVD check's own rounding


def test_wide_convolutions_hold_the_bound() -> None:
    """Both channel counts above the exact limit: the certified circular bound."""
    torch.manual_seed(0)
    conv = SpectralConv2d(72, 80, 3, coeff=0.9)
    assert not conv.exact
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    for _ in range(4):
        y = conv(torch.randn(2, 72, 4, 4))
        assert _applied_norm(conv) <= 1 + 1e-5
        opt.zero_grad()
        (-y.pow(2).mean()).backward()  # pushes the norm up
        opt.step()
    conv.eval()
    assert _applied_norm(conv) <= 1 + 1e-5


def test_pyro_autoflowstack_at_d100_with_clipped_adam() -> None:
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from implicit_transforms.plugins.pyro import AutoFlowStack
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    pyro.clear_param_store()
    dim = 100

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(dim), 10.0).to_event(1))

    guide = AutoFlowStack(model, "resflow")
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step()
        guide()  # a training forward with the updated weights
        assert _worst(guide) <= 1 + 1e-5


# -- torch.func --------------------------------------------------------------------------------
def test_jacrev_after_optimizer_steps_matches_autograd() -> None:
    torch.manual_seed(0)
    block = resflow_block(2, [16]).double()
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    x = torch.randn(8, 2, dtype=torch.float64)
    for _ in range(3):
        y, ld = block.forward_and_logdet(x)
        opt.zero_grad()
        (y.sum() + ld.sum()).backward()
        opt.step()

    def f(v: torch.Tensor) -> torch.Tensor:
        return block.forward_map(v[None])[0]

    jac = torch.func.jacrev(f)(x[0])  # the weights changed since the last forward
    expected = torch.autograd.functional.jacobian(f, x[0])
    assert torch.allclose(jac, expected, atol=1e-8)


@pytest.mark.parametrize("call", ["forward_and_logdet", "inverse_map"])
def test_solves_and_logdets_under_torch_func_raise_our_error(call: str) -> None:
    from implicit_transforms import FunctionalTransformError

    block = impflow_block(2, [8]).double()
    x = torch.randn(2, dtype=torch.float64)
    with pytest.raises(FunctionalTransformError, match=r"torch\.func"):
        torch.func.jacrev(lambda v: getattr(block, call)(v[None])[0])(x)


class _ForwardMap(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.forward_map(x)  # type: ignore[operator]


def test_vmap_over_a_stacked_ensemble() -> None:
    torch.manual_seed(0)
    models = [_ForwardMap(resflow_block(2, [16]).double()) for _ in range(3)]
    for m in models:  # trained a little, so no estimate is current
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(3.0)
    params, buffers = torch.func.stack_module_state(models)  # type: ignore[arg-type]
    x = torch.randn(5, 2, dtype=torch.float64)

    def run(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(models[0], (p, b), (x,), strict=True)

    out = torch.vmap(run)(params, buffers)
    for i, m in enumerate(models):
        assert torch.allclose(out[i], m(x), atol=1e-10)


def test_functional_call_with_large_layers_uses_an_exact_norm() -> None:
    layer = SpectralLinear(300, 300, coeff=0.9).double()
    w = torch.randn(300, 300, dtype=torch.float64)
    x = torch.randn(300, dtype=torch.float64)

    def apply(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    grad = torch.func.grad(lambda w: apply(w).pow(2).sum())(w)  # no state writes in there
    assert grad.shape == (300, 300) and torch.isfinite(grad).all()
    normed = torch.func.functional_call(
        layer, {"weight": w}, (torch.eye(300, dtype=torch.float64),)
    )
    assert float(torch.linalg.matrix_norm(normed - layer.bias, ord=2)) <= 0.9 + 1e-9


# -- the shipped recipes at their largest sizes, in training ---------------------------------
def test_image_flow_with_512_hidden_channels_certifies_in_training() -> None:
    pytest.importorskip("nflows")
    import implicit_transforms.plugins.nflows  # noqa: F401  (import order: see test_imports)
    from implicit_transforms.plugins.nflows_images import image_flow

    torch.manual_seed(0)
    flow = image_flow((1, 8, 8), "resflow", levels=1, blocks_per_level=1, hidden_channels=512)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    x = torch.rand(8, 1, 8, 8)
    for _ in range(2):
        loss = -flow.log_prob(x).mean()
        assert _worst_conv(flow) <= 1 + 1e-5
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worst_conv(model: nn.Module) -> float:
    layers = [m for m in model.modules() if isinstance(m, _SpectralMixin) and m._ready()]
    assert any(not m.exact for m in layers)  # the 512 x 512 1x1 convolution is certified
    return max(_applied_norm(m) for m in layers)


def test_autoflowstack_at_d256_certifies_in_training() -> None:
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from implicit_transforms.plugins.pyro import AutoFlowStack
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    pyro.clear_param_store()

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(256), 10.0).to_event(1))

    guide = AutoFlowStack(model, "impflow")
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    svi.step()
    guide()
    assert _worst(guide) <= 1 + 1e-5
