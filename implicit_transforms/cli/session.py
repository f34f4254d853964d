"""A session: the resolved config, the data splits and the flow, on one device and dtype."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from nflows.flows import Flow
from torch import Tensor

from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.cli.data import DataSplits, load_dataset
from implicit_transforms.cli.distributed import World
from implicit_transforms.cli.models import DensityModel, build_flow, build_image_flow
from implicit_transforms.images import ImageData, VariationalDequantizer, load_image_dataset

__all__ = ["Session", "select_device"]

SPLITS = ("train", "validation", "test")


def select_device(name: str, world: World | None = None) -> torch.device:
    """``"auto"`` gives CUDA when present, else CPU; a CUDA request without CUDA is an error.

    In a distributed run on CUDA, ``"auto"`` and ``"cuda"`` mean this process's GPU
    ``cuda:LOCAL_RANK``.
    """
    world = world or World()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.distributed and torch.cuda.is_available():
        name = f"cuda:{world.local_rank}"
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
        splits: vector data (float64, CPU, data units), or ``None`` for images.
        images: image data (uint8 pixels, CPU), or ``None`` for vectors.
        flow: the nflows model on ``device`` in ``dtype``.
        model: the training objective around ``flow`` (and the variational dequantiser).
        device: where the model lives.
        dtype: the model's floating-point type.
        generator: the randomness of the stochastic log-det estimators (on ``device``).
        world: this process's rank among the training processes.
    """

    cfg: TrainConfig
    splits: DataSplits | None
    images: ImageData | None
    flow: Flow
    model: DensityModel
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    world: World = field(default_factory=World)

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        device: str | None = None,
        world: World | None = None,
        log: Callable[[str], None] = print,
    ) -> Session:
        """Load the data and build the flow; ``device`` overrides ``cfg.device``; ``log``
        (on the main process only) hears what was changed while reading a data file."""
        cfg = cfg.resolved()
        world = world or World()
        dev = select_device(device or cfg.device, world)
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        splits, images = None, None
        if cfg.is_image:
            images = load_image_dataset(
                cfg.dataset,
                data_root=cfg.data_root,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.data_seed,
            )
            flow = build_image_flow(cfg, images.shape, generator)
            dequantizer = None
            if cfg.dequantization == "variational":
                dequantizer = VariationalDequantizer(images.shape[0], images.levels, cfg.hidden[0])
            model = DensityModel(flow, images.levels, dequantizer)
        else:
            splits = load_dataset(
                cfg.dataset,
                n_samples=cfg.n_samples,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.data_seed,
                log=log if world.main else None,
                data_root=cfg.data_root,
            )
            mean, std = splits.mean, splits.std
            if cfg.scale == "raw":  # the first layer is then the identity
                mean, std = torch.zeros_like(mean), torch.ones_like(std)
            flow = build_flow(cfg, mean, std, generator)
            model = DensityModel(flow)
        model.to(device=dev, dtype=dtype)
        return cls(cfg, splits, images, flow, model, dev, dtype, generator, world)

    @property
    def is_image(self) -> bool:
        """Whether the data are images."""
        return self.images is not None

    def split(self, name: str) -> Tensor:
        """The ``"train"``, ``"validation"`` or ``"test"`` data on the CPU (vectors float64,
        images uint8 pixels)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        source = self.images if self.images is not None else self.splits
        data: Tensor = getattr(source, name)
        return data

    @property
    def features(self) -> int:
        """The dimension ``D`` of one sample (``C * H * W`` for images)."""
        return math.prod(self.split("train").shape[1:])

    def noise(self, shape: tuple[int, ...], seed: int) -> Tensor | None:
        """Dequantisation noise for images of ``shape`` drawn from a CPU generator seeded with
        ``seed`` (uniform ``u``, or the Gaussian ``eps`` of a variational dequantiser), on the
        model's device; ``None`` for vectors.

        Drawing the noise of a whole global batch from one seed makes it independent of how
        the batch is shared among processes."""
        if self.images is None:
            return None
        g = torch.Generator().manual_seed(seed)
        draw = torch.randn if self.cfg.dequantization == "variational" else torch.rand
        return self.to_model(draw(shape, generator=g, dtype=torch.float64))

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor on the model's device and dtype."""
        return x.to(device=self.device, dtype=self.dtype)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars (the flow and a variational dequantiser)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
