"""Flows for the trainer, assembled from the nflows plugin (and nflows' own coupling layers).

Every vector flow maps data to noise as ``Standardize -> [ActNorm -> block] x L -> N(0, I)``.
The first layer is the fixed standardisation with training statistics (the identity for
``--scale raw``), so ``flow.log_prob`` is a density in the units of the data. Image flows are the multiscale flows of
:func:`~implicit_transforms.plugins.nflows.image_flow` on dequantised pixels in ``[0, 1]``;
:class:`DensityModel` turns either into the training objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm,
    CompositeTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    Transform,
)
from nflows.utils import create_alternating_binary_mask
from torch import Tensor, nn

from implicit_transforms.blocks import EXACT_LOGDET_MAX_DIM, InvertibleBlock
from implicit_transforms.cli.config import TrainConfig
from implicit_transforms.images import VariationalDequantizer, dequantization_nll, dequantize
from implicit_transforms.logdet import LogDetEstimator, PowerSeriesLogDet
from implicit_transforms.plugins.nflows import BlockTransform, image_flow
from implicit_transforms.recipes import EVAL_SERIES, BlockSpec, registry
from implicit_transforms.solvers import Solver

__all__ = [
    "DensityModel",
    "Standardize",
    "block_spec",
    "blocks_of",
    "build_flow",
    "build_image_flow",
    "make_logdet",
    "make_solver",
]


class Standardize(Transform):
    r"""The fixed affine map ``z = (x - mean) / std`` (data to noise); log-det ``-sum log std``.

    Args:
        mean: ``(D,)`` feature means.
        std: ``(D,)`` positive feature standard deviations.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(
                f"mean and std must both have shape (D,), got {mean.shape}, {std.shape}"
            )
        if not bool((std > 0).all()):
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``((x - mean) / std, -sum(log std))`` per sample."""
        logdet = -torch.log(self.std).sum().expand(inputs.shape[0])
        return (inputs - self.mean) / self.std, logdet

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z std + mean, sum(log std))`` per sample."""
        logdet = torch.log(self.std).sum().expand(inputs.shape[0])
        return inputs * self.std + self.mean, logdet


def make_solver(cfg: TrainConfig) -> Solver:
    """The solver named by ``cfg.solver`` with the configured tolerances (names: the assembly
    layer's registry)."""
    if cfg.solver is None:
        raise ValueError("make_solver needs a resolved config: pass cfg.resolved()")
    return registry.make_solver(cfg.solver, atol=cfg.atol, rtol=cfg.rtol, max_iter=cfg.max_iter)


def make_logdet(cfg: TrainConfig, generator: torch.Generator | None) -> LogDetEstimator:
    """The training log-det estimator named by ``cfg.logdet``, drawing from ``generator``."""
    if cfg.logdet is None:
        raise ValueError("make_logdet needs a resolved config: pass cfg.resolved()")
    return registry.make_logdet(
        cfg.logdet,
        n_terms=cfg.n_terms,
        n_probes=cfg.n_probes,
        n_exact_terms=cfg.n_exact_terms,
        generator=generator,
    )


def block_spec(
    cfg: TrainConfig, features: int, generator: torch.Generator | None = None
) -> BlockSpec | None:
    """The :class:`~implicit_transforms.recipes.spec.BlockSpec` of the residual or implicit blocks of
    the vector model ``cfg`` describes (``None`` for ``rq-coupling``): what ``config.json``
    stores under ``"block_spec"``.

    Args:
        cfg: a :meth:`TrainConfig.resolved` config.
        features: the data dimension ``D``.
        generator: randomness of the stochastic log-det estimators (not part of the spec).
    """
    if cfg.model == "rq-coupling":
        return None
    if (
        cfg.model is None
        or cfg.coeff is None
        or cfg.activation is None
        or cfg.solver is None
        or cfg.logdet is None
        or cfg.zero_init is None
        or cfg.network is None
    ):
        raise ValueError("block_spec needs a resolved config: pass cfg.resolved()")
    logdet_eval = None
    # A high-precision estimate for evaluating large events, unless the exact log-det was
    # asked for (the blocks then use it in evaluation too).
    if features > EXACT_LOGDET_MAX_DIM and cfg.logdet != "exact":
        terms, probes = EVAL_SERIES
        logdet_eval = PowerSeriesLogDet(terms, probes, generator=generator)
    return BlockSpec.from_options(
        "impflow" if cfg.model == "rq-impflow" else cfg.model,
        features,
        list(cfg.hidden),
        coeff=cfg.coeff,
        activation=cfg.activation,
        solver=make_solver(cfg),
        logdet_train=make_logdet(cfg, generator),
        logdet_eval=logdet_eval,
        compile=cfg.compile,
        zero_init=cfg.zero_init,
        network=cfg.network,
    )


