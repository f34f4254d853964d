"""The maths of the monotone (Cayley) block, checked against autograd.

The registry tests of ``test_blocks.py`` (round trips, log-det against ``slogdet``, gradients,
gradcheck, state dict) run on the ``monotone-*`` cases of ``cases.py``; this module checks what
is particular to the Cayley operator: its defining equations, its Jacobian formula, its
odd-power series, the range of its slopes and its solves.
"""

from __future__ import annotations

import math

import pytest
import torch

from implicit_transforms import ConvergenceError, MonotoneBlock
from implicit_transforms.blocks import monotone_block
from implicit_transforms.lipschitz import LipschitzMLP, certify
from implicit_transforms.logdet import ExactLogDet
from implicit_transforms.solvers import Broyden, FixedPoint

SQRT2 = math.sqrt(2.0)


def _block(d: int = 3, context: int | None = None, **changes) -> MonotoneBlock:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    block = monotone_block(d, [16], context_features=context, **changes).double()
    block.eval()
    return block


def _jacobian_g(block: MonotoneBlock, w: torch.Tensor) -> torch.Tensor:
    """``J_g(w)`` per sample, ``(B, D, D)``, by autograd on the network alone."""
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda t: block.net(t[None])[0], wi) for wi in w]
    )


def _jacobian_map(block: MonotoneBlock, x: torch.Tensor) -> torch.Tensor:
    """``dy/dx`` per sample by autograd through the block (its implicit gradients)."""
    return torch.stack(
        [
            torch.autograd.functional.jacobian(lambda t: block.forward_map(t[None])[0], xi)
            for xi in x
        ]
    )


def test_defining_equations_hold() -> None:
    """``w + g(w) = sqrt(2) x`` and ``y = sqrt(2) w - x``; backwards ``w - g(w) = sqrt(2) y``."""
    block = _block()
    x = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        y = block.forward_map(x)
        w = (x + y) / SQRT2
        assert torch.allclose(w + block.net(w), SQRT2 * x, atol=1e-10)
        assert torch.allclose(w - block.net(w), SQRT2 * y, atol=1e-10)  # = y by the same w
        x_back = block.inverse_map(y)
    assert torch.allclose(x_back, x, atol=1e-10)


def test_jacobian_is_the_cayley_formula() -> None:
    """``dy/dx = (I + J_g(w))^{-1} (I - J_g(w))`` against the autograd Jacobian of the block."""
    block = _block()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = block.forward_map(x).detach()
    jg = _jacobian_g(block, (x + y) / SQRT2)
    eye = torch.eye(3, dtype=torch.float64)
    formula = torch.linalg.solve(eye + jg, eye - jg)
    assert torch.allclose(_jacobian_map(block, x), formula, atol=1e-9)
    # and the inverse's: (I - J_g(w))^{-1} (I + J_g(w)) at the same w
    inv = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda t: block.inverse_map(t[None])[0], yi)
            for yi in y
        ]
    )
    assert torch.allclose(inv, torch.linalg.solve(eye - jg, eye + jg), atol=1e-9)


