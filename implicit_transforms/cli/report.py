"""The final report of a run: test likelihood (bits/dim for images), round-trip error, solver
work, certified Lipschitz bound, the figure."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

import implicit_transforms
from implicit_transforms.blocks import EXACT_LOGDET_MAX_DIM
from implicit_transforms.cli.data import KNOWN_ENTROPY_BITS
from implicit_transforms.cli.evaluation import (
    SolveLog,
    evaluation_logdets,
    is_exact,
    lipschitz_bound,
    log_prob,
    nll_summary,
    reconstruction_error,
    refine_spectral_norms,
    sample,
    split_nll,
)
from implicit_transforms.cli.figures import plot_density_figure, plot_image_figure
from implicit_transforms.cli.rundir import RunDir, json_ready, json_text
from implicit_transforms.cli.session import Session
from implicit_transforms.cli.training import flow_input
from implicit_transforms.images import summarize_bits
from implicit_transforms.plugins.nflows import level_shapes

__all__ = ["load_weights", "write_image_report", "write_report"]


def load_weights(session: Session, run: RunDir, which: str = "best") -> dict[str, Any]:
    """Load ``best.pt`` (weights chosen on validation) or the latest ``checkpoint.pt``."""
    path = run.best if which == "best" else run.checkpoint
    run.require(path)
    state = torch.load(path, map_location=session.device, weights_only=False)
    session.flow.load_state_dict(state["model"])
    if session.model.dequantizer is not None:
        session.model.dequantizer.load_state_dict(state["dequantizer"])
    return {"step": state["step"], "val_nll": state.get("val_nll", state.get("best_val_nll"))}


def _common(session: Session) -> dict[str, Any]:
    return {
        "lipschitz_bound": lipschitz_bound(session.flow),
        "parameters": session.num_parameters,
        "device": str(session.device),
        "dtype": session.cfg.dtype,
        "versions": {
            "implicit_transforms": implicit_transforms.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def write_image_report(
    session: Session,
    run: RunDir,
    *,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate the loaded weights of an image model on the **test** split; write
    ``report.json`` and ``figure.png`` (a grid of test images next to a grid of samples).

    Test bits/dim is the dequantisation bound of every test image with one seeded noise draw,
    its standard error over images; round trips use the first (at most) 500 test images.
    """
    cfg, images, flow = session.cfg, session.images, session.flow
    if images is None or cfg.scales is None:
        raise ValueError("write_image_report needs an image session")
    t0 = time.perf_counter()
    refine_spectral_norms(session.model)
    fwd, inv = SolveLog(), SolveLog()
    nll = split_nll(session, "test", cfg.eval_batch_size, cfg.seed + 104_729, fwd)
    dims = images.dims
    bits = summarize_bits(nll / (dims * math.log(2)))
    m = min(len(images.test), 500)
    k = session.to_model(images.test[:m])
    x = flow_input(session, k, session.noise(tuple(k.shape), cfg.seed + 104_729))
    recon = reconstruction_error(flow, x, cfg.eval_batch_size, SolveLog(), inv)
    gen = torch.Generator(device=session.device).manual_seed(cfg.seed + 1)
    samples = sample(flow, 64, dims, cfg.eval_batch_size, gen, inv)
    shapes = level_shapes(images.shape, cfg.scales)
    largest = max(math.prod(s) for s in shapes)
    # Blocks on events of at most 64 numbers use the exact log-det in evaluation, larger ones
    # their training estimator.
    exact = largest <= EXACT_LOGDET_MAX_DIM or cfg.logdet == "exact"
    report: dict[str, Any] = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "scales": cfg.scales,
        "blocks_per_scale": cfg.blocks,
        "fc_blocks": cfg.fc_blocks,
        "image_shape": list(images.shape),
        "levels": images.levels,
        "n_train": len(images.train),
        "n_validation": len(images.validation),
        "n_test": len(images.test),
        "test": {
            "bits_per_dim": bits.mean,
            "bits_per_dim_stderr": bits.stderr,
            "nll_nats": float(nll.mean()),
            "convention": f"-(log p(x) - log q(u|k) - D log {images.levels}) / (D ln 2) per "
            f"image, D = {dims}, {cfg.dequantization} dequantisation, one draw per image",
            "nll_exact": exact,
            "logdet": "exact" if exact else f"stochastic {cfg.logdet}",
        },
        "reconstruction_error": {"max": float(recon.max()), "mean": float(recon.mean()), "n": m},
        "solver_iterations": {
            "forward_mean": fwd.mean,
            "forward_max": fwd.max,
            "inverse_mean": inv.mean,
            "inverse_max": inv.max,
        },
        **_common(session),
        **(extra or {}),
    }
    finite = torch.isfinite(samples.flatten(1)).all(dim=1)
    report["samples_nonfinite"] = int((~finite).sum())
    try:
        plot_image_figure(
            run.figure,
            images.test[:64].double() / (images.levels - 1),
            samples[finite].double().clamp(0, 1).cpu(),
            title=f"{cfg.model} ({cfg.scales} scales x {cfg.blocks} blocks) on {cfg.dataset}: "
            f"test {bits.mean:.3f} bits/dim",
        )
        report["figure"] = str(run.figure)
    except ImportError as err:
        report["figure"] = None
        log(f"note: no figure written ({err})")
    report["eval_time_s"] = time.perf_counter() - t0
    report = json_ready(report)
    run.report.write_text(json_text(report))
    return report


