"""The blocks as Pyro ``TransformModule`` s, plus conditional versions and a one-pass distribution.

Direction: Pyro's ``_call`` (base to sample, used by ``rsample`` in guides) is the block's
forward map, which for the residual blocks is the explicit ``x + g(x)``: a guide that samples
and then scores its own samples (cache hit) never solves anything. ``_inverse`` solves.
``log_abs_det_jacobian(x, y)`` reuses the value computed with the cached pair, and otherwise
recomputes it from ``(x, y)`` without any solve. Without gradients (``.sample()``), ``_call``
computes the map alone and the log-det only when it is asked for.

Ready-made guides (elementwise affine layers, whole stacks, an autoguide) are in
:mod:`implicit_transforms.plugins.pyro_guides` and re-exported here.

Example:
    >>> import torch, pyro.distributions as dist
    >>> from implicit_transforms.plugins.pyro import resflow
    >>> t = resflow(2, [16])
    >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    >>> z = q.rsample((5,))
    >>> q.log_prob(z).shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

try:
    import pyro.distributions as pdist
    from pyro.distributions import constraints
    from pyro.distributions.conditional import ConditionalTransform, ConditionalTransformModule
    from pyro.distributions.torch_transform import TransformModule
    from torch.distributions.transforms import ComposeTransform, Transform
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.pyro needs Pyro: pip install 'implicit-transforms[pyro]'"
    ) from err

from implicit_transforms.blocks import FAMILIES, BlockOptions, InvertibleBlock, build_block
from implicit_transforms.blocks.options import training_logdet_doc
from implicit_transforms.validation import check_hidden, check_positive_int

if TYPE_CHECKING:  # at run time they are resolved on first access (``__getattr__`` below)
    from implicit_transforms.plugins.pyro_guides import (
        AutoFlowStack,
        ConditionalElementwiseAffine,
        ElementwiseAffine,
        conditional_flow_stack,
        flow_stack,
        recipe_options,
    )

__all__ = [
    "GUIDE_ACTIVATION",
    "AutoFlowStack",
    "BlockTransformModule",
    "ConditionalBlockTransformModule",
    "ConditionalElementwiseAffine",
    "ConditionalIResNet",
    "ConditionalImpFlow",
    "ConditionalInverseBlockTransformModule",
    "ConditionalResFlow",
    "ElementwiseAffine",
    "FlowDistribution",
    "IResNet",
    "ImpFlow",
    "InverseBlockTransformModule",
    "ResFlow",
    "conditional_flow_stack",
    "conditional_impflow",
    "conditional_iresnet",
    "conditional_resflow",
    "flow_stack",
    "impflow",
    "iresnet",
    "recipe_options",
    "resflow",
]


class BlockTransformModule(TransformModule):
    """Any :class:`~implicit_transforms.InvertibleBlock` as a Pyro ``TransformModule``.

    Args:
        block: the block (parameters are registered on this module).
        cache_size: 1 (default) caches the last ``(x, y)`` pair and its log-det; 0 disables.
        context: fixed context (used by the conditional versions' ``.condition``).
    """

    bijective = True
    _swapped: ClassVar[bool] = False  # True: Pyro's forward is the block's inverse

    def __init__(
        self, block: InvertibleBlock, cache_size: int = 1, context: Tensor | None = None
    ) -> None:
        if not isinstance(block, InvertibleBlock):
            raise TypeError(f"block must be an InvertibleBlock, got {type(block).__name__}")
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        super().__init__(cache_size=cache_size)
        self.block = block
        self.context = context
        self._logdet_cache: tuple[Tensor, Tensor, Tensor] | None = None
        self.num_inverse_solves = 0

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self.block.event_dims)

    def with_cache(self, cache_size: int = 1) -> BlockTransformModule:
        """A transform sharing this one's block (and parameters) with another cache size."""
        if cache_size == self._cache_size:
            return self
        return type(self)(self.block, cache_size=cache_size, context=self.context)

    def clear_cache(self) -> None:
        """Forget the cached ``(x, y)`` pair and log-det."""
        self._cached_x_y = None, None
        self._logdet_cache = None

    def _remember(self, x: Tensor, y: Tensor, ld: Tensor) -> None:
        if self._cache_size == 1:
            self._logdet_cache = (x, y, ld)

    def _run(self, src: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        """The block's forward (or, with ``inverse``, inverse) map of ``src`` and its log-det.

        With autograd recording (an ELBO is being built) the log-det follows at once: compute
        it in the same pass. Without (sampling), skip it (``None``): Pyro asks for it
        separately, and :meth:`log_abs_det_jacobian` computes it from the cached pair then.
        """
        if inverse:
            self.num_inverse_solves += 1
        if not torch.is_grad_enabled():
            block_map = self.block.inverse_map if inverse else self.block.forward_map
            return block_map(src, self.context), None
        with_logdet = self.block.inverse_and_logdet if inverse else self.block.forward_and_logdet
        return with_logdet(src, self.context)

    def _call(self, x: Tensor) -> Tensor:
        y, ld = self._run(x, inverse=self._swapped)
        if ld is not None:
            self._remember(x, y, ld)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        x, ld_inv = self._run(y, inverse=not self._swapped)
        if ld_inv is not None:
            self._remember(x, y, -ld_inv)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|`` summed over the event, shape ``batch``; no solve."""
        cached = self._logdet_cache
        if cached is not None and cached[0] is x and cached[1] is y:
            return cached[2]
        if self._swapped:  # y is the block's inverse image of x
            return -self.block.logdet_pair(y, x, self.context)
        return self.block.logdet_pair(x, y, self.context)


class ConditionalBlockTransformModule(ConditionalTransformModule):
    """A conditional block: ``.condition(context)`` returns a :class:`BlockTransformModule`
    sharing this module's parameters."""

    _unconditioned: type[BlockTransformModule] = BlockTransformModule

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        if block.context_features is None:
            raise ValueError("a conditional transform needs a block built with context_features")
        self.block = block

    def condition(self, context: Tensor) -> BlockTransformModule:
        """The transform for a fixed ``context`` of shape ``(*, context_features)``."""
        return self._unconditioned(self.block, cache_size=1, context=context)


class InverseBlockTransformModule(BlockTransformModule):
    """A block with its directions swapped: Pyro's ``_call`` is the block's *inverse*.

    For residual blocks this puts the solve on sampling and the explicit ``x + g(x)`` on
    ``log_prob`` (density estimation, where data are scored far more often than sampled).
    Built by :func:`~implicit_transforms.plugins.pyro_guides.flow_stack` with
    ``explicit="score"``.
    """

    _swapped = True


class ConditionalInverseBlockTransformModule(ConditionalBlockTransformModule):
    """Conditional version of :class:`InverseBlockTransformModule`."""

    _unconditioned = InverseBlockTransformModule


# Pyro-style names: classes wrap a block, lowercase helpers build one from sizes.
class ResFlow(BlockTransformModule):
    """Residual Flow block as a Pyro transform (build with :func:`resflow`)."""


class IResNet(BlockTransformModule):
    """i-ResNet block as a Pyro transform (build with :func:`iresnet`)."""


class ImpFlow(BlockTransformModule):
    """ImpFlow block as a Pyro transform (build with :func:`impflow`)."""


class ConditionalResFlow(ConditionalBlockTransformModule):
    """Conditional Residual Flow (build with :func:`conditional_resflow`)."""

    _unconditioned = ResFlow


class ConditionalIResNet(ConditionalBlockTransformModule):
    """Conditional i-ResNet (build with :func:`conditional_iresnet`)."""

    _unconditioned = IResNet


class ConditionalImpFlow(ConditionalBlockTransformModule):
    """Conditional ImpFlow (build with :func:`conditional_impflow`)."""

    _unconditioned = ImpFlow


def _hidden(hidden_dims: int | Sequence[int] | None, input_dim: int) -> list[int]:
    check_positive_int(input_dim, "input_dim")
    if hidden_dims is None:
        return [max(16, 8 * input_dim)] * 2
    return check_hidden(hidden_dims, "hidden_dims")


GUIDE_ACTIVATION = "lipswish"
"""The helpers' activation unless ``options`` or ``activation=`` names one. The library's
default (sine) is chosen for density estimation on standardised data; a guide starts near the
identity and LipSwish suits it better (``benchmarks/vi.py`` sweep: ResFlow x4 on a 10-D funnel,
ELBO -1.009 with LipSwish, -1.614 with sine; on a 2-D banana ResFlow + ImpFlow with sine ends
below ``AutoNormal``, -2.53 vs -1.81, and above it with LipSwish, ``tests/test_plugin_pyro.py``)."""


def _guide_changes(
    family: str, options: BlockOptions | None, changes: dict[str, Any]
) -> dict[str, Any]:
    if FAMILIES[family].activation != "sin":  # i-ResNet keeps its paper's ELU
        return changes
    if "activation" not in changes and (options is None or options.activation is None):
        changes = {**changes, "activation": GUIDE_ACTIVATION}
    return changes


_T_co = TypeVar("_T_co", covariant=True)


class HelperFactory(Protocol[_T_co]):
    """The signature of :func:`resflow`, :func:`iresnet` and :func:`impflow`."""

    def __call__(
        self,
        input_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> _T_co:
        """Build the transform."""
        ...


class ConditionalHelperFactory(Protocol[_T_co]):
    """The signature of the ``conditional_*`` helpers."""

    def __call__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> _T_co:
        """Build the conditional transform."""
        ...


_HELPER_ARGS = """

    Args:
        input_dim: ``D`` (events ``(*, D)``).
        hidden_dims: hidden sizes, an int for one hidden layer (default two layers of
            ``max(16, 8 D)``).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`. ResFlow and ImpFlow
            default to LipSwish here (:data:`GUIDE_ACTIVATION`), not the library's sine.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``): the same settings as the factories and the nflows transforms.
    """


def _helper(family: str, cls: type[BlockTransformModule], summary: str) -> HelperFactory[Any]:
    def helper(
        input_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> BlockTransformModule:
        hidden = _hidden(hidden_dims, input_dim)
        changes = _guide_changes(family, options, changes)
        return cls(build_block(family, input_dim, hidden, options=options, **changes))

    helper.__name__ = helper.__qualname__ = family
    helper.__doc__ = summary + training_logdet_doc(family) + _HELPER_ARGS
    return helper


def _conditional_helper(
    family: str, cls: type[ConditionalBlockTransformModule], summary: str
) -> ConditionalHelperFactory[Any]:
    def helper(
        input_dim: int,
        context_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> ConditionalBlockTransformModule:
        hidden = _hidden(hidden_dims, input_dim)
        check_positive_int(context_dim, "context_dim")
        changes = _guide_changes(family, options, changes)
        block = build_block(
            family, input_dim, hidden, context_features=context_dim, options=options, **changes
        )
        return cls(block)

    helper.__name__ = helper.__qualname__ = f"conditional_{family}"
    helper.__doc__ = (
        summary
        + training_logdet_doc(family)
        + _HELPER_ARGS.replace(
            "        hidden_dims:",
            "        context_dim: size of the context ``(*, C)``.\n        hidden_dims:",
        )
    )
    return helper


resflow: HelperFactory[ResFlow] = _helper(
    "resflow", ResFlow, "Residual Flow transform on ``(*, input_dim)``."
)
iresnet: HelperFactory[IResNet] = _helper(
    "iresnet", IResNet, "i-ResNet transform on ``(*, input_dim)``."
)
impflow: HelperFactory[ImpFlow] = _helper(
    "impflow", ImpFlow, "ImpFlow transform on ``(*, input_dim)``."
)
conditional_resflow: ConditionalHelperFactory[ConditionalResFlow] = _conditional_helper(
    "resflow", ConditionalResFlow, "Conditional Residual Flow transform."
)
conditional_iresnet: ConditionalHelperFactory[ConditionalIResNet] = _conditional_helper(
    "iresnet", ConditionalIResNet, "Conditional i-ResNet transform."
)
conditional_impflow: ConditionalHelperFactory[ConditionalImpFlow] = _conditional_helper(
    "impflow", ConditionalImpFlow, "Conditional ImpFlow transform."
)


_Shape = torch.Size | list[int] | tuple[int, ...]


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    return value.reshape(*value.shape[: value.dim() - dims], -1).sum(-1) if dims > 0 else value


def _flatten_transforms(transforms: Any) -> list[Transform]:
    """Blocks wrapped, compositions opened, conditional transforms refused."""
    if isinstance(transforms, (Transform, InvertibleBlock)):
        transforms = [transforms]
    if not isinstance(transforms, Sequence):
        raise TypeError(
            f"transforms must be a sequence of transforms, got {type(transforms).__name__}"
        )
    flat: list[Transform] = []
    for t in transforms:
        if isinstance(t, InvertibleBlock):
            flat.append(BlockTransformModule(t))
        elif isinstance(t, ComposeTransform):
            flat += _flatten_transforms(t.parts)
        elif isinstance(t, Transform):
            flat.append(t)
        elif isinstance(t, ConditionalTransform):
            raise TypeError(
                f"FlowDistribution got the conditional transform {type(t).__name__}: call "
                ".condition(context) on it first (or use ConditionalTransformedDistribution)"
            )
        else:
            raise TypeError(
                "transforms must be blocks or BlockTransformModules (or any "
                f"torch.distributions Transform), got {type(t).__name__}"
            )
    return flat


class FlowDistribution(pdist.TransformedDistribution):
    r"""A ``TransformedDistribution`` that also samples and scores in one pass.

    ``z = T_K o ... o T_1(x)``, ``x ~ base``,
    ``log q(z) = log p(x) - sum_k log|det J_{T_k}(x_{k-1})|``.

    It means exactly what ``pyro.distributions.TransformedDistribution(base, transforms)``
    means (shapes, support, sampling and ``log_prob``), for the same transforms: blocks and
    :class:`BlockTransformModule` s in either direction (:class:`InverseBlockTransformModule`,
    conditional ones after ``.condition(context)``), compositions such as
    :func:`~implicit_transforms.plugins.pyro_guides.flow_stack` (opened into their parts), and
    any other ``torch.distributions`` transform (through its own ``__call__``, ``inv`` and
    ``log_abs_det_jacobian``). What it adds: :meth:`rsample_and_log_prob` computes the
    log-density along the forward pass (no identity-keyed cache, no inverse solve; works with
    ``pyro.contrib.zuko.ZukoToPyro``), :meth:`sample` runs the blocks' maps alone, and
    :meth:`log_prob` inverts each block with its log-det in the same pass.

    Args:
        base: the base distribution.
        transforms: blocks, :class:`BlockTransformModule` s or ``torch.distributions``
            transforms (a single one or a sequence), applied in order.

    Raises:
        TypeError: an object that is not a transform, or a conditional transform that was not
            conditioned.

    Example:
        >>> import torch, pyro.distributions as dist
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> q = FlowDistribution(base, [resflow(2, [8]), dist.transforms.AffineTransform(1., 2.)])
        >>> z, log_q = q.rsample_and_log_prob((4,))
        >>> z.shape, log_q.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self,
        base: pdist.TorchDistribution,
        transforms: Any,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(base, _flatten_transforms(transforms), validate_args=validate_args)

    def _logdet_dims(self) -> tuple[list[int], int]:
        """How many rightmost dimensions of each transform's log-det, and of the base
        log-density, to sum (``TransformedDistribution.log_prob``'s bookkeeping)."""
        event_dim = len(self.event_shape)
        dims = []
        for t in reversed(self.transforms):
            event_dim += t.domain.event_dim - t.codomain.event_dim
            dims.append(event_dim - t.domain.event_dim)
        return dims[::-1], event_dim - len(self.base_dist.event_shape)

    @staticmethod
    def _forward(t: Transform, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dx|)`` with ``y = t(x)``, in one pass for blocks."""
        if isinstance(t, BlockTransformModule):
            run = t.block.inverse_and_logdet if t._swapped else t.block.forward_and_logdet
            return run(x, t.context)
        y = t(x)
        return y, t.log_abs_det_jacobian(x, y)

    @staticmethod
    def _backward(t: Transform, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dy/dx|)`` with ``x = t^{-1}(y)``, in one pass for blocks."""
        if isinstance(t, BlockTransformModule):
            run = t.block.forward_and_logdet if t._swapped else t.block.inverse_and_logdet
            x, logdet_inverse = run(y, t.context)
            return x, -logdet_inverse
        x = t.inv(y)
        return x, t.log_abs_det_jacobian(x, y)

    def rsample_and_log_prob(self, sample_shape: _Shape = ()) -> tuple[Tensor, Tensor]:
        """Reparameterised sample and its log-density, shapes ``sample_shape + batch + event``
        and ``sample_shape + batch``."""
        dims, base_dims = self._logdet_dims()
        x = self.base_dist.rsample(torch.Size(sample_shape))
        log_q = _sum_rightmost(self.base_dist.log_prob(x), base_dims)
        for t, n in zip(self.transforms, dims, strict=True):
            x, logdet = self._forward(t, x)
            log_q = log_q - _sum_rightmost(logdet, n)
        return x, log_q

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Reparameterised sample."""
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        """Sample without gradients: the blocks' maps alone, no log-det work."""
        with torch.no_grad():
            x = self.base_dist.sample(torch.Size(sample_shape))
            for t in self.transforms:
                if isinstance(t, BlockTransformModule):
                    block_map = t.block.inverse_map if t._swapped else t.block.forward_map
                    x = block_map(x, t.context)
                else:
                    x = t(x)
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(value)``, inverting every transform (blocks solve where their inverse is
        implicit)."""
        if self._validate_args:
            self._validate_sample(value)
        dims, base_dims = self._logdet_dims()
        log_det: Tensor | float = 0.0
        for t, n in zip(reversed(self.transforms), reversed(dims), strict=True):
            value, logdet = self._backward(t, value)
            log_det = log_det - _sum_rightmost(logdet, n)
        return _sum_rightmost(self.base_dist.log_prob(value), base_dims) + log_det


# The guide recipes build on the classes above and are re-exported here, resolved on first
# access (PEP 562): importing them at the top would make the two modules import each other, and
# whichever a program imported first would find the other half-initialised.
_GUIDE_NAMES = (
    "AutoFlowStack",
    "ConditionalElementwiseAffine",
    "ElementwiseAffine",
    "conditional_flow_stack",
    "flow_stack",
    "recipe_options",
)


def __getattr__(name: str) -> Any:
    if name in _GUIDE_NAMES:
        from implicit_transforms.plugins import pyro_guides

        return getattr(pyro_guides, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
