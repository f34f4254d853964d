"""The trainer's settings: one frozen dataclass, its validation, and its command-line flags.

Every field is one ``--flag`` (underscores become dashes); ``None`` means "the default for this
model, data and run length" and is replaced by a concrete value in :meth:`TrainConfig.resolved`,
which is what a run directory stores in ``config.json`` (``n_samples`` stays ``None`` for files
and images, which use all their rows). A flag that would have no effect, or a different one
than asked, is a ``ValueError``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from implicit_transforms.cli.data import DEFAULT_N_SAMPLES, TOY_DATASETS
from implicit_transforms.data import MAF_DATASETS, MAF_FILES, REAL_DATASETS
from implicit_transforms.images.data import IMAGE_DATASETS, TORCHVISION_FILES
from implicit_transforms.recipes import (
    FAMILIES,
    IMAGE_ACTIVATION,
    LOGDETS,
    MODEL_PRESETS,
    MODELS,
)
from implicit_transforms.recipes.families import IMAGE_ZERO_INIT, TRAINER_SCALE
from implicit_transforms.recipes.registry import ACTIVATION_NAMES, NETWORKS
from implicit_transforms.recipes.registry import SOLVERS as SOLVER_CLASSES

__all__ = ["MODELS", "MODEL_DEFAULTS", "TrainConfig", "add_config_arguments", "config_from_args"]

SOLVERS = tuple(SOLVER_CLASSES)
ACTIVATIONS = ACTIVATION_NAMES
#: Per-model defaults for the fields left as ``None``: the assembly layer's presets (the
#: families' table with the trainer's sine activation, and the ``rq-impflow`` mix chosen by
#: measurement; see :data:`implicit_transforms.recipes.MODEL_PRESETS`).
MODEL_DEFAULTS = MODEL_PRESETS
_COMMON_DEFAULTS: dict[str, Any] = {"lr": 1e-3}
#: Linear warm-up steps, or all of ``--steps`` when a run is shorter.
DEFAULT_WARMUP = 100

#: Image data sets change these defaults (the Residual Flows and ImpFlow image models use
#: LipSwish networks) and fill the image-only settings.
IMAGE_DEFAULTS: dict[str, Any] = {
    "activation": IMAGE_ACTIVATION,
    "scales": 2,
    "fc_blocks": 0,
    "dequantization": "uniform",
    "logit_alpha": 0.05,
    "zero_init": IMAGE_ZERO_INIT,
}
IMAGE_ONLY = ("data_root", "scales", "fc_blocks", "dequantization", "logit_alpha")
DEQUANTIZATIONS = ("uniform", "variational")
#: ``--scale``: what the flow's fixed first layer does to vector data.
SCALES = ("standardised", "raw")
#: Settings that a ``config.json`` written before they existed lacks, with the value its run
#: was trained with (filled in when it is loaded).
_OLD_RUN_VALUES: dict[str, Any] = {"zero_init": False, "network": "mlp"}


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """All settings of one training run (see ``implicit-transforms train --help``)."""

    # data
    dataset: str = _f(
        "checkerboard",
        "built-in data set (2-D toy densities; images: digits, mnist, fashion-mnist, cifar10; "
        "real vectors: power, gas, hepmass, miniboone, bsds300 (MAF files under --data-root), "
        "patches, mnist5k) or a .npy/.csv file of vectors (N, D)",
    )
    n_samples: int | None = _f(
        None,
        "number of samples drawn from a built-in 2-D data set (not for files or images, which "
        "use all their rows)",
        default_text=str(DEFAULT_N_SAMPLES),
    )
    val_fraction: float = _f(0.1, "fraction of the data held out for validation")
    test_fraction: float = _f(0.1, "fraction of the data held out for the final test")
    data_seed: int = _f(0, "seed of the data sampler and of the train/validation/test split")
    data_root: str | None = _f(
        None,
        "directory with the torchvision files of mnist, fashion-mnist, cifar10, or the MAF files "
        "of power, gas, hepmass, miniboone, bsds300",
    )
    scale: str | None = _f(
        None,
        "vector data: 'standardised' (the flow's first layer divides by the training data's "
        "std after subtracting its mean) or 'raw' (the data as they are, as the papers' toy "
        "scripts)",
        choices=SCALES,
    )
    # model
    model: str | None = _f(
        None,
        "flow family (default: rq-impflow, nflows RQ coupling layers alternating with ImpFlow "
        "blocks, for vectors; impflow for images)",
        choices=MODELS,
    )
    blocks: int = _f(4, "number of flow blocks")
    hidden: tuple[int, ...] = _f((64, 64), "hidden layer sizes of each network", nargs="+")
    coeff: float | None = _f(None, "Lipschitz coefficient per layer, in (0, 1)")
    activation: str | None = _f(
        None,
        "activation of the Lipschitz networks (clipswish, i-DenseNets' concatenated LipSwish, "
        "and cpila, Monotone Flows' concatenated Pila, map R^n to R^2n: the next layer takes "
        "twice the features)",
        choices=ACTIVATIONS,
    )
    network: str | None = _f(
        None,
        "architecture of the Lipschitz networks: mlp (chains of spectral layers, as the "
        "papers) or densenet (i-DenseNets: each --hidden entry is one dense layer's growth; the "
        "i-DenseNet paper pairs it with --activation clipswish)",
        choices=NETWORKS,
    )
    actnorm: bool = _f(True, "an ActNorm layer before each block")
    scales: int | None = _f(
        None, "images: scales of the multiscale flow (squeeze, --blocks blocks, factor out half)"
    )
    fc_blocks: int | None = _f(
        None, "images: fully connected blocks (hidden sizes --hidden) after the last scale"
    )
    dequantization: str | None = _f(
        None, "images: uniform or variational dequantisation noise", choices=DEQUANTIZATIONS
    )
    logit_alpha: float | None = _f(None, "images: margin of the logit transform, in [0, 0.5)")
    solver: str | None = _f(None, "root solver of the implicit directions", choices=SOLVERS)
    atol: float | None = _f(
        None, "solver absolute tolerance (default: eps^(3/4): 6.5e-6 float32, 1.8e-12 float64)"
    )
    rtol: float | None = _f(None, "solver relative tolerance (same defaults)")
    max_iter: int | None = _f(None, "solver iteration limit (default: the solver's own)")
    logdet: str | None = _f(None, "log-det estimator used in training", choices=LOGDETS)
    n_probes: int = _f(
        FAMILIES["resflow"].n_probes, "Hutchinson probes per sample of the stochastic log-det"
    )
    n_exact_terms: int = _f(
        FAMILIES["resflow"].n_exact_terms, "roulette: series terms always evaluated"
    )
    n_terms: int = _f(FAMILIES["iresnet"].n_terms, "power series: number of terms")
    bins: int = _f(8, "rq-coupling: spline bins")
    tail_bound: float = _f(3.0, "rq-coupling: splines act on [-B, B] (standardised units)")
    compile: bool = _f(False, "evaluate the Lipschitz networks through torch.compile")
    zero_init: bool | None = _f(
        None,
        "start each Lipschitz network's last layer near zero (weight / 1000), so every block "
        "starts near the identity, as the official Residual Flows and ImpFlow code",
        action=argparse.BooleanOptionalAction,
    )
    # optimisation
    steps: int = _f(
        2000,
        "optimisation steps in total; with --resume the total to reach, counting the steps "
        "already done",
    )
    batch_size: int = _f(256, "training batch size")
    lr: float | None = _f(None, "peak learning rate of Adam (default 2e-3 rq-impflow, else 1e-3)")
    warmup: int | None = _f(
        None,
        "steps of linear learning-rate warm-up, at most --steps",
        default_text=f"{DEFAULT_WARMUP}, or --steps when fewer",
    )
    schedule: str = _f("cosine", "learning rate after warm-up", choices=("cosine", "constant"))
    weight_decay: float = _f(0.0, "Adam weight decay")
    clip_grad: float = _f(10.0, "clip the gradient norm to this value (0: no clipping)")
    ema: float = _f(0.0, "decay of an exponential moving average of the weights (0: off)")
    eval_every: int = _f(250, "validate (exact log-det for D <= 64) every this many steps")
    eval_batch_size: int = _f(2000, "batch size of validation, test and sampling")
    seed: int = _f(0, "seed of the initialisation, batch order and log-det estimator")
    device: str = _f("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    dtype: str = _f(
        "float32", "floating-point type of model and data", choices=("float32", "float64")
    )
    # report
    figure_grid: int = _f(200, "grid points per axis of the density figure")
    figure_samples: int = _f(20_000, "model samples drawn for the figure")

    @property
    def is_image(self) -> bool:
        """Whether the data set is one of the image data sets."""
        return self.dataset in IMAGE_DATASETS

    def resolved(self) -> TrainConfig:
        """Validate every field and fill the model defaults; raises ``ValueError``."""
        self._validate()
        model = self.model or ("impflow" if self.is_image else "rq-impflow")
        if model == "rq-impflow" and self.blocks < 2:
            which = "--model rq-impflow" if self.model else "the default model rq-impflow"
            raise ValueError(
                f"{which} alternates RQ coupling layers and ImpFlow blocks (coupling first), so "
                f"it needs --blocks >= 2 to contain an ImpFlow block, got --blocks {self.blocks}; "
                "--model rq-coupling is couplings only, --model impflow ImpFlow only"
            )
        defaults = {
            **_COMMON_DEFAULTS,
            "model": model,
            "warmup": min(DEFAULT_WARMUP, self.steps),
            **MODEL_DEFAULTS[model],
        }
        if self.dataset in TOY_DATASETS:
            defaults["n_samples"] = DEFAULT_N_SAMPLES
        if self.is_image:
            defaults.update(IMAGE_DEFAULTS)
        else:
            defaults["scale"] = TRAINER_SCALE
        fills = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fills)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error (a typo must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        # The blocks' spec is written beside the settings (see ``block_spec``); it is checked
        # against the settings by the command line, not a setting itself.
        data = {k: v for k, v in data.items() if k != "block_spec"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown setting(s) {unknown}")
        if data.get("dataset") not in TOY_DATASETS and data.get("n_samples") is not None:
            # Runs written before --n-samples was refused for files and images stored the
            # unused default there; it never had an effect, so it is dropped.
            data = {**data, "n_samples": None}
        if data.get("model") != "rq-coupling":  # a coupling flow has no Lipschitz network
            for name, value in _OLD_RUN_VALUES.items():
                data.setdefault(name, value)
        if "scale" not in data and data.get("dataset") not in IMAGE_DATASETS:
            data = {**data, "scale": "standardised"}  # the only scale before --scale existed
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a ``config.json`` written by a run."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the run config {str(path)!r}: {err}") from err
        return cls.from_json(data)

    def _validate(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {v!r}")

        def finite(name: str, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise ValueError(f"--{_flag(name)} must be in {lb}{lo}, {hi}{rb}, got {v!r}")

        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("blocks", "n_probes", "n_exact_terms", "n_terms", "bins",
                     "steps", "batch_size", "eval_every", "eval_batch_size", "figure_grid", "figure_samples"):  # fmt: skip
            positive_int(name)
        for name in ("max_iter", "n_samples"):
            if getattr(self, name) is not None:
                positive_int(name)
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise ValueError(
                f"--hidden must be one or more positive integers, got {list(self.hidden)!r}"
            )
        if self.warmup is not None:
            w = self.warmup
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise ValueError(f"--warmup must be an integer >= 0, got {w!r}")
            if w > self.steps:
                raise ValueError(
                    f"--warmup {w} is longer than --steps {self.steps}: the learning rate would "
                    f"never reach --lr; pass --warmup <= {self.steps}"
                )
        if self.lr is not None:
            finite("lr", 0.0, math.inf, lo_open=True, hi_open=True)
        finite("weight_decay", 0.0, math.inf, lo_open=False, hi_open=True)
        finite("clip_grad", 0.0, math.inf, lo_open=False, hi_open=True)
        finite("ema", 0.0, 1.0, lo_open=False, hi_open=True)
        finite("tail_bound", 0.0, math.inf, lo_open=True, hi_open=True)
        if self.coeff is not None:
            finite("coeff", 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("atol", "rtol"):
            if getattr(self, name) is not None:
                finite(name, 0.0, math.inf, lo_open=False, hi_open=True)
        if self.atol == 0 and self.rtol == 0:
            raise ValueError("--atol and --rtol cannot both be 0 (the solver could never stop)")
        if self.zero_init is not None and not isinstance(self.zero_init, bool):
            raise ValueError(f"--zero-init must be true or false, got {self.zero_init!r}")
        if self.scale is not None and self.is_image:
            raise ValueError(
                f"--scale applies to vector data, not to --dataset {self.dataset} (images are "
                "dequantised to [0, 1] and go through a logit transform)"
            )
        for name, choices in (("scale", SCALES), ("activation", ACTIVATIONS),
                              ("network", NETWORKS), ("solver", SOLVERS),
                              ("logdet", LOGDETS), ("schedule", ("cosine", "constant")),
                              ("dtype", ("float32", "float64"))):  # fmt: skip
            v = getattr(self, name)
            if v is not None and v not in choices:
                raise ValueError(f"--{_flag(name)} must be one of {', '.join(choices)}, got {v!r}")
        if self.model == "rq-coupling":
            for name in ("coeff", "activation", "network", "solver", "logdet", "atol", "rtol",
                         "max_iter", "zero_init"):  # fmt: skip
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"--{_flag(name)} does not apply to --model rq-coupling "
                        "(a coupling flow has no Lipschitz network, solver or log-det estimator)"
                    )
            if self.compile:
                raise ValueError("--compile does not apply to --model rq-coupling")
        known = (*TOY_DATASETS, *IMAGE_DATASETS, *REAL_DATASETS)
        if self.dataset not in known and Path(self.dataset).suffix.lower() not in (".npy", ".csv"):
            raise ValueError(
                f"--dataset: unknown dataset {self.dataset!r}: expected one of "
                f"{', '.join(known)} or a path to a .npy/.csv file"
            )
        if self.n_samples is not None and self.dataset not in TOY_DATASETS:
            kind = "an image data set" if self.is_image else "a data file"
            raise ValueError(
                f"--n-samples applies to the built-in 2-D data sets ({', '.join(TOY_DATASETS)}), "
                f"not to --dataset {self.dataset} ({kind}: all its rows are used)"
            )
        needs_root = self.dataset in MAF_DATASETS or self.dataset in TORCHVISION_FILES
        if needs_root and self.data_root is None:
            files = MAF_FILES.get(self.dataset) or TORCHVISION_FILES.get(self.dataset)
            raise ValueError(
                f"--dataset {self.dataset} is read from local files: pass --data-root DIR with "
                f"{files if isinstance(files, str) else ', '.join(files or ())} under DIR "
                "(nothing is downloaded)"
            )
        if self.is_image:
            self._validate_image()
        else:
            for name in IMAGE_ONLY:
                if name == "data_root" and self.dataset in MAF_DATASETS:
                    continue  # the MAF tabular sets are read from the data root too
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"--{_flag(name)} applies to image data sets ({', '.join(IMAGE_DATASETS)}), "
                        f"not to --dataset {self.dataset}"
                    )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def _validate_image(self) -> None:
        if self.model in ("rq-coupling", "rq-impflow"):
            raise ValueError(
                f"--model {self.model} is a flow for vectors; image data sets take impflow, "
                "resflow, iresnet or monotone (see benchmarks/images.py for a Glow-like coupling "
                "flow)"
            )
        if self.scales is not None and (
            isinstance(self.scales, bool) or not isinstance(self.scales, int) or self.scales < 1
        ):
            raise ValueError(f"--scales must be a positive integer, got {self.scales!r}")
        if self.fc_blocks is not None and (
            isinstance(self.fc_blocks, bool)
            or not isinstance(self.fc_blocks, int)
            or self.fc_blocks < 0
        ):
            raise ValueError(f"--fc-blocks must be an integer >= 0, got {self.fc_blocks!r}")
        if self.dequantization is not None and self.dequantization not in DEQUANTIZATIONS:
            raise ValueError(
                f"--dequantization must be one of {', '.join(DEQUANTIZATIONS)}, got "
                f"{self.dequantization!r}"
            )
        alpha = self.logit_alpha
        if alpha is not None and not (
            isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha < 0.5
        ):
            raise ValueError(f"--logit-alpha must be in [0, 0.5), got {alpha!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (defaults shown in ``--help``)."""
    groups = {
        "dataset": parser.add_argument_group("data"),
        "model": parser.add_argument_group("model"),
        "steps": parser.add_argument_group("optimisation"),
        "figure_grid": parser.add_argument_group("report"),
    }
    group: Any = parser
    for f in dataclasses.fields(TrainConfig):
        group = groups.get(f.name, group)
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        shown = meta.pop("default_text", "model default" if f.default is None else f.default)
        if isinstance(shown, tuple):
            shown = " ".join(map(str, shown))
        kwargs: dict[str, Any] = {
            "help": f"{help_text} (default: {shown})",
            "default": None,
            **meta,
        }
        if isinstance(f.default, bool) or meta.get("action") is argparse.BooleanOptionalAction:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _arg_type(f.name)
            kwargs["metavar"] = f.name.upper() if "choices" not in meta else None
        group.add_argument(f"--{_flag(f.name)}", dest=f.name, **kwargs)


def _arg_type(name: str) -> Any:
    """The element type of a field, read from its annotation (``int | None``, ``tuple[int, ...]``)."""
    annotation = str(TrainConfig.__dataclass_fields__[name].type)
    return int if "int" in annotation else float if "float" in annotation else str


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The config from parsed flags; flags not given keep the value of ``base``."""
    base = base or TrainConfig()
    given: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            given[f.name] = tuple(v) if f.name == "hidden" else v
    return dataclasses.replace(base, **given)