def test_logdet_is_the_odd_power_series() -> None:
    """``log det(I - J) - log det(I + J) = -2 sum_{k odd} tr(J^k) / k``: even powers cancel."""
    block = _block()
    x = torch.randn(4, 3, dtype=torch.float64)
    y, ld = block.forward_and_logdet(x)
    jg = _jacobian_g(block, (x + y.detach()) / SQRT2)
    series = torch.zeros(4, dtype=torch.float64)
    even = torch.zeros(4, dtype=torch.float64)
    power = jg.clone()
    for k in range(1, 400):
        trace = power.diagonal(dim1=-2, dim2=-1).sum(-1)
        # log det(I - J) = -sum_k tr(J^k)/k; log det(I + J) = sum_k (-1)^(k+1) tr(J^k)/k
        term = -trace / k - (-1) ** (k + 1) * trace / k
        if k % 2 == 0:
            even = even + term
        else:
            series = series - 2 * trace / k
            assert torch.allclose(term, -2 * trace / k)
        power = power @ jg
    assert torch.equal(even, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(ld.detach(), series, atol=1e-8)


def test_slopes_lie_between_the_cayley_bounds() -> None:
    """Singular values of ``dy/dx`` in ``[(1 - L)/(1 + L), (1 + L)/(1 - L)]``, ``L = Lip(g)``:
    wider than a residual block's ``[1 - L, 1 + L]``."""
    block = _block(coeff=0.9)
    lip = certify(block.net).bound
    x = 2 * torch.randn(8, 3, dtype=torch.float64)
    sv = torch.linalg.svdvals(_jacobian_map(block, x))
    assert float(sv.min()) >= (1 - lip) / (1 + lip) - 1e-9
    assert float(sv.max()) <= (1 + lip) / (1 - lip) + 1e-9


def test_one_block_is_steeper_than_a_residual_block_can_be() -> None:
    """In 1-D, where ``g`` is linear with slope ``c`` (here ``c = -0.95^2`` for ``w > 0``),
    the block's slope is ``(1 - c)/(1 + c)`` (19.5), far beyond a residual block's ``1 + |c|``."""
    net = LipschitzMLP(1, [1], coeff=0.95, activation="elu")
    block = MonotoneBlock(net, logdet_eval=ExactLogDet()).double()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.net.layers[0].weight.fill_(1.0)  # type: ignore[index]
        block.net.layers[-1].weight.fill_(-1.0)  # type: ignore[index]
    block.eval()
    x = torch.tensor([[0.1], [0.3]], dtype=torch.float64)  # w > 0: the ELU is linear there
    y, ld = block.forward_and_logdet(x)
    slope = _jacobian_map(block, x)[:, 0, 0]
    c = _jacobian_g(block, (x + y.detach()) / SQRT2)[:, 0, 0]
    assert torch.allclose(c, torch.full_like(c, -(0.95**2)), atol=1e-6)
    assert torch.allclose(slope, (1 - c) / (1 + c), atol=1e-9)
    assert float(slope.min()) > 19
    assert torch.allclose(ld, slope.log(), atol=1e-9)


def test_logdet_pair_needs_no_solve() -> None:
    block = _block()
    x = torch.randn(5, 3, dtype=torch.float64)
    y, ld = block.forward_and_logdet(x)
    calls = block.last_solve
    block.solver = Broyden(max_iter=1)  # a solve now would fail loudly
    assert torch.allclose(block.logdet_pair(x, y), ld, atol=1e-12)
    assert torch.allclose(block.inv.logdet_pair(y, x), -ld, atol=1e-12)
    assert block.last_solve is calls


def test_each_direction_is_one_solve_with_its_own_report() -> None:
    block = _block()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = block.forward_map(x)
    forward = block.last_solve
    assert forward is not None and bool(forward.converged.all())
    block.inverse_map(y)
    assert block.last_solve is not forward and bool(block.last_solve.converged.all())  # type: ignore[union-attr]


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_nonconvergence_raises_in_both_directions(direction: str) -> None:
    block = _block(solver=Broyden(max_iter=1))
    x = 3 * torch.randn(4, 3, dtype=torch.float64)
    fn = block.forward_and_logdet if direction == "forward" else block.inverse_and_logdet
    with pytest.raises(ConvergenceError, match="max_iter"):
        fn(x)


def test_any_solver_works() -> None:
    """The forward residual has Jacobian ``I + J_g``, the inverse ``I - J_g``: both contractive
    fixed-point problems, so the plain iteration converges too."""
    block = _block(solver=FixedPoint(max_iter=2000))
    x = torch.randn(4, 3, dtype=torch.float64)
    x_back = block.inverse_map(block.forward_map(x))
    assert torch.allclose(x_back, x, atol=1e-9)


def test_training_estimator_is_unbiased() -> None:
    """Roulette on both terms: the mean over many samples within 4 standard errors of exact."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    block = monotone_block(6, [16], coeff=0.9, generator=gen).double()
    x = torch.randn(1, 6, dtype=torch.float64).expand(4000, 6)
    block.train()
    with torch.no_grad():
        _, noisy = block.forward_and_logdet(x)
    block.eval()
    with torch.no_grad():
        _, exact = block.forward_and_logdet(x[:1])
    err = float(noisy.mean() - exact[0])
    se = float(noisy.std()) / math.sqrt(noisy.numel())
    assert abs(err) < 4 * se, (err, se)
    assert float(noisy.std()) > 0  # really stochastic


def test_training_gradient_matches_exact_gradient() -> None:
    """The Neumann gradient of the roulette log-det, averaged over many draws, is the exact
    gradient of the log-det (through the network and through ``w``)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    noisy_block = monotone_block(4, [8], coeff=0.9, generator=gen, n_probes=4).double()
    exact_block = monotone_block(4, [8], coeff=0.9, logdet_train=ExactLogDet()).double()
    exact_block.load_state_dict(noisy_block.state_dict())
    x = torch.randn(1, 4, dtype=torch.float64).expand(3000, 4)

    def grads(block: MonotoneBlock) -> torch.Tensor:
        block.train()
        block.zero_grad()
        block.forward_and_logdet(x)[1].mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in block.parameters()])  # type: ignore[union-attr]

    exact, noisy = grads(exact_block), grads(noisy_block)
    assert float((noisy - exact).norm()) < 0.1 * float(exact.norm())


def test_bad_inputs_name_the_argument() -> None:
    block = _block()
    with pytest.raises(ValueError, match=r"MonotoneBlock: x must have shape \(\*, 3\)"):
        block.forward_and_logdet(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have shape"):
        block.inverse_map(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have the shape of x"):
        block.logdet_pair(
            torch.randn(2, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        )
    with pytest.raises(TypeError, match="float32 or float64"):
        block.forward_map(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="LipschitzNet"):
        MonotoneBlock(torch.nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"coeff must be in \(0, 1\)"):
        monotone_block(3, [8], coeff=1.0)
    with pytest.raises(ValueError, match="pass a context"):
        _block(context=2).forward_and_logdet(torch.randn(2, 3, dtype=torch.float64))


def test_empty_batch_passes_through() -> None:
    block = _block()
    y, ld = block.forward_and_logdet(torch.zeros(0, 3, dtype=torch.float64))
    x, ld_inv = block.inverse_and_logdet(y)
    assert y.shape == x.shape == (0, 3) and ld.shape == ld_inv.shape == (0,)
