"""Load what the command line trained: :func:`load_run` and the reader behind ``score``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from nflows.flows import Flow
from torch import Tensor

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.evaluation import log_prob, refine_spectral_norms
from implicit_transforms.cli.models import build_flow, build_image_flow
from implicit_transforms.cli.rundir import RunDir
from implicit_transforms.cli.session import select_device

__all__ = ["load_run", "run_config", "score_rows"]

_STANDARDIZE_MEAN = "_transform._transforms.0.mean"


def run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved settings stored in ``run_dir/config.json``."""
    run = RunDir(Path(run_dir))
    run.require(run.config)
    stored = TrainConfig.load(run.config)
    if stored.warmup is not None and stored.warmup > stored.steps:
        # Written before a warm-up longer than the run was refused; loading does not depend on
        # the schedule.
        stored = dataclasses.replace(stored, warmup=stored.steps)
    return stored.resolved()


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Flow:
    r"""The trained flow of a run directory written by ``implicit-transforms train``.

    For vector data the flow is the nflows ``Flow`` the trainer built, standardisation
    included (its first layer is the fixed map ``(x - mean) / std`` with the training
    statistics), so ``flow.log_prob(x)`` is ``log p(x)`` in nats **in the units of the data**
    and ``flow.sample(n)`` returns data-unit samples. It is returned in evaluation mode (the
    exact log-det for ``D <= 64``), in the run's dtype, with its spectral norms refined as the
    trainer's report refines them, so that ``-flow.log_prob(test).mean()`` is the report's
    ``test.nll_nats`` (``nll_bits`` is that divided by ``ln 2``). Vector runs need only the
    run directory, not the data. For image runs the flow acts on dequantised pixels in
    ``[0, 1]`` (the density of the data set is the dequantisation bound of ``report.json``,
    not this flow's ``log_prob``); building it reads the image data set's shape.

    Args:
        run_dir: a directory written by ``implicit-transforms train``.
        checkpoint: ``"best"`` (``best.pt``, chosen on validation) or ``"last"``
            (``checkpoint.pt``, the latest state).
        device: where to put the flow (``"cpu"``, ``"cuda"``, ``"auto"``).
        dtype: ``torch.float32`` or ``torch.float64`` (default: the run's ``--dtype``); inputs
            to ``log_prob`` must have this dtype (``torch.as_tensor(x, dtype=...)``).

    Returns:
        The nflows ``Flow`` (``log_prob(x)``, ``sample(n)``), in evaluation mode.

    Raises:
        ValueError: ``run_dir`` is not a run directory, or ``checkpoint`` is neither.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run = RunDir(Path(run_dir))
    cfg = run_config(run_dir)
    path = run.best if checkpoint == "best" else run.checkpoint
    run.require(path)
    dev = select_device(str(device))
    if dtype is None:
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    state = torch.load(path, map_location=dev, weights_only=False)["model"]
    if cfg.is_image:
        flow = build_image_flow(cfg, _image_shape(run, cfg))
    else:
        if _STANDARDIZE_MEAN not in state:
            raise ValueError(f"{str(path)!r} does not hold a vector flow written by `train`")
        d = int(state[_STANDARDIZE_MEAN].shape[0])
        # The statistics are placeholders: the checkpoint's buffers replace them.
        flow = build_flow(
            cfg, torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        )
    flow.to(device=dev, dtype=dtype)
    flow.load_state_dict(state)
    refine_spectral_norms(flow)
    flow.eval()
    return flow


def _image_shape(run: RunDir, cfg: TrainConfig) -> tuple[int, int, int]:
    if run.report.is_file():
        shape = json.loads(run.report.read_text()).get("image_shape")
        if shape:
            c, h, w = (int(s) for s in shape)
            return c, h, w
    from implicit_transforms.images import load_image_dataset

    images = load_image_dataset(cfg.dataset, data_root=cfg.data_root, seed=cfg.data_seed)
    c, h, w = images.shape
    return c, h, w


def score_rows(flow: Flow, x: Tensor, batch_size: int = 2000) -> Tensor:
    """``log p(x)`` per row (nats, data units) of ``x: (N, D)``, in batches, shape ``(N,)``.

    Raises ``ValueError`` for a shape other than ``(N, D)`` with the flow's ``D``, or a
    non-finite value (naming its row).
    """
    mean = flow._transform._transforms[0].mean
    d = int(mean.shape[0])
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"the input must have shape (N, {d}) for this run, got {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"the input has {int(bad.sum())} NaN/Inf value(s), the first in row {row}")
    with torch.no_grad():
        return log_prob(flow, x.to(device=mean.device, dtype=mean.dtype), batch_size)