def write_report(
    session: Session,
    run: RunDir,
    *,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate the loaded weights on the **test** split and write ``report.json`` and
    ``figure.png``.

    The spectral norms are refined to 1e-6 first, and the certified Lipschitz bound of every
    network is checked (``lipschitz_bound`` in the report; below 1 means invertible). Image
    sessions get :func:`write_image_report`.

    ``test.nll_exact`` says whether the test NLL used the exact log-det: the blocks estimate
    it (a 30-term power series, see :func:`~implicit_transforms.cli.models.build_flow`) for
    ``D > 64`` unless ``--logdet exact``; ``test.logdet`` names the estimator. Numbers that
    are not finite or do not exist (the standard error of one test row) are ``null``.
    """
    if session.is_image:
        return write_image_report(session, run, extra=extra, log=log)
    cfg, splits, flow = session.cfg, session.splits, session.flow
    if splits is None:
        raise ValueError("write_report needs data")
    t0 = time.perf_counter()
    refine_spectral_norms(flow)
    fwd, inv = SolveLog(), SolveLog()
    test = session.to_model(splits.test)
    logp = log_prob(flow, test, cfg.eval_batch_size, fwd)
    estimators = evaluation_logdets(flow, splits.features)
    exact = is_exact(estimators)
    inexact = sorted({repr(e) for e in estimators if not is_exact([e])})
    test_summary: dict[str, Any] = {
        **nll_summary(logp, splits.features),
        "nll_exact": exact,
        "logdet": "exact"
        if exact
        else f"stochastic estimate for D = {splits.features} > {EXACT_LOGDET_MAX_DIM}: "
        + ", ".join(inexact),
    }
    recon = reconstruction_error(flow, test, cfg.eval_batch_size, SolveLog(), inv)
    gen = torch.Generator(device=session.device).manual_seed(cfg.seed + 1)
    samples = sample(flow, cfg.figure_samples, splits.features, cfg.eval_batch_size, gen, inv)
    report: dict[str, Any] = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "blocks": cfg.blocks,
        "features": splits.features,
        "n_train": int(splits.train.shape[0]),
        "n_validation": int(splits.validation.shape[0]),
        "n_test": int(splits.test.shape[0]),
        "test": test_summary,
        "data_entropy_bits": KNOWN_ENTROPY_BITS.get(cfg.dataset),
        "reconstruction_error": {"max": float(recon.max()), "mean": float(recon.mean())},
        "solver_iterations": {
            "forward_mean": fwd.mean,
            "forward_max": fwd.max,
            "inverse_mean": inv.mean,
            "inverse_max": inv.max,
        },
        **_common(session),
        **(extra or {}),
    }
    finite = torch.isfinite(samples).all(dim=1)
    report["samples_nonfinite"] = int((~finite).sum())
    try:
        plot_density_figure(
            run.figure,
            splits.train,
            samples[finite].double().cpu(),
            lambda grid: log_prob(flow, session.to_model(grid), cfg.eval_batch_size).double().cpu(),
            title=f"{cfg.model} ({cfg.blocks} blocks) on {cfg.dataset}: "
            f"test {report['test']['nll_bits']:.3f} bits",
            grid_size=cfg.figure_grid,
        )
        report["figure"] = str(run.figure)
    except ImportError as err:
        report["figure"] = None
        log(f"note: no figure written ({err})")
    report["eval_time_s"] = time.perf_counter() - t0
    report = json_ready(report)
    run.report.write_text(json_text(report))
    return report
