"""Log-det estimators against the exact slogdet of the autograd Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from implicit_transforms.logdet import (
    ExactLogDet,
    Geometric,
    Poisson,
    PowerSeriesLogDet,
    RouletteLogDet,
    power_series_bound,
    sample_probes,
)


def _net(d: int, lip: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, d))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(math.sqrt(lip) / torch.linalg.matrix_norm(m.weight, ord=2))
    return net


def _reference_logdet(g: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t: t + g(t[None])[0], xi, create_graph=True)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


def test_exact_matches_autograd_jacobian() -> None:
    g = _net(4, 0.9)
    x = torch.randn(5, 4)
    gx, ld = ExactLogDet()(g, x)
    assert torch.allclose(gx, g(x))
    assert torch.allclose(ld, _reference_logdet(g, x), atol=1e-12)


def test_exact_is_differentiable_and_handles_images() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.05)
    x = torch.randn(3, 2, 3, 3, requires_grad=True)
    net = lambda t: torch.tanh(conv(t))  # noqa: E731
    _, ld = ExactLogDet()(net, x, event_dims=3)
    assert ld.shape == (3,)
    ld.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    flat = lambda t: t + net(t.reshape(1, 2, 3, 3)).reshape(-1)  # noqa: E731
    ref = torch.linalg.slogdet(torch.autograd.functional.jacobian(flat, x[0].detach().reshape(-1)))
    assert torch.allclose(ld[0], ref.logabsdet, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_exact_batched_vjps_match_the_reference_in_value_and_gradient(chunk_size: int) -> None:
    """The Jacobian rows come from batched backward passes, ``chunk_size`` at a time: value
    and gradient (parameters and input) equal the per-sample autograd reference."""
    g = _net(5, 0.9)
    x = torch.randn(4, 5, requires_grad=True)
    est = ExactLogDet(chunk_size=chunk_size)
    _, ld = est(g, x)
    ref = _reference_logdet(g, x)
    assert torch.allclose(ld, ref, atol=1e-12)
    params = [x, *g.parameters()]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    kw = {"allow_unused": True, "materialize_grads": True}  # the last bias has no effect
    got = torch.autograd.grad((weights * ld).sum(), params, **kw)
    want = torch.autograd.grad((weights * ref).sum(), params, **kw)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    _, empty = est(g, torch.zeros(0, 5))
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ExactLogDet(chunk_size=0)


def test_exact_refuses_huge_events() -> None:
    with pytest.raises(ValueError, match="max_dim"):
        ExactLogDet(max_dim=4)(lambda t: t, torch.zeros(1, 5))


def test_no_grad_outputs_are_detached() -> None:
    g = _net(3, 0.5)
    x = torch.randn(2, 3)
    for est in (ExactLogDet(), PowerSeriesLogDet(), RouletteLogDet()):
        with torch.no_grad():
            gx, ld = est(g, x)
        assert not gx.requires_grad and not ld.requires_grad


def test_one_dimensional_rademacher_series_is_exact() -> None:
    """In 1-D with v = +-1, v^T J^k v = J^k: only truncation is left, within its bound."""
    g = _net(1, 0.8)
    x = torch.randn(6, 1)
    exact = _reference_logdet(g, x)
    for n in (3, 10, 40):
        _, ld = PowerSeriesLogDet(n_terms=n, probe="rademacher")(g, x)
        assert float((ld - exact).detach().abs().max()) <= power_series_bound(0.8, n, 1) + 1e-12


def _mean_and_se(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])


@pytest.mark.parametrize(
    "estimator",
    [
        RouletteLogDet(Geometric(p=0.5, n_exact_terms=2), gradient="neumann"),
        RouletteLogDet(Geometric(p=0.3, n_exact_terms=1), probe="rademacher", gradient="backprop"),
        RouletteLogDet(Poisson(rate=2.0, n_exact_terms=2), n_probes=2),
    ],
    ids=["geometric-neumann", "geometric-rademacher-backprop", "poisson-2probes"],
)
def test_roulette_is_unbiased(estimator: RouletteLogDet) -> None:
    g = _net(3, 0.9)
    x = torch.randn(4, 3)
    exact = _reference_logdet(g, x).detach()
    estimator.generator = torch.Generator().manual_seed(1)
    draws = torch.stack([estimator(g, x)[1].detach() for _ in range(1500)])
    mean, se = _mean_and_se(draws)
    assert bool(((mean - exact).abs() <= 4 * se).all()), (mean, exact, se)


def test_truncated_series_bias_within_bound() -> None:
    lip = 0.7
    g = _net(3, lip)
    x = torch.randn(4, 3)
    exact = _reference_logdet(g, x).detach()
    n = 4
    est = PowerSeriesLogDet(n_terms=n, generator=torch.Generator().manual_seed(2))
    draws = torch.stack([est(g, x)[1].detach() for _ in range(1500)])
    mean, se = _mean_and_se(draws)
    # lip bounds ||J_g||: each Linear has norm sqrt(lip), tanh is 1-Lipschitz.
    assert bool(((mean - exact).abs() <= power_series_bound(lip, n, 3) + 4 * se).all())


def _param_grads(loss: torch.Tensor, g: nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            t.reshape(-1)
            for t in torch.autograd.grad(loss, list(g.parameters()), materialize_grads=True)
        ]
    )


def test_neumann_gradient_is_per_sample_correct_deterministic() -> None:
    """1-D Rademacher probes make the estimator exact up to truncation (< 1e-13 here), so a
    weighted loss must give exactly the weighted exact gradient: the reference code used the
    first sample's upstream gradient for every sample."""
    g = _net(1, 0.5)
    x = torch.randn(6, 1, requires_grad=True)
    weights = torch.rand(6) * 3 - 1
    est = PowerSeriesLogDet(n_terms=50, probe="rademacher", gradient="neumann")
    _, ld = est(g, x)
    exact = _reference_logdet(g, x)
    assert torch.allclose(ld, exact, atol=1e-13)  # the value is a real estimate, not a surrogate
    grads = _param_grads((weights * ld).sum(), g)
    ref = _param_grads((weights * exact).sum(), g)
    assert torch.allclose(grads, ref, atol=1e-10)
    (gx_est,) = torch.autograd.grad((weights * est(g, x)[1]).sum(), x)
    (gx_ref,) = torch.autograd.grad((weights * _reference_logdet(g, x)).sum(), x)
    assert torch.allclose(gx_est, gx_ref, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["neumann", "backprop"])
