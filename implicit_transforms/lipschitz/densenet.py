r"""i-DenseNet residual networks: dense layers whose concatenations are weighted so that
``Lip(g) < 1`` still holds.

A dense layer maps ``x`` to ``[eta1 x, eta2 h(x)]`` with ``h = act o W`` (a spectrally
normalised layer and a 1-Lipschitz activation) and ``eta1^2 + eta2^2 = 1`` (from two learnable
raw parameters). Then

.. math:: \big\|[\eta_1 (x - y),\ \eta_2 (h(x) - h(y))]\big\|^2
    \le (\eta_1^2 + \eta_2^2 \|W\|^2)\,\|x - y\|^2,

so each dense layer is ``sqrt(eta1^2 + eta2^2 ||W||^2) <= 1``-Lipschitz (strictly below 1 while
``eta2 > 0`` and ``||W|| <= c < 1``), and the network, dense layers followed by one spectral
layer back to the input size, is bounded by the product of the per-layer bounds, at most
``c < 1``. :func:`~implicit_transforms.lipschitz.certify` multiplies exactly these bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implicit_transforms.lipschitz.activations import activation_expansion, make_activation
from implicit_transforms.lipschitz.networks import LipschitzNet, _check_flag, _check_positive
from implicit_transforms.lipschitz.spectral import SpectralConv2d, SpectralLinear, check_coeff
from implicit_transforms.recipes.families import LAYER_COEFF, NETWORK_ACTIVATION

__all__ = ["DenseStep", "LipschitzDenseCNN", "LipschitzDenseMLP", "LipschitzDenseNet"]


def concat_weights(raw: Tensor) -> Tensor:
    r"""The normalised concatenation weights ``(eta1, eta2)`` of every dense layer.

    ``eta = softplus(raw) / ||softplus(raw)||`` row by row: both positive, ``eta1^2 + eta2^2 =
    1`` exactly (up to rounding), differentiable in ``raw``.

    Args:
        raw: ``(L, 2)`` unconstrained parameters.

    Returns:
        ``(L, 2)`` weights.

    Example:
        >>> concat_weights(torch.zeros(1, 2))
        tensor([[0.7071, 0.7071]])
    """
    positive = F.softplus(raw)
    return positive / torch.linalg.vector_norm(positive, dim=-1, keepdim=True)


class DenseStep(nn.Module):
    """One dense layer ``x -> [eta1 x, eta2 act(W x + b)]`` as
    :func:`~implicit_transforms.lipschitz.certify` sees it: a view of a
    :class:`~implicit_transforms.lipschitz.LipschitzDenseNet`'s layer, activation and current
    weights, made by :meth:`~implicit_transforms.lipschitz.LipschitzDenseNet.lipschitz_chain`
    (not part of the network's state).

    Its bound is ``sqrt(eta1^2 + eta2^2 Lip(act o W)^2)``.

    Attributes:
        layer: the spectral layer ``W``.
        activation: the 1-Lipschitz activation.
        eta: ``(eta1, eta2)``, detached.
    """

    def __init__(self, layer: nn.Module, activation: nn.Module, eta: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.activation = activation
        self.eta = eta.detach()

    def bound(self, inner: float) -> float:
        """``sqrt(eta1^2 + eta2^2 inner^2)`` (float64) for ``inner >= Lip(act o W)``."""
        eta1, eta2 = (float(v) for v in self.eta.double())
        return math.sqrt(eta1 * eta1 + eta2 * eta2 * inner * inner)


class LipschitzDenseNet(LipschitzNet):
    r"""Base class of the i-DenseNet networks: dense layers, then one spectral layer back to
    the input size.

    .. math:: h_0 = x, \quad h_i = [\eta_{i,1} h_{i-1},\ \eta_{i,2}\,
        \phi(W_i h_{i-1} + b_i)], \quad g(x) = W_{L+1} h_L + b_{L+1},
        \qquad \mathrm{Lip}(g) \le \|W_{L+1}\| \prod_i
        \sqrt{\eta_{i,1}^2 + \eta_{i,2}^2 \|W_i\|^2} < 1.

    ``layers`` holds ``W_1 .. W_L`` and the output layer ``W_{L+1}`` (so ``layers[-1]`` is the
    last layer, as in every :class:`LipschitzNet`), ``activations`` the ``L`` activations and
    ``concat_raw`` the ``(L, 2)`` raw concatenation weights
    (:func:`~implicit_transforms.lipschitz.densenet.concat_weights`). A context enters as a
    bias of the first dense layer (before its activation).

    References:
        Perugachi-Diaz, Tomczak, Bhulai, "Invertible DenseNets with Concatenated LipSwish",
        2021.
    """

    concat_dim: int
    concat_raw: nn.Parameter

    def evaluate(self, x: Tensor, weights: list[Tensor], ctx_bias: Tensor | None) -> Tensor:
        """The pure evaluation with given (normalised) weights (see
        :meth:`LipschitzNet.evaluate`).

        Args:
            x: input ``(B, *event)``.
            weights: the normalised weight of every layer, dense layers first.
            ctx_bias: the context's additive bias of the first dense layer, or ``None``.

        Returns:
            ``g(x)``, shape ``(B, *event)``.
        """
        layers = self._normalised_layers()
        eta = concat_weights(self.concat_raw).to(x.dtype)
        h = x
        for i, act in enumerate(self.activations):
            pre = layers[i].apply_weight(h, weights[i])
            if i == 0 and ctx_bias is not None:
                pre = pre + ctx_bias
            h = torch.cat([eta[i, 0] * h, eta[i, 1] * act(pre)], dim=self.concat_dim)
        return layers[-1].apply_weight(h, weights[-1])

    def lipschitz_chain(self) -> list[nn.Module]:
        """The dense layers (as :class:`~implicit_transforms.lipschitz.densenet.DenseStep`
        views) and the output layer, whose bounds multiply to a bound of ``Lip(g)``.

        Returns:
            The modules in order of application.
        """
        eta = concat_weights(self.concat_raw.detach())
        steps: list[nn.Module] = [
            DenseStep(layer, act, eta[i])
            for i, (layer, act) in enumerate(zip(self.layers[:-1], self.activations, strict=True))
        ]
        return [*steps, self.layers[-1]]

    def _dense_widths(self, inputs: int, growth: Sequence[int], activation: str) -> list[int]:
        """Input widths of every layer: each dense layer adds ``expansion * growth``."""
        expansion = activation_expansion(activation)
        widths = [inputs]
        for g in growth:
            widths.append(widths[-1] + expansion * g)
        return widths

    def _init_concat(self, depth: int) -> None:
        # softplus(raw) = 1: eta1 = eta2 = 1 / sqrt(2) at the start
        raw = torch.full((depth, 2), math.log(math.expm1(1.0)))
        self.concat_raw = nn.Parameter(raw)


def _check_growth(growth: Sequence[int], name: str) -> list[int]:
    if isinstance(growth, (str, bytes)) or not isinstance(growth, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints, got {growth!r}")
    sizes = list(growth)
    if not sizes:
        raise ValueError(f"{name} must have at least one entry (one dense layer), got {growth!r}")
    for g in sizes:
        _check_positive(f"{name} entries", g)
    return sizes


class LipschitzDenseMLP(LipschitzDenseNet):
    r"""i-DenseNet network ``g: (B, D) -> (B, D)`` of dense (fully connected) layers,
    ``Lip(g) < 1``.

    Dense layer ``i`` adds ``growth[i]`` features (twice that after a concatenated activation
    such as ``"clipswish"``); the output layer maps the ``D + sum`` features back to ``D``.

    Args:
        features: ``D``.
        growth: the features every dense layer adds (one entry per dense layer).
        coeff: Lipschitz coefficient of every spectral layer, in ``(0, 1)``.
        activation: a name of :data:`~implicit_transforms.lipschitz.ACTIVATIONS`.
        context_features: size of an optional context vector.
        n_power_iterations: power iterations per weight change (certified layers).
        zero_init: divide the output layer's initial weight by
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR` (a block starts
            near a shift of the identity).

    Example:
        >>> import torch
        >>> g = LipschitzDenseMLP(2, [8, 8], activation="clipswish")
        >>> g(torch.zeros(5, 2)).shape, g.layers[-1].in_features  # 2 + 2 * 8 + 2 * 8
        (torch.Size([5, 2]), 34)
    """

    def __init__(
        self,
        features: int,
        growth: Sequence[int] = (64, 64),
        *,
        coeff: float = LAYER_COEFF,
        activation: str = NETWORK_ACTIVATION,
        context_features: int | None = None,
        n_power_iterations: int = 2,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("features", features)
        sizes = _check_growth(growth, "growth")
        check_coeff(coeff)
        widths = self._dense_widths(features, sizes, activation)
        self.features = features
        self.event_dims = 1
        self.context_features = context_features
        self.concat_dim = -1
        kw = {"coeff": coeff, "n_power_iterations": n_power_iterations}
        self.layers = nn.ModuleList(
            [
                *(
                    SpectralLinear(w, g, **kw)  # type: ignore[arg-type]
                    for w, g in zip(widths, sizes, strict=False)
                ),
                SpectralLinear(widths[-1], features, **kw),  # type: ignore[arg-type]
            ]
        )
        self.activations = nn.ModuleList(make_activation(activation, dim=-1) for _ in sizes)
        self._init_concat(len(sizes))
        self.context_net = None
        if context_features is not None:
            _check_positive("context_features", context_features)
            self.context_net = nn.Linear(context_features, sizes[0], bias=False)
        if _check_flag("zero_init", zero_init):
            self._scale_last_weight()

    def expected_event_shape(self) -> tuple[int | None, ...]:
        """``(D,)``."""
        return (self.features,)

    def _context_bias(self, context: Tensor, like: Tensor) -> Tensor:
        assert self.context_net is not None
        return self.context_net(context)


class LipschitzDenseCNN(LipschitzDenseNet):
    r"""i-DenseNet network ``g: (B, C, H, W) -> (B, C, H, W)`` of dense ``k x k``
    convolutional layers, ``Lip(g) < 1``.

    Dense layer ``i`` adds ``growth[i]`` channels (twice that after a concatenated activation),
    concatenated along the channels; a last ``k x k`` convolution maps them back to ``C``.

    Args:
        channels: ``C``.
        growth: the channels every dense layer adds (one entry per dense layer).
        coeff: Lipschitz coefficient of every convolution, in ``(0, 1)``.
        activation: a name of :data:`~implicit_transforms.lipschitz.ACTIVATIONS`.
        context_features: size of an optional context vector (a per-channel bias).
        kernel_size: odd size of every convolution (3: "same" 3x3 convolutions).
        n_power_iterations: power iterations per weight change (certified layers).
        zero_init: divide the output layer's initial weight by
            :data:`~implicit_transforms.lipschitz.networks.ZERO_INIT_DIVISOR` (a block starts
            near a shift of the identity).

    Example:
        >>> import torch
        >>> g = LipschitzDenseCNN(3, [4, 4], activation="cpila", coeff=0.9)
        >>> g(torch.randn(2, 3, 5, 5)).shape, g.layers[-1].in_channels  # 3 + 2 * 4 + 2 * 4
        (torch.Size([2, 3, 5, 5]), 19)
    """

    def __init__(
        self,
        channels: int,
        growth: Sequence[int] = (32,),
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
        sizes = _check_growth(growth, "growth")
        check_coeff(coeff)
        widths = self._dense_widths(channels, sizes, activation)
        self.channels = channels
        self.event_dims = 3
        self.context_features = context_features
        self.concat_dim = -3
        kw = {"coeff": coeff, "n_power_iterations": n_power_iterations}
        self.layers = nn.ModuleList(
            [
                *(
                    SpectralConv2d(w, g, kernel_size, **kw)  # type: ignore[arg-type]
                    for w, g in zip(widths, sizes, strict=False)
                ),
                SpectralConv2d(widths[-1], channels, kernel_size, **kw),  # type: ignore[arg-type]
            ]
        )
        self.activations = nn.ModuleList(make_activation(activation, dim=-3) for _ in sizes)
        self._init_concat(len(sizes))
        self.context_net = None
        if context_features is not None:
            _check_positive("context_features", context_features)
            self.context_net = nn.Linear(context_features, sizes[0], bias=False)
        if _check_flag("zero_init", zero_init):
            self._scale_last_weight()

    def expected_event_shape(self) -> tuple[int | None, ...]:
        """``(C, None, None)``: any spatial size."""
        return (self.channels, None, None)

    def _context_bias(self, context: Tensor, like: Tensor) -> Tensor:
        assert self.context_net is not None
        return self.context_net(context)[:, :, None, None]
