r"""A block as a spec of components: its network, its solvers and its log-det estimators.

:class:`~implicit_transforms.blocks.BlockOptions` are *settings* (a coefficient, a failure
policy, a number of probes); resolving them against a family's table entry gives a
:class:`BlockSpec`, whose fields are the *components* themselves (a configured solver, an
estimator object). Every entry point builds its blocks from a spec
(:func:`~implicit_transforms.blocks.build_block` is ``BlockSpec.from_options(...).build()``),
and a spec writes itself as JSON (:meth:`BlockSpec.to_dict`) with the registry's names, so the
command line stores exactly what it built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from implicit_transforms.blocks.base import InvertibleBlock
from implicit_transforms.blocks.impflow import ImplicitBlock
from implicit_transforms.blocks.monotone import MonotoneBlock
from implicit_transforms.blocks.options import BlockOptions, make_options
from implicit_transforms.blocks.residual import ResidualBlock
from implicit_transforms.lipschitz.densenet import LipschitzDenseCNN, LipschitzDenseMLP
from implicit_transforms.lipschitz.networks import LipschitzCNN, LipschitzMLP, LipschitzNet
from implicit_transforms.logdet import (
    ExactLogDet,
    Geometric,
    LogDetEstimator,
    PowerSeriesLogDet,
    RouletteLogDet,
)
from implicit_transforms.recipes.families import FAMILIES, LAYER_COEFF, NETWORK_ACTIVATION
from implicit_transforms.recipes.families import NETWORK as DEFAULT_NETWORK
from implicit_transforms.recipes.registry import (
    NETWORKS,
    component_spec,
    make_logdet,
    solver_from_spec,
)
from implicit_transforms.solvers import Solver
from implicit_transforms.validation import check_event_shape, check_hidden, check_positive_int

__all__ = ["BlockSpec", "lipschitz_net"]


def lipschitz_net(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = (64, 64),
    *,
    coeff: float = LAYER_COEFF,
    activation: str = NETWORK_ACTIVATION,
    context_features: int | None = None,
    zero_init: bool = False,
    network: str = DEFAULT_NETWORK,
) -> LipschitzNet:
    """A Lipschitz MLP for ``event_shape = D`` or ``(D,)``, a Lipschitz CNN for ``(C, H, W)``;
    their i-DenseNet versions with ``network="densenet"``.

    ``hidden`` is the list of hidden sizes (MLP) or the number of hidden channels (CNN; a
    sequence uses its first entry). For a DenseNet every entry of ``hidden`` is one dense
    layer's growth, in features or channels (an int: one dense layer).

    Args:
        event_shape: ``D`` or ``(D,)`` for vectors, ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        coeff: Lipschitz coefficient of every layer.
        activation: the activation's name.
        context_features: size of a context entering as a bias, or ``None``.
        zero_init: start the last layer near zero (see
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR`).
        network: ``"mlp"`` (chains of spectral layers) or ``"densenet"`` (i-DenseNets).

    Returns:
        The network.

    Example:
        >>> type(lipschitz_net(3, [8])).__name__, type(lipschitz_net((1, 4, 4), 8)).__name__
        ('LipschitzMLP', 'LipschitzCNN')
        >>> type(lipschitz_net(3, [8, 8], network="densenet", activation="clipswish")).__name__
        'LipschitzDenseMLP'
    """
    shape = check_event_shape(event_shape, "event_shape")
    sizes = check_hidden(hidden, "hidden")
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {list(NETWORKS)}, got {network!r}")
    if network == "densenet":
        if len(shape) not in (1, 3):
            raise ValueError(f"event_shape must be (D,) or (C, H, W), got {shape}")
        dense = LipschitzDenseMLP if len(shape) == 1 else LipschitzDenseCNN
        return dense(
            shape[0],
            sizes,
            coeff=coeff,
            activation=activation,
            context_features=context_features,
            zero_init=zero_init,
        )
    if len(shape) == 1:
        return LipschitzMLP(
            shape[0],
            sizes,
            coeff=coeff,
            activation=activation,
            context_features=context_features,
            zero_init=zero_init,
        )
    if len(shape) == 3:
        return LipschitzCNN(
            shape[0],
            sizes[0],
            coeff=coeff,
            activation=activation,
            context_features=context_features,
            zero_init=zero_init,
        )
    raise ValueError(f"event_shape must be (D,) or (C, H, W), got {shape}")


@dataclass(frozen=True)
class BlockSpec:
    """Everything a block is built from, as components.

    Attributes:
        family: ``"iresnet"``, ``"resflow"``, ``"impflow"`` or ``"monotone"`` (which decides the
            block class and the number of networks).
        event_shape: ``(D,)`` or ``(C, H, W)``.
        hidden: hidden sizes (MLP) or hidden channels (CNN: the first entry).
        coeff: Lipschitz coefficient of every layer.
        activation: the networks' activation.
        solver: the root solver of the implicit direction(s).
        adjoint_solver: the solver of the backward linear systems.
        logdet_train: the training log-det estimator.
        logdet_eval: the evaluation estimator (``None``: exact for small events, else
            ``logdet_train``).
        context_features: size of a context entering as a bias, or ``None``.
        compile: whether the networks' evaluations are compiled.
        zero_init: whether each network's last layer starts near zero (a spec written
            without this key, before it existed, reads as ``False``).
        network: the networks' architecture, ``"mlp"`` or ``"densenet"`` (i-DenseNets).

    Example:
        >>> spec = BlockSpec.from_options("resflow", 2, [8])
        >>> type(spec.solver).__name__, type(spec.build()).__name__
        ('FixedPoint', 'ResidualBlock')
        >>> BlockSpec.from_dict(spec.to_dict()) == spec
        True
    """

    family: str
    event_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    coeff: float
    activation: str
    solver: Solver
    adjoint_solver: Solver
    logdet_train: LogDetEstimator
    logdet_eval: LogDetEstimator | None = None
    context_features: int | None = None
    compile: bool = False
    zero_init: bool = False
    network: str = DEFAULT_NETWORK

    @classmethod
    def from_options(
        cls,
        family: str,
        event_shape: int | Sequence[int],
        hidden: int | Sequence[int] = (64, 64),
        *,
        context_features: int | None = None,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> BlockSpec:
        """Resolve settings (``options`` and keyword ``changes``, as every entry point takes
        them) against ``family``'s table entry."""
        shape = check_event_shape(event_shape, "event_shape")
        sizes = check_hidden(hidden, "hidden")
        if context_features is not None:
            check_positive_int(context_features, "context_features")
        opts = make_options(options, changes).resolve(family, shape)
        return cls(
            family=family,
            event_shape=shape,
            hidden=tuple(sizes),
            coeff=opts.coeff,
            activation=opts.activation,
            solver=opts.solver,
            adjoint_solver=opts.adjoint_solver,
            logdet_train=opts.logdet_train,
            logdet_eval=opts.logdet_eval,
            context_features=context_features,
            compile=opts.compile,
            zero_init=opts.zero_init,
            network=opts.network,
        )

    def build(self) -> InvertibleBlock:
        """The block: :class:`~implicit_transforms.blocks.ImplicitBlock` for families with two
        networks, :class:`~implicit_transforms.blocks.MonotoneBlock` for ``"monotone"``,
        :class:`~implicit_transforms.blocks.ResidualBlock` otherwise."""
        nets = [
            lipschitz_net(
                self.event_shape,
                list(self.hidden),
                coeff=self.coeff,
                activation=self.activation,
                context_features=self.context_features,
                zero_init=self.zero_init,
                network=self.network,
            )
            for _ in range(FAMILIES[self.family].networks)
        ]
        if self.compile:
            for net in nets:
                net.compile_evaluation()
        common: dict[str, Any] = {
            "solver": self.solver,
            "adjoint_solver": self.adjoint_solver,
            "logdet_train": self.logdet_train,
            "logdet_eval": self.logdet_eval,
        }
        if len(nets) == 2:
            return ImplicitBlock(*nets, **common)
        if self.family == "monotone":
            return MonotoneBlock(nets[0], **common)
        return ResidualBlock(nets[0], **common)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data, components by their registry names and fields.

        Raises:
            TypeError: a component the registry cannot name (a custom solver or estimator).
                Estimators' generators are not part of the spec.
        """
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("solver", "adjoint_solver", "logdet_train", "logdet_eval")
        }
        out["event_shape"], out["hidden"] = list(self.event_shape), list(self.hidden)
        out["solver"] = component_spec(self.solver)
        out["adjoint_solver"] = component_spec(self.adjoint_solver)
        out["logdet_train"] = _estimator_spec(self.logdet_train)
        out["logdet_eval"] = None if self.logdet_eval is None else _estimator_spec(self.logdet_eval)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSpec:
        """The inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["event_shape"] = tuple(fields["event_shape"])
        fields["hidden"] = tuple(fields["hidden"])
        fields["solver"] = solver_from_spec(fields["solver"])
        fields["adjoint_solver"] = solver_from_spec(fields["adjoint_solver"])
        fields["logdet_train"] = _estimator_from_spec(fields["logdet_train"])
        ev = fields.get("logdet_eval")
        fields["logdet_eval"] = None if ev is None else _estimator_from_spec(ev)
        return cls(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockSpec):
            return NotImplemented
        try:
            return self.to_dict() == other.to_dict()
        except TypeError:
            return self is other

    __hash__ = None  # type: ignore[assignment]


def _estimator_spec(est: LogDetEstimator) -> dict[str, Any]:
    if isinstance(est, ExactLogDet) and (est.max_dim, est.chunk_size) == (4096, 64):
        return {"name": "exact"}
    # A generator is a source of randomness, not configuration: it is not written.
    if (
        isinstance(est, PowerSeriesLogDet)
        and est.gradient == "backprop"
        and est.probe == "gaussian"
    ):
        return {"name": "power-series", "n_terms": est.n_terms, "n_probes": est.n_probes}
    if (
        isinstance(est, RouletteLogDet)
        and isinstance(est.length, Geometric)
        and est.length.p == 0.5
        and est.gradient == "neumann"
        and est.probe == "gaussian"
    ):
        return {
            "name": "roulette",
            "n_exact_terms": est.length.n_exact_terms,
            "n_probes": est.n_probes,
        }
    raise TypeError(f"no registry name for the estimator {est!r}")


def _estimator_from_spec(spec: Mapping[str, Any]) -> LogDetEstimator:
    fields = dict(spec)
    return make_logdet(str(fields.pop("name")), **fields)
