"""Solver zoo: every solver on every known problem, per-sample behaviour, failures."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from cases import SOLVERS

from implicit_transforms import ConvergenceError, ConvergenceWarning
from implicit_transforms.solvers import (
    Anderson,
    Broyden,
    FixedPoint,
    SolverStatus,
    anderson,
    broyden,
    fixed_point,
)


def _contractive_matrix(d: int, lip: float) -> torch.Tensor:
    a = torch.randn(d, d)
    return lip * a / torch.linalg.matrix_norm(a, ord=2)


def linear_problem(batch: int = 6, d: int = 5, lip: float = 0.9):
    a = _contractive_matrix(d, lip)
    y = torch.randn(batch, d)
    root = torch.linalg.solve(torch.eye(d) + a, y.T).T
    return (lambda z: z + z @ a.T - y), y, root


def cos_problem(batch: int = 4, d: int = 3):
    # z = cos(z): the Dottie number in every coordinate.
    z0 = torch.randn(batch, d)
    return (lambda z: z - torch.cos(z)), z0, torch.full((batch, d), 0.7390851332151607)


def tanh_residual_problem(batch: int = 5, d: int = 4, lip: float = 0.99):
    a = _contractive_matrix(d, lip)
    x = torch.randn(batch, d)
    y = x + torch.tanh(x @ a.T)
    return (lambda z: z + torch.tanh(z @ a.T) - y), y, x


PROBLEMS: dict[str, Callable] = {
    "linear": linear_problem,
    "cos": cos_problem,
    "tanh-residual-lip0.99": tanh_residual_problem,
}


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_zoo_converges_to_known_root(solver: str, problem: str) -> None:
    fn, z0, root = PROBLEMS[problem]()
    res = SOLVERS[solver](fn, z0, max_iter=500, atol=1e-11, rtol=0.0)
    assert res.status is SolverStatus.SUCCESS, res.message
    assert bool(res.converged.all())
    assert float(res.residual.max()) <= 1e-11
    assert torch.allclose(res.root, root, atol=1e-9)
    assert float(torch.linalg.vector_norm(fn(res.root), dim=-1).max()) <= 1e-11
    assert res.num_evals >= int(res.iterations.max()) + 1


def test_fixed_point_iteration_bound_matches_banach() -> None:
    lip = 0.8
    fn, y, _ = linear_problem(lip=lip)
    res = fixed_point(fn, y, atol=1e-10, rtol=0.0)
    r0 = float(torch.linalg.vector_norm(fn(y), dim=-1).max())
    # ||F(z_n)|| <= lip^n ||F(z_0)||, so n <= log(tol / r0) / log(lip) (+1 for rounding).
    bound = math.ceil(math.log(1e-10 / r0) / math.log(lip)) + 1
    assert int(res.iterations.max()) <= bound


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_one_hard_sample_does_not_change_the_others(solver: str) -> None:
    d = 4
    a = _contractive_matrix(d, 0.5)
    hard = _contractive_matrix(d, 0.995)
    y = torch.randn(3, d)
    mats = torch.stack([a, a, a])

    def fn_easy(z: torch.Tensor) -> torch.Tensor:
        return z + torch.tanh(torch.einsum("bij,bj->bi", mats[: z.shape[0]], z)) - y[: z.shape[0]]

    mats_mixed = torch.stack([a, a, hard])

    def fn_mixed(z: torch.Tensor) -> torch.Tensor:
        return z + torch.tanh(torch.einsum("bij,bj->bi", mats_mixed, z)) - y

    easy = SOLVERS[solver](fn_easy, y[:2].clone(), max_iter=3000)
    mixed = SOLVERS[solver](fn_mixed, y.clone(), max_iter=3000)
    assert torch.equal(mixed.root[:2], easy.root)
    assert torch.equal(mixed.iterations[:2], easy.iterations)
    assert bool(mixed.converged.all())
    if solver == "fixed_point":
        assert int(mixed.iterations[2]) > int(mixed.iterations[:2].max())


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_any_leading_batch_shape_and_event_dims(solver: str) -> None:
    a = _contractive_matrix(6, 0.7)
    y = torch.randn(2, 3, 2, 3)  # batch (2, 3), event (2, 3)

    def fn(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(*z.shape[:-2], 6)
        return (flat + torch.sin(flat @ a.T)).reshape(z.shape) - y

    res = SOLVERS[solver](fn, y, event_dims=2)
    assert res.root.shape == y.shape
    assert res.residual.shape == (2, 3) == res.converged.shape == res.iterations.shape
    assert bool(res.converged.all())


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_float32_and_device_follow_input(solver: str, device: torch.device) -> None:
    fn, z0, root = linear_problem()
    z0 = z0.float().to(device)
    a32 = None

    def fn32(z: torch.Tensor) -> torch.Tensor:
        return fn(z.double().cpu()).float().to(device)

    res = SOLVERS[solver](fn32, z0)
    del a32
    assert res.root.dtype == torch.float32 and res.root.device.type == device.type
    assert torch.allclose(res.root.double().cpu(), root, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_no_graph_is_built(solver: str) -> None:
    w = torch.tensor(0.5, requires_grad=True)
    y = torch.randn(3, 2)
    res = SOLVERS[solver](lambda z: z + w * torch.tanh(z) - y, y)
    assert not res.root.requires_grad
    assert res.root.grad_fn is None


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_non_contractive_problem_raises_with_advice(solver: str) -> None:
    y = torch.randn(3, 2)
    # z = y + 3 sin(z) has Lip 3 > 1: fixed point diverges; the others are capped at 3 steps.
    fn = lambda z: z - 3.0 * torch.sin(z) - y  # noqa: E731
    with pytest.raises(ConvergenceError) as info:
        SOLVERS[solver](fn, y, max_iter=3)
    msg = str(info.value)
    assert "max_iter" in msg and "Lipschitz" in msg
    assert info.value.result.status is SolverStatus.MAX_ITER
    assert info.value.result.root.shape == y.shape


def test_failure_policy_warn_and_ignore() -> None:
    y = torch.randn(3, 2)
    fn = lambda z: z - 3.0 * torch.sin(z) - y  # noqa: E731
    with pytest.warns(ConvergenceWarning, match="did not reach the tolerance"):
        res = fixed_point(fn, y, max_iter=3, on_failure="warn")
    assert res.status is SolverStatus.MAX_ITER
    res = fixed_point(fn, y, max_iter=3, on_failure="ignore")
    assert not bool(res.converged.all())
    # The best iterate is returned, not the last: its residual is the smallest one seen.
    assert torch.allclose(res.residual, torch.linalg.vector_norm(fn(res.root), dim=-1))


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_nonfinite_function_is_reported(solver: str) -> None:
    y = torch.randn(3, 2)

    def fn(z: torch.Tensor) -> torch.Tensor:
        out = z + 0.5 * torch.tanh(z) - y
        out[1] = float("nan")
        return out

    with pytest.raises(ConvergenceError, match="NaN or Inf"):
        SOLVERS[solver](fn, y)
    res = SOLVERS[solver](fn, y, on_failure="ignore")
    assert res.status is SolverStatus.NONFINITE
    assert res.nonfinite.tolist() == [False, True, False]
    assert res.converged.tolist() == [True, False, True]


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_nonfinite_start_point_is_rejected(solver: str) -> None:
    z0 = torch.tensor([[0.0, float("inf")]])
    with pytest.raises(ValueError, match="z0 contains NaN or Inf"):
        SOLVERS[solver](lambda z: z, z0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": 0}, "max_iter"),
        ({"atol": -1.0}, "atol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"event_dims": 5}, "event_dims"),
        ({"on_failure": "explode"}, "on_failure"),
    ],
)
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_bad_arguments(solver: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SOLVERS[solver](lambda z: z, torch.zeros(2, 2), **kwargs)


def test_bad_solver_specific_arguments() -> None:
    z = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="history"):
        anderson(lambda t: t, z, history=0)
    with pytest.raises(ValueError, match="mixing"):
        anderson(lambda t: t, z, mixing=1.5)
    with pytest.raises(ValueError, match="line_search"):
        broyden(lambda t: t, z, line_search="wolfe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jacobian_guess"):
        broyden(lambda t: t, z, jacobian_guess=0.0)
    with pytest.raises(TypeError, match="z0"):
        fixed_point(lambda t: t, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        fixed_point(lambda t: t[:, :1], z)


def test_broyden_jacobian_sign_matters() -> None:
    """The ImpFlow paper's residual has Jacobian -(I + J_gz): the initial guess must be -1."""
    fn, y, root = tanh_residual_problem()
    paper_form = lambda z: -fn(z)  # noqa: E731
    ok = broyden(paper_form, y, jacobian_guess=-1.0)
    assert torch.allclose(ok.root, root, atol=1e-8)
    # With the wrong sign the first steps go uphill until the secant updates flip H: more work.
    wrong = broyden(paper_form, y, jacobian_guess=1.0, on_failure="ignore")
    assert wrong.sample_evals > ok.sample_evals


