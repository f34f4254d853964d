"""Residual networks ``g`` with ``Lip(g) < 1`` in their input, optionally conditioned on a context."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from implicit_transforms.lipschitz.activations import activation_expansion, make_activation
from implicit_transforms.lipschitz.spectral import SpectralConv2d, SpectralLinear, check_coeff
from implicit_transforms.recipes.families import LAYER_COEFF, NETWORK_ACTIVATION

__all__ = ["ZERO_INIT_DIVISOR", "LipschitzCNN", "LipschitzMLP", "LipschitzNet"]

ZERO_INIT_DIVISOR = 1000.0
"""What ``zero_init=True`` divides a network's last initial weight by: Residual Flows' and
ImpFlow's official ``zero_init`` (their spectral layers divide the initial weight by 1000).
Near zero, not zero: a zero matrix has no singular vectors to start the power iteration from,
and its normalisation ``W / max(1, s / c)`` is then the identity scaling (``s < c``), so
nothing is divided by the small norm and the gradient reaches ``W`` unchanged."""


class LipschitzNet(nn.Module):
    r"""Base class: a chain ``layers[0] -> act -> layers[1] -> ... -> layers[-1]``.

    Each layer is spectrally normalised with coefficient ``c`` and each activation is
    1-Lipschitz, so ``Lip(g) <= c^len(layers) < 1`` in ``x``:

    .. math:: g = W_L \circ \phi \circ \cdots \circ \phi \circ W_1, \qquad
        \|W_i\|_2 \le c < 1,\ \mathrm{Lip}(\phi) \le 1
        \ \Rightarrow\ \mathrm{Lip}(g) \le c^L < 1.

    A context, when given, enters as an additive bias after the first layer (an unconstrained
    function of the context), so the bound holds in ``x`` for every fixed context.

    Attributes:
        event_dims: number of trailing input dimensions of one sample (1 for vectors, 3 for
            images).
        context_features: size of the context vector, or ``None`` for unconditional nets.
    """

    event_dims: int
    context_features: int | None
    layers: nn.ModuleList
    activations: nn.ModuleList
    context_net: nn.Module | None
    _compiled: Callable[..., Tensor] | None = None

    def expected_event_shape(self) -> tuple[int | None, ...]:
        """Event shape the net accepts; ``None`` marks a free size."""
        raise NotImplementedError

    def _context_bias(self, context: Tensor, like: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Evaluate ``g(x; context)``; ``x: (B, *event)``, ``context: (B, C)`` (or ``None``).

        The layers' weights are normalised first (eagerly: that step reads the weights'
        content), then the pure chain :meth:`evaluate` runs, through its compiled version
        (:meth:`compile_evaluation`) when no autograd graph is being recorded.

        Args:
            x: input ``(B, *event)``.
            context: ``(B, context_features)``, required exactly when the net was built with
                ``context_features``.

        Returns:
            ``g(x; context)``, shape ``(B, *event)``.

        Raises:
            ValueError: for a missing or unexpected context.
        """
        if self.context_net is not None:
            if context is None:
                raise ValueError(
                    f"{type(self).__name__} was built with context_features="
                    f"{self.context_features} but got context=None"
                )
            ctx_bias: Tensor | None = self._context_bias(context, x)
        elif context is not None:
            raise ValueError(f"{type(self).__name__} has no context input but got a context")
        else:
            ctx_bias = None
        spatial = tuple(x.shape[-2:]) if self.event_dims == 3 else None
        weights = [layer.prepare(spatial) for layer in self._normalised_layers()]
        # Compiled code serves the evaluations without autograd (solver iterations, sampling):
        # evaluations that record a graph feed log-det estimators whose gradients need a
        # double backward, which compiled (AOT autograd) graphs do not support.
        if self._compiled is not None and not torch.is_grad_enabled():
            return self._compiled(x, weights, ctx_bias)
        return self.evaluate(x, weights, ctx_bias)

    def evaluate(self, x: Tensor, weights: list[Tensor], ctx_bias: Tensor | None) -> Tensor:
        """The pure network evaluation with given (normalised) weights: no data-dependent
        control flow, so ``torch.compile`` traces it without graph breaks.

        Args:
            x: input ``(B, *event)``.
            weights: the normalised weight of every layer (``layer.prepare(...)``).
            ctx_bias: the context's additive bias after the first layer, or ``None``.

        Returns:
            ``g(x)``, shape ``(B, *event)``.
        """
        layers = self._normalised_layers()
        h = layers[0].apply_weight(x, weights[0])
        if ctx_bias is not None:
            h = h + ctx_bias
        for act, layer, weight in zip(self.activations, layers[1:], weights[1:], strict=True):
            h = layer.apply_weight(act(h), weight)
        return h

    def _normalised_layers(self) -> list[SpectralConv2d | SpectralLinear]:
        return list(self.layers)  # type: ignore[arg-type]

    @torch.no_grad()
    def _scale_last_weight(self) -> None:
        """``zero_init``: the last layer's weight divided by
        :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR`. The layer notices
        the new content at its next use (its norm is keyed by the weight's content); a dense
        layer's norm is redone now, as the official code's initialisation does."""
        last = self._normalised_layers()[-1]
        last.weight.div_(ZERO_INIT_DIVISOR)
        if isinstance(last, SpectralLinear):
            last.refine()

    def compile_evaluation(self, **options: Any) -> LipschitzNet:
        """Use ``torch.compile(self.evaluate, dynamic=True, **options)`` for the evaluations
        made without autograd (solver iterations, sampling, evaluation-mode solves).

        Only the pure chain is compiled; normalising the weights stays eager (it compares the
        weights' content and may run an eigen-decomposition). Shapes are dynamic because a
        solve evaluates fewer samples as they converge. Sets
        ``torch._functorch.config.donated_buffer = False`` for the process (our gradients
        reuse a graph several times, which donated buffers forbid).

        Args:
            **options: keyword arguments of ``torch.compile`` (``dynamic`` defaults to True).

        Returns:
            ``self``.
        """
        options.setdefault("dynamic", True)
        # Log-det estimators and implicit gradients take several vector-Jacobian products
        # through one graph (retain_graph=True), so a compiled backward must not donate (free)
        # its buffers after the first. The setting is process-wide and read when a backward
        # runs: opting into compilation turns donation off for the process.
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        self._compiled = torch.compile(self.evaluate, **options)
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled functions are rebuilt, not pickled
        return state

    def lipschitz_chain(self) -> list[nn.Module]:
        """The composition ``layer, act, layer, ..., layer`` whose norms bound ``Lip(g)``.

        Returns:
            The modules in order of application (what :func:`certify` multiplies).
        """
        chain: list[nn.Module] = [self.layers[0]]
        for act, layer in zip(self.activations, self.layers[1:], strict=True):
            chain += [act, layer]
        return chain


