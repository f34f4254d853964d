"""A session: the resolved config, the data splits and the flow, on one device and dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nflows.flows import Flow

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.data import DataSplits, load_dataset
from implicit_transforms.cli.models import build_flow

__all__ = ["Session", "select_device"]


def select_device(name: str) -> torch.device:
    """``"auto"`` gives CUDA when present, else CPU; a CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device: cannot use {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but CUDA is not available here")
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are present"
        )
    return device


@dataclass
class Session:
    """Everything a run trains or evaluates, built deterministically from a config.

    Attributes:
        cfg: the resolved config.
        splits: the data (float64, CPU, data units).
        flow: the model on ``device`` in ``dtype``.
        device: where the model lives.
        dtype: the model's floating-point type.
        generator: the randomness of the stochastic log-det estimators (on ``device``).
    """

    cfg: TrainConfig
    splits: DataSplits
    flow: Flow
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator

    @classmethod
    def create(cls, cfg: TrainConfig, device: str | None = None) -> Session:
        """Load the data and build the flow; ``device`` overrides ``cfg.device``."""
        cfg = cfg.resolved()
        dev = select_device(device or cfg.device)
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        splits = load_dataset(
            cfg.dataset,
            n_samples=cfg.n_samples,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.data_seed,
        )
        generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        flow = build_flow(cfg, splits.mean, splits.std, generator)
        flow.to(device=dev, dtype=dtype)
        return cls(cfg, splits, flow, dev, dtype, generator)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor on the model's device and dtype."""
        return x.to(device=self.device, dtype=self.dtype)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.flow.parameters() if p.requires_grad)