def test_broyden_line_search_globalises() -> None:
    """Secant steps overshoot on the flat tails of tanh; backtracking keeps them in check."""
    y = torch.tensor([[0.3], [-0.2]])
    fn = lambda z: torch.tanh(z) - torch.tanh(y)  # noqa: E731
    z0 = torch.full_like(y, 2.0)
    plain = broyden(fn, z0, line_search="none", on_failure="ignore")
    searched = broyden(fn, z0, line_search="armijo")
    assert not bool(plain.converged.all())
    assert torch.allclose(searched.root, y, atol=1e-8)


def test_faster_solvers_need_fewer_iterations_near_lip_one() -> None:
    fn, y, _ = tanh_residual_problem(batch=8, d=8, lip=0.99)
    its = {
        name: float(s(fn, y, max_iter=5000).iterations.double().mean())
        for name, s in SOLVERS.items()
    }
    assert its["broyden"] < its["fixed_point"]
    assert its["anderson"] < its["fixed_point"]


def test_config_classes_call_the_functions() -> None:
    fn, y, root = linear_problem()
    for cfg in (FixedPoint(max_iter=500), Anderson(history=3), Broyden(history=4)):
        res = cfg(fn, y, event_dims=1)
        assert torch.allclose(res.root, root, atol=1e-8), cfg
    with pytest.raises(ConvergenceError):
        FixedPoint(max_iter=1)(fn, y)