def build_flow(
    cfg: TrainConfig,
    mean: Tensor,
    std: Tensor,
    generator: torch.Generator | None = None,
    spec: BlockSpec | None = None,
) -> Flow:
    """The nflows ``Flow`` described by a resolved ``cfg`` for data with statistics ``mean``, ``std``.

    Args:
        cfg: a :meth:`TrainConfig.resolved` config.
        mean: ``(D,)`` training means.
        std: ``(D,)`` training standard deviations.
        generator: randomness of the stochastic log-det estimators (``None``: a new one).
        spec: the blocks' spec (default :func:`block_spec` of ``cfg``).
    """
    features = int(mean.shape[0])
    generator = generator or torch.Generator(device=mean.device)
    layers: list[Transform] = [Standardize(mean, std)]
    for i in range(cfg.blocks):
        if cfg.actnorm:
            layers.append(ActNorm(features))
        if cfg.model == "rq-coupling":
            layers.append(_rq_coupling(cfg, features, even=i % 2 == 0))
            continue
        if cfg.model == "rq-impflow" and i % 2 == 0:  # couplings alternate their masks
            layers.append(_rq_coupling(cfg, features, even=i % 4 == 0))
            continue
        spec = spec or block_spec(cfg, features, generator)
        if spec is None:  # pragma: no cover - rq-coupling continues above
            raise ValueError(f"model {cfg.model!r} has no residual or implicit blocks")
        block = spec.build()
        layers.append(BlockTransform(block))
    return Flow(CompositeTransform(layers), StandardNormal([features]))


def _rq_coupling(cfg: TrainConfig, features: int, *, even: bool) -> Transform:
    def net(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(in_features, out_features, cfg.hidden[0], num_blocks=len(cfg.hidden))

    return PiecewiseRationalQuadraticCouplingTransform(
        create_alternating_binary_mask(features, even=even),
        net,
        num_bins=cfg.bins,
        tails="linear",
        tail_bound=cfg.tail_bound,
    )


def blocks_of(flow: torch.nn.Module) -> Iterator[InvertibleBlock]:
    """Every :class:`~implicit_transforms.InvertibleBlock` inside ``flow``, in order."""
    for module in flow.modules():
        if isinstance(module, InvertibleBlock):
            yield module


def build_image_flow(
    cfg: TrainConfig, shape: tuple[int, int, int], generator: torch.Generator | None = None
) -> Flow:
    """The multiscale image flow described by a resolved image ``cfg`` for images ``shape``.

    ``--scales`` scales of ``--blocks`` blocks each, ``--hidden``'s first entry as the hidden
    channels of every convolutional block, ``--fc-blocks`` fully connected blocks (hidden sizes
    ``--hidden``) at the end, every network built as ``--network`` says (with ``densenet``, a
    convolutional block's network is one dense layer of that growth). Events of at most 64
    numbers get the exact log-det in evaluation, larger ones the (unbiased) training estimator.
    """
    if (
        cfg.scales is None
        or cfg.coeff is None
        or cfg.activation is None
        or cfg.logdet is None
        or cfg.network is None
    ):
        raise ValueError("build_image_flow needs a resolved image config: pass cfg.resolved()")
    generator = generator or torch.Generator()
    return image_flow(
        shape,
        cfg.model,
        levels=cfg.scales,
        blocks_per_level=cfg.blocks,
        hidden_channels=cfg.hidden[0],
        fc_blocks=cfg.fc_blocks or 0,
        fc_hidden=list(cfg.hidden),
        activation=cfg.activation,
        actnorm=cfg.actnorm,
        logit_alpha=0.05 if cfg.logit_alpha is None else cfg.logit_alpha,
        coeff=cfg.coeff,
        solver=make_solver(cfg),
        logdet_train=make_logdet(cfg, generator),
        compile=cfg.compile,
        zero_init=bool(cfg.zero_init),
        network=cfg.network,
    )


class DensityModel(nn.Module):
    r"""The training objective of a flow: the negative log-likelihood of each sample (nats).

    * vectors: ``-log p(x)`` in data units;
    * images ``k`` with ``L`` levels: the dequantisation bound
      ``-(log p((k + u) / L) - log q(u | k) - D log L)``, whose mean divided by ``D ln 2`` is
      bits/dim (``u`` uniform: ``noise`` is ``u``, ``log q = 0``; variational: ``noise`` is the
      Gaussian ``eps`` of the :class:`~implicit_transforms.images.VariationalDequantizer`).

    A module of its own so that the flow and the dequantiser are trained, averaged (EMA) and
    wrapped for distributed data parallel training together.

    Args:
        flow: the nflows ``Flow``.
        levels: grey levels ``L`` for images, ``None`` for vectors.
        dequantizer: the variational dequantiser, or ``None`` (uniform).
    """

    def __init__(
        self,
        flow: Flow,
        levels: int | None = None,
        dequantizer: VariationalDequantizer | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.levels = levels
        self.dequantizer = dequantizer

    def forward(self, data: Tensor, noise: Tensor | None = None) -> Tensor:
        """Per-sample NLL ``(B,)`` of ``data`` (vectors ``(B, D)`` or integer images
        ``(B, C, H, W)`` as floats, with ``noise`` of the same shape)."""
        if self.levels is None:
            return -self.flow.log_prob(data)
        if noise is None:
            raise ValueError("DensityModel: images need dequantisation noise")
        dims = math.prod(data.shape[1:])
        if self.dequantizer is None:
            u, log_q = noise, None
        else:
            u, log_q = self.dequantizer(data, noise)
        log_p = self.flow.log_prob(dequantize(data, self.levels, u))
        return dequantization_nll(log_p, dims, self.levels, log_q)