def test_roulette_gradient_unbiased_with_per_sample_weights(gradient: str) -> None:
    g = _net(3, 0.8)
    x = torch.randn(4, 3)
    weights = torch.tensor([2.0, -1.0, 0.5, 0.0])
    ref = _param_grads((weights * _reference_logdet(g, x)).sum(), g)
    direction = torch.randn_like(ref)
    est = RouletteLogDet(gradient=gradient, generator=torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    draws = torch.stack(
        [_param_grads((weights * est(g, x)[1]).sum(), g) @ direction for _ in range(800)]
    )
    mean, se = _mean_and_se(draws)
    assert abs(float(mean - ref @ direction)) <= 4 * float(se)


def test_generator_makes_estimates_reproducible() -> None:
    g = _net(3, 0.9)
    x = torch.randn(4, 3)
    a = RouletteLogDet(generator=torch.Generator().manual_seed(7))(g, x)[1]
    torch.manual_seed(123)  # the global RNG must not matter
    b = RouletteLogDet(generator=torch.Generator().manual_seed(7))(g, x)[1]
    assert torch.equal(a, b)


def test_probes_have_identity_covariance() -> None:
    gen = torch.Generator().manual_seed(0)
    for kind in ("gaussian", "rademacher"):
        v = sample_probes(torch.zeros(3), 20000, kind, gen)  # type: ignore[arg-type]
        cov = v.T @ v / v.shape[0]
        assert torch.allclose(cov, torch.eye(3), atol=0.05)
    assert set(sample_probes(torch.zeros(50), 2, "rademacher", gen).unique().tolist()) == {
        -1.0,
        1.0,
    }


def test_roulette_length_survival_functions() -> None:
    geo = Geometric(p=0.4, n_exact_terms=3)
    assert geo.survival(3) == 1.0 and math.isclose(geo.survival(5), 0.6**2)
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([geo.sample(gen) for _ in range(20000)], dtype=torch.float64)
    assert abs(float((draws >= 5).double().mean()) - 0.36) < 0.02
    poi = Poisson(rate=1.5, n_exact_terms=1)
    draws = torch.tensor([poi.sample(gen) for _ in range(20000)], dtype=torch.float64)
    assert abs(float((draws >= 3).double().mean()) - poi.survival(3)) < 0.02
    assert poi.survival(200) >= 0.0


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: PowerSeriesLogDet(n_terms=0), "n_terms"),
        (lambda: PowerSeriesLogDet(n_probes=0), "n_probes"),
        (lambda: PowerSeriesLogDet(probe="uniform"), "probe"),
        (lambda: RouletteLogDet(gradient="magic"), "gradient"),
        (lambda: Geometric(p=1.0), "p must be"),
        (lambda: Poisson(rate=0.0), "rate"),
        (lambda: power_series_bound(1.0, 3, 2), "lipschitz"),
    ],
)
def test_bad_settings(factory, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        factory()


def test_shape_mismatch_of_g_is_reported() -> None:
    with pytest.raises(ValueError, match="map shape"):
        PowerSeriesLogDet()(lambda t: t[:, :1], torch.zeros(2, 3))


def test_one_series_estimator_with_a_length_distribution() -> None:
    """PowerSeriesLogDet and RouletteLogDet are SeriesLogDet with Fixed / Geometric lengths:
    the same draws give the same numbers."""
    from implicit_transforms.logdet import Fixed, Geometric, SeriesLogDet

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    a = 0.6 * a / torch.linalg.matrix_norm(a, ord=2)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)

    def g(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(v @ a.T)

    pairs = [
        (PowerSeriesLogDet(4, 2), SeriesLogDet(Fixed(4), 2, gradient="backprop")),
        (RouletteLogDet(), SeriesLogDet(Geometric(), 1, gradient="neumann")),
    ]
    for named, generic in pairs:
        named.generator = torch.Generator().manual_seed(7)
        generic.generator = torch.Generator().manual_seed(7)
        assert torch.equal(named(g, x)[1], generic(g, x)[1])
    assert PowerSeriesLogDet(4).n_terms == 4
    with pytest.raises(TypeError, match="length must be a SeriesLength"):
        SeriesLogDet(3)  # type: ignore[arg-type]