def test_result_is_frozen_and_readable() -> None:
    fn, y, _ = linear_problem()
    res = fixed_point(fn, y)
    with pytest.raises(AttributeError):
        res.root = y  # type: ignore[misc]
    assert "every sample converged" in res.message
    assert res.mean_iterations > 0


@pytest.mark.gpu
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_cuda_smoke(solver: str) -> None:
    _fn, y, _root = linear_problem()
    a = _contractive_matrix(5, 0.9).cuda()
    yc = y.cuda()
    res = SOLVERS[solver](lambda z: z + z @ a.T - yc, yc)
    assert res.root.is_cuda and bool(res.converged.all())


# -- dtype-aware defaults and failures only through the policy ---------------------------


def _stressed_impflow_residual(dtype: torch.dtype, d: int = 16, batch: int = 64):
    """The forward residual of an ImpFlow block whose layers sit at coeff 0.99, in ``dtype``."""
    from implicit_transforms.blocks import impflow_block

    block = impflow_block(d, [64, 64], coeff=0.99, activation="sin")
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(10.0)
    block = block.to(dtype).eval()
    x = 4 * torch.randn(batch, d, dtype=dtype)
    with torch.no_grad():
        target = x + block.net_x(x)
    return (lambda z: z + block.net_z(z) - target), target


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_float32_defaults_are_reachable_on_a_stressed_block(solver: str) -> None:
    fn, z0 = _stressed_impflow_residual(torch.float32)
    with torch.no_grad():
        res = SOLVERS[solver](fn, z0, max_iter=5000)  # raises unless every sample converged
    assert res.status is SolverStatus.SUCCESS


