r"""Variational guides from the blocks: whole transform stacks and an autoguide for Pyro.

A *flow stack* is the transform of a normalizing-flow guide ``z = T(x)``, ``x ~ N(0, I)``:

.. code-block:: text

    x -> block_1 -> affine_1 -> block_2 -> affine_2 -> ... -> block_K -> affine_K -> z

* **blocks** (:func:`~implicit_transforms.blocks.build_block`: ImpFlow, Residual Flow or
  i-ResNet) start as the identity: the last layer of every residual network is zero, so
  ``g = 0`` and the stack starts as the diagonal Gaussian ``N(init_loc, init_scale^2)``,
  where :class:`~pyro.infer.autoguide.AutoNormal` starts, and only has to learn what that
  Gaussian misses.
* **elementwise affine layers** ``y = loc + exp(log_scale) * x`` (identity at the start, the
  last one at ``init_loc`` and ``init_scale``) after every block. A block's Jacobian has
  singular values in ``[1 - c, 1 + c]``, whatever the coordinates' scales; conjugating a
  block by a diagonal scaling ``S`` gives ``x + S^{-1} g(S x)``, whose Lipschitz constant in
  the original coordinates can reach ``c cond(S)``: the affine layers let the blocks of a
  stack act on posteriors whose coordinates have very different scales.
* **no permutations**: a block's networks are dense, so a permutation ``P`` only maps a
  block to ``x + P^T g(P x)``, another block of the same family (the first layer's columns
  and the last layer's rows are permuted; their spectral norms are unchanged). Unlike
  coupling or autoregressive layers, residual and implicit blocks gain nothing from them.

Mixed recipes. A block's Jacobian stays within ``[1 - c, 1 + c]`` (times the affine
layers' scales), while one affine autoregressive layer (IAF) represents a funnel
``x_i | v ~ N(0, e^v)`` exactly. The names of
:data:`~implicit_transforms.recipes.families.GUIDE_MIXES` (``"iaf-resflow"``,
``"iaf-impflow"``) build Pyro's ``affine_autoregressive`` layers (``conditional_affine_
autoregressive`` in :func:`conditional_flow_stack`) alternating with blocks, IAF first, then
one elementwise affine layer at ``init_loc`` and ``init_scale``; every layer starts as the
identity (the networks' last layers are zero), so the guide starts as the diagonal Gaussian
too. Each is four networks, as IAF x4, ResFlow x4 and ImpFlow x2; ``blocks=`` is the number
of repeats of the mix's unit. They sample and score their own samples explicitly (only
``explicit="sample"``); scoring other points inverts the IAF layers (``D`` passes each).

Scoring. The log-det each block reports is an explicit setting (see
:class:`~implicit_transforms.blocks.InvertibleBlock`). The recipes make it **exact in
training and in evaluation** for latent dimensions up to
:data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` (64): the ELBO's gradient has no
log-det noise, and ``log_prob`` read after SVI (when Pyro leaves the guide in training mode)
is the exact density. Above 64 the family's Russian-roulette estimator is used in training
(unbiased; one series length per call, shared by the batch) and in evaluation unless you
pass ``logdet_eval``; call ``guide.eval()`` before scoring so that any ``logdet_eval`` you
set is used.

Solver. ImpFlow blocks in the recipes solve with Anderson acceleration rather than the
family's Broyden: the same cost per training step and 1.1x to 2.5x faster sampling in
``benchmarks/vi.py``.

Direction. For guides (``explicit="sample"``) Pyro's ``_call`` is a block's forward map,
explicit for residual blocks: sampling and scoring the guide's own samples never solve.
``explicit="score"`` puts the explicit map on ``log_prob`` instead (density estimation:
data are scored without a solve, sampling solves). ImpFlow blocks solve in both directions
either way.

``JitTrace_ELBO`` cannot trace the blocks: they raise
:class:`~implicit_transforms.errors.TracingError` (use ``Trace_ELBO``). With Pyro's
``AutoNormalizingFlow`` any flow, Pyro's own included, first fails inside Pyro with a bare
``AssertionError`` (the guide stores one of its parameters twice); :class:`AutoFlowStack`
does not, so the JIT losses reach the blocks' clear error.

References:
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", ICML 2015; Kingma et
    al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

try:
    import pyro
    import pyro.distributions as pdist
    from pyro.distributions import constraints
    from pyro.distributions.conditional import (
        ConditionalComposeTransformModule,
        ConditionalTransformModule,
    )
    from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
    from pyro.distributions.transforms import (
        AffineAutoregressive,
        ConditionalAffineAutoregressive,
    )
    from pyro.infer.autoguide import AutoContinuous
    from pyro.infer.autoguide.initialization import init_to_median
    from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
    from pyro.params import param_with_module_name
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "implicit_transforms.plugins.pyro needs Pyro: pip install 'implicit-transforms[pyro]'"
    ) from err

from implicit_transforms.plugins.pyro.transforms import (
    BlockTransformModule,
    ConditionalBlockTransformModule,
    ConditionalInverseBlockTransformModule,
    InverseBlockTransformModule,
)

from implicit_transforms.blocks import (
    EXACT_LOGDET_MAX_DIM,
    FAMILIES,
    BlockOptions,
    InvertibleBlock,
    build_block,
    make_options,
)
from implicit_transforms.logdet import ExactLogDet
from implicit_transforms.recipes.families import (
    GUIDE_ACTIVATION,
    GUIDE_INIT_SCALE,
    GUIDE_MIXES,
    GuideMix,
    recipe_hidden,
    recipe_solver,
)
from implicit_transforms.validation import check_hidden, check_positive_int

__all__ = [
    "RECIPE_ACTIVATION",
    "RECIPE_NAMES",
    "AutoFlowStack",
    "ConditionalElementwiseAffine",
    "ElementwiseAffine",
    "conditional_flow_stack",
    "flow_stack",
    "recipe_options",
]

RECIPE_ACTIVATION = GUIDE_ACTIVATION
"""The recipes' activation: the guides' one of the assembly table
(:data:`~implicit_transforms.recipes.families.GUIDE_ACTIVATION`)."""

DEFAULT_BLOCKS = {"impflow": 2, "resflow": 4, "iresnet": 4, "monotone": 4}
"""Blocks per stack by family: the same number of residual networks (ImpFlow has two; a
Monotone block has one network, solved in both directions, so 4 as the residual families)."""

Explicit = Literal["sample", "score"]


# -- elementwise affine layers ------------------------------------------------------------------
def _as_vector(value: Tensor | float, dim: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, dim)):
        raise ValueError(
            f"{name} must be a float or a vector of shape ({dim},), got {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t}")
    return t.detach().clone().expand(dim).clone()


class ElementwiseAffine(TransformModule):
    r"""Learnable elementwise affine map ``y = loc + exp(log_scale) * x`` on ``(*, D)``.

    ``log|det dy/dx| = sum_i log_scale_i``. The ActNorm layer of Glow without its
    data-dependent initialisation (variational inference has no data to initialise from):
    it starts at ``init_loc`` and ``init_scale`` (the identity by default).

    Args:
        dim: ``D``.
        init_loc: starting ``loc`` (a float or a vector of shape ``(D,)``).
        init_scale: starting ``exp(log_scale)``, positive.
        cache_size: 1 (default) caches the last ``(x, y)`` pair; 0 disables.

    Example:
        >>> import torch
        >>> t = ElementwiseAffine(3, init_loc=1.0, init_scale=2.0)
        >>> t(torch.zeros(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]], grad_fn=<AddBackward0>)
    """

    bijective = True
    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)

    def __init__(
        self,
        dim: int,
        *,
        init_loc: Tensor | float = 0.0,
        init_scale: Tensor | float = 1.0,
        cache_size: int = 1,
    ) -> None:
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        super().__init__(cache_size=cache_size)
        self.dim = check_positive_int(dim, "dim")
        scale = _as_vector(init_scale, dim, "init_scale")
        if not bool((scale > 0).all()):
            raise ValueError(f"init_scale must be positive, got {scale}")
        self.loc = nn.Parameter(_as_vector(init_loc, dim, "init_loc"))
        self.log_scale = nn.Parameter(scale.log())

    def with_cache(self, cache_size: int = 1) -> ElementwiseAffine:
        """A transform sharing this one's parameters with another cache size."""
        if cache_size == self._cache_size:
            return self
        other = ElementwiseAffine(self.dim, cache_size=cache_size)
        other.loc, other.log_scale = self.loc, self.log_scale
        return other

    def _check(self, x: Tensor, name: str) -> None:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"ElementwiseAffine: {name} must have shape (*, {self.dim}), got {tuple(x.shape)}"
            )

    def _call(self, x: Tensor) -> Tensor:
        self._check(x, "x")
        return self.loc + self.log_scale.exp() * x

    def _inverse(self, y: Tensor) -> Tensor:
        self._check(y, "y")
        return (y - self.loc) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``sum_i log_scale_i``, shape ``x.shape[:-1]``."""
        return self.log_scale.sum().expand(x.shape[:-1])


class ConditionalElementwiseAffine(ConditionalTransformModule):
    r"""Elementwise affine map whose ``loc`` and ``log_scale`` are functions of a context:
    ``(loc, log_scale) = (loc_0, log s_0) + h(c)`` with a small MLP ``h`` whose last layer
    starts at zero, so the map starts at ``init_loc`` and ``init_scale`` for every context.

    Args:
        dim: ``D``.
        context_dim: ``C`` (contexts of shape ``(*, C)``).
        hidden_dims: hidden sizes of ``h`` (ELU activations; an int is one hidden layer).
        init_loc: starting ``loc``.
        init_scale: starting scale, positive.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden_dims: int | Sequence[int] = (32,),
        *,
        init_loc: Tensor | float = 0.0,
        init_scale: Tensor | float = 1.0,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.context_dim = check_positive_int(context_dim, "context_dim")
        sizes = [context_dim, *check_hidden(hidden_dims, "hidden_dims")]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ELU()]
        last = nn.Linear(sizes[-1], 2 * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        scale = _as_vector(init_scale, dim, "init_scale")
        if not bool((scale > 0).all()):
            raise ValueError(f"init_scale must be positive, got {scale}")
        self.loc = nn.Parameter(_as_vector(init_loc, dim, "init_loc"))
        self.log_scale = nn.Parameter(scale.log())

    def condition(self, context: Tensor) -> pdist.transforms.AffineTransform:
        """The affine transform for ``context`` of shape ``(*, C)``."""
        if not isinstance(context, Tensor) or context.dim() < 1:
            got = type(context).__name__ if not isinstance(context, Tensor) else "a scalar"
            raise ValueError(
                f"ConditionalElementwiseAffine: context must have shape (*, {self.context_dim}), "
                f"got {got}"
            )
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"ConditionalElementwiseAffine: context must have shape (*, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        shift, log_scale = self.net(context.to(self.loc.dtype)).chunk(2, dim=-1)
        return pdist.transforms.AffineTransform(
            self.loc + shift, torch.exp(self.log_scale + log_scale), event_dim=1, cache_size=1
        )


# -- recipes ---------------------------------------------------------------------------------
def recipe_options(
    input_dim: int, family: str = "impflow", options: BlockOptions | None = None, **changes: Any
) -> BlockOptions:
    """The :class:`~implicit_transforms.blocks.BlockOptions` the recipes give their blocks.

    ``options`` and ``changes`` as everywhere; then, for every field left unset (each choice
    measured in ``benchmarks/vi.py``, see ``benchmarks/README.md``):

    * ``activation`` is :data:`RECIPE_ACTIVATION`;
    * for ``input_dim <= 64`` the training log-det is exact (``ExactLogDet``), unless a
      setting of the default stochastic estimator (``n_probes``, ``n_exact_terms``,
      ``n_terms``, ``generator``) was given;
    * ImpFlow blocks solve with :class:`~implicit_transforms.solvers.Anderson` (with the
      ``on_failure`` policy given, if any).

    Example:
        >>> recipe_options(3).activation
        'lipswish'
        >>> type(recipe_options(3).logdet_train).__name__
        'ExactLogDet'
        >>> recipe_options(100).logdet_train is None
        True
        >>> type(recipe_options(3, "impflow").solver).__name__
        'Anderson'
    """
    check_positive_int(input_dim, "input_dim")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    opts = make_options(options, changes)
    fill: dict[str, Any] = {}
    if opts.activation is None:
        fill["activation"] = RECIPE_ACTIVATION
    if family == "impflow" and opts.solver is None:
        fill["solver"] = recipe_solver(opts.on_failure or "raise")
    stochastic = ("logdet_train", "n_probes", "n_exact_terms", "n_terms", "generator")
    if input_dim <= EXACT_LOGDET_MAX_DIM and all(getattr(opts, f) is None for f in stochastic):
        fill["logdet_train"] = ExactLogDet()
    return opts.replace(**fill) if fill else opts


RECIPE_NAMES = sorted([*FAMILIES, *GUIDE_MIXES])
"""Every name the recipes take: the block families and the mixes of
:data:`~implicit_transforms.recipes.families.GUIDE_MIXES`."""


def _check_recipe(
    family: str, blocks: int | None, explicit: str, input_dim: int | None = None
) -> tuple[int, GuideMix | None]:
    """``(blocks or repeats, mix)``: the number of blocks of a family, or the repeats of a
    mix's unit, and the mix (None for a plain family)."""
    if family not in FAMILIES and family not in GUIDE_MIXES:
        raise ValueError(f"family must be one of {RECIPE_NAMES}, got {family!r}")
    if explicit not in ("sample", "score"):
        raise ValueError(f"explicit must be 'sample' or 'score', got {explicit!r}")
    mix = GUIDE_MIXES.get(family)
    if mix is not None and explicit != "sample":
        raise ValueError(
            f"{family!r} has IAF layers, explicit only when sampling: explicit='score' would "
            "make every density evaluation D sequential passes. Use explicit='sample' (guides), "
            "or a block family for density estimation"
        )
    if mix is not None and input_dim == 1:
        raise ValueError(
            f"{family!r} needs a latent dimension of at least 2 (an autoregressive layer on one "
            "coordinate is a constant affine map): use a block family, e.g. 'resflow'"
        )
    if blocks is None:
        return (DEFAULT_BLOCKS[family] if mix is None else mix.repeats), mix
    return check_positive_int(blocks, "blocks"), mix


def _hidden(hidden_dims: int | Sequence[int] | None, input_dim: int) -> list[int]:
    if hidden_dims is None:
        return recipe_hidden(input_dim)
    return check_hidden(hidden_dims, "hidden_dims")


def _start_at_identity(block: InvertibleBlock, scale: float = 0.0) -> InvertibleBlock:
    """Multiply the last layer of every network by ``scale``: 0 (default) gives ``g = 0``,
    the block is the identity."""
    with torch.no_grad():
        for net in block.networks():
            for param in net.layers[-1].parameters():
                param.mul_(scale)
    return block


def _iaf(
    input_dim: int, hidden: list[int], index: int, identity: bool, context_dim: int | None
) -> AffineAutoregressive | ConditionalAffineAutoregressive:
    """Pyro's (conditional) affine autoregressive layer, the ``index``-th of a stack.

    Its variable order is fixed, not Pyro's random permutation: natural for even ``index``,
    reversed for odd. The order is a buffer the parameter store does not hold, so a random
    one would not survive ``pyro.get_param_store().save`` / ``.load`` into a fresh guide.
    ``identity`` zeroes the network's last layer (shift 0, ``log_scale`` 0).
    """
    order = cast(torch.LongTensor, torch.arange(input_dim))
    order = cast(torch.LongTensor, order.flip(0)) if index % 2 else order
    net = (
        AutoRegressiveNN(input_dim, hidden, permutation=order)
        if context_dim is None
        else ConditionalAutoRegressiveNN(input_dim, context_dim, hidden, permutation=order)
    )
    if identity:
        with torch.no_grad():
            for param in net.layers[-1].parameters():
                param.zero_()
    return (
        AffineAutoregressive(net) if context_dim is None else ConditionalAffineAutoregressive(net)
    )


def _mix_layers(
    mix: GuideMix,
    repeats: int,
    input_dim: int,
    hidden: list[int],
    opts: BlockOptions,
    context_dim: int | None = None,
) -> list[Any]:
    """The IAF layers and blocks of a mix, in the table's order (no final affine layer)."""
    parts: list[Any] = []
    for kind in mix.layers(repeats):
        if kind == "iaf":
            n_iaf = sum(
                isinstance(p, (AffineAutoregressive, ConditionalAffineAutoregressive))
                for p in parts
            )
            parts.append(_iaf(input_dim, hidden, n_iaf, mix.iaf_identity, context_dim))
        else:
            block = build_block(
                mix.family, input_dim, hidden, context_features=context_dim, options=opts
            )
            block = _start_at_identity(block, mix.block_scale)
            parts.append(
                BlockTransformModule(block)
                if context_dim is None
                else ConditionalBlockTransformModule(block)
            )
    return parts


def flow_stack(
    input_dim: int,
    family: str = "impflow",
    blocks: int | None = None,
    hidden_dims: int | Sequence[int] | None = None,
    *,
    init_loc: Tensor | float = 0.0,
    init_scale: Tensor | float = 1.0,
    explicit: Explicit = "sample",
    options: BlockOptions | None = None,
    **changes: Any,
) -> ComposeTransformModule:
    r"""A whole guide transform: ``blocks`` blocks of ``family``, each followed by an
    elementwise affine layer, or a mix of IAF layers and blocks (see the module docstring for
    the layouts and why).

    Usable as ``AutoNormalizingFlow``'s ``init_transform_fn`` (``functools.partial(flow_stack,
    family="resflow")``); :class:`AutoFlowStack` builds the same stack and starts it at the
    model's initial values.

    Args:
        input_dim: ``D`` (the latent dimension; events ``(*, D)``).
        family: ``"impflow"`` (default), ``"resflow"``, ``"iresnet"``, ``"monotone"``, or a
            mix, ``"iaf-resflow"`` or ``"iaf-impflow"`` (``RECIPE_NAMES``; a mix needs
            ``D >= 2``).
        blocks: number of blocks (default: 2 ImpFlow or 4 residual or monotone blocks, the
            same number of networks); for a mix, the repeats of its unit (default: the
            table's).
        hidden_dims: hidden sizes of every network (default two layers of
            ``max(32, 4 D)``).
        init_loc: starting location of the last affine layer (float or ``(D,)``).
        init_scale: starting scale of the last affine layer (float or ``(D,)``).
        explicit: ``"sample"`` (guides: sampling is explicit for residual blocks) or
            ``"score"`` (density estimation: ``log_prob`` is explicit).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change; unset
            ones follow :func:`recipe_options`.

    Returns:
        A ``ComposeTransformModule`` with ``cache_size=1`` (a guide scores its own samples
        without inverting anything).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> t = flow_stack(3, "resflow", blocks=2, hidden_dims=[16])
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), t)
        >>> z = q.rsample((5,))
        >>> torch.allclose(q.log_prob(z), dist.Normal(torch.zeros(3), 1.0).to_event(1).log_prob(z))
        True
        >>> [type(p).__name__ for p in flow_stack(3, "iaf-resflow", hidden_dims=[8]).parts]
        ['AffineAutoregressive', 'BlockTransformModule', 'AffineAutoregressive', 'BlockTransformModule', 'ElementwiseAffine']
    """
    check_positive_int(input_dim, "input_dim")
    n_blocks, mix = _check_recipe(family, blocks, explicit, input_dim)
    hidden = _hidden(hidden_dims, input_dim)
    opts = recipe_options(input_dim, family if mix is None else mix.family, options, **changes)
    if mix is not None:
        final = ElementwiseAffine(input_dim, init_loc=init_loc, init_scale=init_scale)
        layers = _mix_layers(mix, n_blocks, input_dim, hidden, opts)
        return ComposeTransformModule([*layers, final], cache_size=1)
    wrap = BlockTransformModule if explicit == "sample" else InverseBlockTransformModule
    parts: list[TransformModule] = []
    for k in range(n_blocks):
        block = _start_at_identity(build_block(family, input_dim, hidden, options=opts))
        last = k == n_blocks - 1
        parts += [
            wrap(block),
            ElementwiseAffine(
                input_dim,
                init_loc=init_loc if last else 0.0,
                init_scale=init_scale if last else 1.0,
            ),
        ]
    return ComposeTransformModule(parts, cache_size=1)


def conditional_flow_stack(
    input_dim: int,
    context_dim: int,
    family: str = "impflow",
    blocks: int | None = None,
    hidden_dims: int | Sequence[int] | None = None,
    *,
    context_hidden_dims: int | Sequence[int] | None = None,
    init_loc: Tensor | float = 0.0,
    init_scale: Tensor | float = 1.0,
    explicit: Explicit = "sample",
    options: BlockOptions | None = None,
    **changes: Any,
) -> ConditionalComposeTransformModule:
    r"""The conditional version of :func:`flow_stack`, for amortised inference
    ``q(z | c)``: every block takes the context as an additive bias of its networks' first
    layer, and every affine layer's ``loc`` and ``log_scale`` are functions of the context
    (:class:`ConditionalElementwiseAffine`). A mix's IAF layers are Pyro's
    ``conditional_affine_autoregressive`` (the context enters their networks' input).

    Args:
        input_dim: ``D``.
        context_dim: ``C`` (contexts of shape ``(*, C)``).
        family: a block family or a mix, as :func:`flow_stack`.
        blocks: number of blocks, or a mix's repeats (default as :func:`flow_stack`).
        hidden_dims: hidden sizes of every block network (an int is one hidden layer).
        context_hidden_dims: hidden sizes of the affine layers' context networks (default
            ``hidden_dims[:1]``).
        init_loc: starting location of the last affine layer.
        init_scale: starting scale of the last affine layer.
        explicit: ``"sample"`` or ``"score"`` (as :func:`flow_stack`).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.

    Returns:
        A ``ConditionalComposeTransformModule``; ``.condition(context)`` gives the transform.

    Example:
        >>> import torch, pyro.distributions as dist
        >>> ct = conditional_flow_stack(2, 3, "resflow", blocks=1, hidden_dims=[8])
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> q = dist.ConditionalTransformedDistribution(base, [ct]).condition(torch.randn(3))
        >>> q.rsample((4,)).shape
        torch.Size([4, 2])
        >>> mix = conditional_flow_stack(2, 3, "iaf-impflow", hidden_dims=[8])
        >>> dist.ConditionalTransformedDistribution(base, [mix]).condition(torch.randn(3)).rsample((4,)).shape
        torch.Size([4, 2])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(context_dim, "context_dim")
    n_blocks, mix = _check_recipe(family, blocks, explicit, input_dim)
    hidden = _hidden(hidden_dims, input_dim)
    ctx_hidden = (
        hidden[:1]
        if context_hidden_dims is None
        else check_hidden(context_hidden_dims, "context_hidden_dims")
    )
    opts = recipe_options(input_dim, family if mix is None else mix.family, options, **changes)
    if mix is not None:
        layers = _mix_layers(mix, n_blocks, input_dim, hidden, opts, context_dim)
        last_c = ConditionalElementwiseAffine(
            input_dim, context_dim, ctx_hidden, init_loc=init_loc, init_scale=init_scale
        )
        return ConditionalComposeTransformModule([*layers, last_c], cache_size=1)
    wrap = (
        ConditionalBlockTransformModule
        if explicit == "sample"
        else ConditionalInverseBlockTransformModule
    )
    parts: list[ConditionalTransformModule] = []
    for k in range(n_blocks):
        block = build_block(family, input_dim, hidden, context_features=context_dim, options=opts)
        last = k == n_blocks - 1
        parts += [
            wrap(_start_at_identity(block)),
            ConditionalElementwiseAffine(
                input_dim,
                context_dim,
                ctx_hidden,
                init_loc=init_loc if last else 0.0,
                init_scale=init_scale if last else 1.0,
            ),
        ]
    return ConditionalComposeTransformModule(parts, cache_size=1)


_NO_CLOSED_FORM = (
    "AutoFlowStack: a flow guide has no closed-form {what} (its density is a normal pushed "
    "through nonlinear blocks; the base's {what} does not map to the guide's). Estimate it from "
    "samples: samples = pyro.infer.Predictive(model, guide=guide, num_samples=1000)"
    "(*model_args), then {how} for each latent site"
)


# -- the autoguide ---------------------------------------------------------------------------
class AutoFlowStack(AutoContinuous):
    r"""An autoguide ``q(z) = T_# N(0, I)`` with ``T`` a :func:`flow_stack`, started at the
    model's initial values.

    Like Pyro's ``AutoNormalizingFlow`` (all latent sites are flattened into one unconstrained
    vector of size ``D``), with three differences: the stack's last affine layer starts at
    ``init_loc_fn``'s values with scale ``init_scale`` (so the guide starts where
    ``AutoNormal`` starts), the settings of the blocks are the recipe's (exact log-det for
    ``D <= 64``, see :func:`recipe_options`), and it stores no parameter twice, so Pyro's JIT
    losses reach the blocks' own :class:`~implicit_transforms.errors.TracingError`.

    Args:
        model: a Pyro model.
        family: a block family (``"impflow"``, the default, ``"resflow"``, ``"iresnet"``,
            ``"monotone"``) or a mix of IAF layers and blocks (``"iaf-resflow"``,
            ``"iaf-impflow"``), as :func:`flow_stack`.
        blocks: number of blocks, or a mix's repeats (default as :func:`flow_stack`).
        hidden_dims: hidden sizes of every network, an int for one hidden layer (default two
            layers of ``max(32, 4 D)``).
        init_loc_fn: per-site initialisation (Pyro's ``init_to_median`` by default).
        init_scale: starting scale of the guide, positive (default: 0.1, as ``AutoNormal``,
            for a block family; a mix's own, 1, as Pyro's IAF guide: see
            :class:`~implicit_transforms.recipes.families.GuideMix`).
        explicit: ``"sample"`` (default) or ``"score"``, as in :func:`flow_stack`.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> pyro.clear_param_store()
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        >>> guide = AutoFlowStack(model, "resflow", blocks=1, hidden_dims=[8])
        >>> guide()["z"].shape
        torch.Size([3])
    """

    def __init__(
        self,
        model: Callable[..., Any],
        family: str = "impflow",
        blocks: int | None = None,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float | None = None,
        explicit: Explicit = "sample",
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> None:
        _, mix = _check_recipe(family, blocks, explicit)  # the dimension: at the first call
        if init_scale is None:
            init_scale = GUIDE_INIT_SCALE if mix is None else mix.init_scale
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)):
            raise TypeError(f"init_scale must be a positive float, got {type(init_scale).__name__}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive float, got {init_scale!r}")
        make_options(options, changes)  # unknown or conflicting settings fail here, not later
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._stack_args: dict[str, Any] = {
            "family": family,
            "blocks": blocks,
            "hidden_dims": None
            if hidden_dims is None
            else check_hidden(hidden_dims, "hidden_dims"),
            "explicit": explicit,
            "options": options,
            **changes,
        }
        self.init_scale = float(init_scale)
        self.transform: ComposeTransformModule | None = None

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc()
        stack = flow_stack(
            self.latent_dim, init_loc=loc, init_scale=self.init_scale, **self._stack_args
        )
        self.transform = stack.to(dtype=loc.dtype, device=loc.device)

    def get_base_dist(self) -> pdist.TorchDistribution:
        """``N(0, I_D)`` in the dtype and on the device of the guide's parameters."""
        p = next(iter(self._transform().parameters()))
        return pdist.Normal(p.new_zeros(self.latent_dim), p.new_ones(())).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> ComposeTransformModule:
        """The flow stack (built on the first call of the guide), holding the parameter
        store's tensors.

        Pyro registers a plain ``nn.Module`` inside a guide with ``pyro.module(...,
        update_module_params=False)``: after ``pyro.get_param_store().load(...)`` the module
        would keep its own tensors while the optimiser updates the loaded ones. Here the
        stack adopts whatever the store holds under its names at every call, so saving and
        reloading through the parameter store restores the guide.
        """
        transform = self._transform()
        prefix = self._pyro_get_fullname("transform")
        store = pyro.get_param_store()
        for name, param in transform.named_parameters():
            fullname = param_with_module_name(prefix, name)
            held = store[fullname] if fullname in store else None
            if held is not None and (held.shape, held.dtype) != (param.shape, param.dtype):
                raise ValueError(
                    f"AutoFlowStack: the parameter store holds {fullname!r} with shape "
                    f"{tuple(held.shape)} and dtype {held.dtype}, but this guide's parameter "
                    f"has shape {tuple(param.shape)} and dtype {param.dtype}: another guide of "
                    "the same name used the store. Call pyro.clear_param_store() or build the "
                    "guides as submodules with different names"
                )
        pyro.module(prefix, transform, update_module_params=True)
        return transform

    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Not available: see the error's advice (sample, then take the median)."""
        raise NotImplementedError(
            _NO_CLOSED_FORM.format(what="median", how="samples[site].median(0).values")
        )

    def quantiles(self, quantiles: Any, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Not available: see the error's advice (sample, then take quantiles)."""
        raise NotImplementedError(
            _NO_CLOSED_FORM.format(what="quantiles", how="torch.quantile(samples[site], q, dim=0)")
        )

    def _transform(self) -> ComposeTransformModule:
        if self.transform is None:
            raise RuntimeError(
                "AutoFlowStack: call the guide once (e.g. guide(*model_args) or one SVI step) "
                "before asking for its posterior"
            )
        return self.transform