class LipschitzMLP(LipschitzNet):
    r"""Lipschitz MLP ``g: (B, D) -> (B, D)`` through the hidden widths, with ``Lip(g) < 1``.

    Args:
        features: ``D``.
        hidden_features: sizes of the hidden layers.
        coeff: Lipschitz coefficient per layer, in ``(0, 1)``.
        activation: a name of :data:`~implicit_transforms.lipschitz.ACTIVATIONS`
            (``"lipswish"``, ``"elu"``, ``"sin"``, or the concatenated ``"clipswish"`` and
            ``"cpila"``, after which the next layer takes twice the hidden size).
        context_features: size of an optional context vector.
        n_power_iterations: power iterations per weight change (convolutions and large dense
            layers; smaller dense layers use the exact norm).
        zero_init: divide the last layer's initial weight by
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR`, so that ``g``
            starts near a constant (its bias) and a residual or implicit block near a shift of
            the identity (the official ``zero_init``).

    Example:
        >>> import torch
        >>> g = LipschitzMLP(2, [16])
        >>> g(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
        >>> near_zero = LipschitzMLP(2, [16], zero_init=True)
        >>> bool(near_zero.layers[-1].weight.abs().max() < 1e-3)
        True
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        *,
        coeff: float = LAYER_COEFF,
        activation: str = NETWORK_ACTIVATION,
        context_features: int | None = None,
        n_power_iterations: int = 2,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("features", features)
        hidden = list(hidden_features)
        for h in hidden:
            _check_positive("hidden_features entries", h)
        check_coeff(coeff)
        sizes = [features, *hidden, features]
        # a concatenated activation (CLipSwish, CPila) doubles the next layer's input
        widths = [features] + [h * activation_expansion(activation) for h in hidden]
        self.features = features
        self.event_dims = 1
        self.context_features = context_features
        self.layers = nn.ModuleList(
            SpectralLinear(a, b, coeff=coeff, n_power_iterations=n_power_iterations)
            for a, b in zip(widths, sizes[1:], strict=True)
        )
        self.activations = nn.ModuleList(make_activation(activation, dim=-1) for _ in hidden)
        self.context_net = None
        if context_features is not None:
            _check_positive("context_features", context_features)
            self.context_net = nn.Linear(context_features, sizes[1], bias=False)
        if _check_flag("zero_init", zero_init):
            self._scale_last_weight()

    def expected_event_shape(self) -> tuple[int | None, ...]:
        """``(D,)``."""
        return (self.features,)

    def _context_bias(self, context: Tensor, like: Tensor) -> Tensor:
        assert self.context_net is not None
        return self.context_net(context)


class LipschitzCNN(LipschitzNet):
    r"""Lipschitz CNN ``g: (B, C, H, W) -> (B, C, H, W)``: conv ``k x k`` -> act -> conv
    ``1 x 1`` -> act -> conv ``k x k`` (Residual Flows' block shape), ``Lip(g) < 1``.

    Args:
        channels: ``C``.
        hidden_channels: channels of the two hidden feature maps.
        coeff: Lipschitz coefficient per layer, in ``(0, 1)``.
        activation: a name of :data:`~implicit_transforms.lipschitz.ACTIVATIONS` (the
            concatenated ``"clipswish"`` and ``"cpila"`` double the channels the next
            convolution takes).
        context_features: size of an optional context vector (enters as a per-channel bias).
        kernel_size: odd size of the outer convolutions.
        n_power_iterations: power iterations per weight change (convolutions and large dense
            layers; smaller dense layers use the exact norm).
        zero_init: divide the last convolution's initial weight by
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR` (the official
            ``zero_init``: a block starts near a shift of the identity).

    Example:
        >>> import torch
        >>> g = LipschitzCNN(3, 8, coeff=0.9)
        >>> g(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 3, 6, 6])
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 32,
        *,
        coeff: float = LAYER_COEFF,
        activation: str = NETWORK_ACTIVATION,
        context_features: int | None = None,
        kernel_size: int = 3,
        n_power_iterations: int = 2,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("channels", channels)
        _check_positive("hidden_channels", hidden_channels)
        check_coeff(coeff)
        self.channels = channels
        self.event_dims = 3
        self.context_features = context_features
        kw = {"coeff": coeff, "n_power_iterations": n_power_iterations}
        wide = hidden_channels * activation_expansion(activation)  # after the activation
        self.layers = nn.ModuleList(
            [
                SpectralConv2d(channels, hidden_channels, kernel_size, **kw),  # type: ignore[arg-type]
                SpectralConv2d(wide, hidden_channels, 1, **kw),  # type: ignore[arg-type]
                SpectralConv2d(wide, channels, kernel_size, **kw),  # type: ignore[arg-type]
            ]
        )
        self.activations = nn.ModuleList(make_activation(activation, dim=-3) for _ in range(2))
        self.context_net = None
        if context_features is not None:
            _check_positive("context_features", context_features)
            self.context_net = nn.Linear(context_features, hidden_channels, bias=False)
        if _check_flag("zero_init", zero_init):
            self._scale_last_weight()

    def expected_event_shape(self) -> tuple[int | None, ...]:
        """``(C, None, None)``: any spatial size."""
        return (self.channels, None, None)

    def _context_bias(self, context: Tensor, like: Tensor) -> Tensor:
        assert self.context_net is not None
        return self.context_net(context)[:, :, None, None]


def _check_flag(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