@pytest.mark.parametrize("policy", ["raise", "warn", "ignore"])
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_float32_failures_go_through_the_policy_only(solver: str, policy: str) -> None:
    fn, z0 = _stressed_impflow_residual(torch.float32)
    with torch.no_grad():
        if policy == "raise":
            with pytest.raises(ConvergenceError):
                SOLVERS[solver](fn, z0, max_iter=2, atol=0.0, rtol=1e-9)
            return
        if policy == "warn":
            with pytest.warns(ConvergenceWarning):
                res = SOLVERS[solver](fn, z0, max_iter=2, rtol=1e-9, on_failure="warn")
        else:
            res = SOLVERS[solver](fn, z0, max_iter=2, rtol=1e-9, on_failure="ignore")
    assert res.status is SolverStatus.MAX_ITER


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("regularization", [None, 0.0])
def test_anderson_never_raises_a_linear_algebra_error(
    dtype: torch.dtype, regularization: float | None
) -> None:
    # 1-D events: every residual history is collinear, so the unregularised Gram matrix is
    # exactly singular from the second iteration on; float32 makes 1e-8 vanish as well.
    y = torch.randn(32, 1, dtype=dtype)
    fn = lambda z: z + 0.9 * torch.sin(z) - y  # noqa: E731
    fn2, z0 = _stressed_impflow_residual(dtype, d=4, batch=16)
    for f, start in ((fn, y), (fn2, z0)):
        with torch.no_grad():
            res = anderson(f, start, regularization=regularization, on_failure="ignore")
        if regularization is None:  # the dtype's default keeps the least squares solvable
            assert res.status is SolverStatus.SUCCESS, res.message
        else:  # singular systems fall back to plain steps: slower, never an exception
            assert res.status in (SolverStatus.SUCCESS, SolverStatus.MAX_ITER)
            assert float(res.residual.max()) < float(
                torch.linalg.vector_norm(f(start), dim=-1).max()
            )


def test_default_tolerances_follow_the_dtype() -> None:
    from implicit_transforms.solvers import default_regularization, default_tolerance

    assert default_tolerance(torch.float64) == pytest.approx(torch.finfo(torch.float64).eps ** 0.75)
    assert 1e-12 < default_tolerance(torch.float64) < 1e-11
    assert 5e-6 < default_tolerance(torch.float32) < 1e-5
    assert default_regularization(torch.float32) > torch.finfo(torch.float32).eps * 100
    assert default_regularization(torch.float64) < 1e-7


# -- work is counted in evaluations ------------------------------------------------------


def test_result_counts_sample_evaluations() -> None:
    fn, y, _ = linear_problem(batch=7)
    for name, solve in SOLVERS.items():
        res = solve(fn, y)
        assert res.sample_evals == 7 * res.num_evals, name
        assert "sample evaluations" in res.message


def _hard_residual(d: int = 64, batch: int = 64):
    """``z + sin(A z) = y`` with every eigenvalue of ``A`` in [-0.99, -0.79]: the iteration
    ``z <- y - sin(A z)`` oscillates, the hardest case for quasi-Newton steps. Seeded."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    a = q @ torch.diag(-0.99 + 0.2 * torch.rand(d, generator=gen)) @ q.T
    y = 3 * torch.randn(batch, d, generator=gen)
    return (lambda z: z + torch.sin(z @ a.T) - y), y


def test_broyden_default_needs_far_fewer_evaluations_than_a_monotone_line_search() -> None:
    fn, y = _hard_residual()
    default = broyden(fn, y, atol=1e-10, rtol=1e-10, max_iter=300)
    armijo = broyden(fn, y, atol=1e-10, rtol=1e-10, max_iter=300, line_search="armijo")
    assert default.status is SolverStatus.SUCCESS and armijo.status is SolverStatus.SUCCESS
    # Measured 48 vs 153 batched evaluations on this problem.
    assert 2.5 * default.sample_evals < armijo.sample_evals
    assert default.num_evals == int(default.iterations.max()) + 1  # one evaluation per step


def test_broyden_rejects_a_nonfinite_trial_point_and_recovers() -> None:
    fn, y, root = tanh_residual_problem(batch=3)
    calls = {"n": 0}

    def flaky(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = fn(z)
        if calls["n"] == 4:  # one quasi-Newton trial point of sample 0 lands on NaN
            out = out.clone()
            out[0] = float("nan")
        return out

    res = broyden(flaky, y, atol=1e-11, rtol=0.0)
    assert res.status is SolverStatus.SUCCESS and not bool(res.nonfinite.any())
    assert torch.allclose(res.root, root, atol=1e-9)
    assert res.num_evals == int(res.iterations.max()) + 1  # the rescue cost no evaluation
    # A sample whose plain H_0 step already lands on NaN has nothing to fall back on: it is
    # reported as non-finite at once, not retried.
    target = torch.tensor([[2.0]])
    domain = lambda z: torch.where(z.abs() < 3, z - target, float("nan"))  # noqa: E731
    lost = broyden(domain, torch.zeros(1, 1), jacobian_guess=0.25, on_failure="ignore")
    assert lost.status is SolverStatus.NONFINITE and lost.num_evals == 2


def test_broyden_needs_fewer_evaluations_than_fixed_point_near_lip_one() -> None:
    fn, y = _hard_residual(d=16)
    fp = fixed_point(fn, y, atol=1e-5, rtol=1e-5, max_iter=10000)
    br = broyden(fn, y, atol=1e-5, rtol=1e-5, max_iter=300)
    assert 3 * br.sample_evals <= fp.sample_evals


# -- configurations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: Anderson(regularization=-1.0), "regularization"),
        (lambda: Anderson(history=0), "history"),
        (lambda: Broyden(max_backtracks=-1), "max_backtracks"),
        (lambda: Broyden(max_growth=0.5), "max_growth"),
        (lambda: Broyden(line_search="wolfe"), "line_search"),  # type: ignore[arg-type]
        (lambda: FixedPoint(max_iter=0), "max_iter"),
        (lambda: FixedPoint(on_failure="explode"), "on_failure"),  # type: ignore[arg-type]
        (lambda: FixedPoint(atol=0.0, rtol=0.0), "could never stop"),
    ],
)
def test_configs_validate_when_built(config, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        config()


def test_every_solver_argument_is_a_config_field() -> None:
    import inspect

    for cfg in (FixedPoint(), Anderson(), Broyden()):
        call_inputs = {"fn", "z0", "event_dims", "warm_start"}
        params = set(inspect.signature(type(cfg)._function).parameters) - call_inputs
        assert params == set(cfg.options()), type(cfg).__name__
    assert Anderson(regularization=1e-3).regularization == 1e-3
    assert Broyden(max_backtracks=3).replace(on_failure="warn").on_failure == "warn"


@pytest.mark.parametrize("adjoint", [FixedPoint(max_iter=1000), Anderson(), Broyden()])
def test_every_solver_takes_a_warm_start_and_uses_only_what_it_understands(adjoint) -> None:
    """The solver protocol: ``warm_start`` is accepted by every solver; Broyden starts from an
    inverse-Jacobian state, the others ignore it, and nobody asks which solver it has."""
    from implicit_transforms.implicit import solve_implicit

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = 0.8 * a / torch.linalg.matrix_norm(a, ord=2)
    y = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return z + torch.tanh(z @ a.T) - y

    z, forward = solve_implicit(fn, y.detach(), solver=Broyden(), adjoint_solver=adjoint)
    assert forward.warm_state is not None
    (g,) = torch.autograd.grad(z.sum(), y)
    # Reference: the exact implicit gradient (I + J)^{-T} 1 per sample.
    zz = z.detach()
    jac = torch.eye(5, dtype=torch.float64) + (1 - torch.tanh(zz @ a.T) ** 2)[:, :, None] * a
    ref = torch.linalg.solve(jac.mT, torch.ones(7, 5, 1, dtype=torch.float64))[..., 0]
    assert torch.allclose(g, ref, atol=1e-8)
    # A state of the wrong shape (another problem's) is ignored, not an error.
    other = broyden(lambda v: v - 1.0, torch.zeros(2, 3, dtype=torch.float64)).warm_state
    again = adjoint(lambda v: v - 1.0, torch.zeros(7, 5, dtype=torch.float64), warm_start=other)
    assert bool(again.converged.all())
