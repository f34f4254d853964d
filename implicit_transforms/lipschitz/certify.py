"""Guaranteed Lipschitz bounds for trained layers and residual networks.

Power iteration *under*-estimates operator norms, so a trained model is only known to be
invertible once an upper bound is checked. Dense layers use the exact largest singular value;
convolutions use the FFT bound below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from implicit_transforms.lipschitz.activations import LipSwish, Sine
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.lipschitz.spectral import SpectralConv2d, SpectralLinear

__all__ = ["Certificate", "certify", "conv_operator_norm_bound"]


@dataclass(frozen=True)
class Certificate:
    """A guaranteed upper bound on a Lipschitz constant.

    Attributes:
        bound: the bound on ``Lip`` of the whole module (product over its chain).
        layers: per-layer bounds, keyed by a readable layer name.
    """

    bound: float
    layers: dict[str, float] = field(default_factory=dict)

    @property
    def contractive(self) -> bool:
        """Whether the bound certifies ``Lip < 1`` (so ``x + g(x)`` is invertible)."""
        return self.bound < 1.0


@torch.no_grad()
def conv_operator_norm_bound(weight: Tensor, input_size: tuple[int, int]) -> float:
    r"""Upper bound on ``||conv||_2`` of a stride-1 zero-padded ("same") convolution.

    Zero padding by ``p`` on an ``H x W`` input equals the restriction, to the central
    ``H x W`` block, of a *circular* convolution on the ``(H+2p) x (W+2p)`` grid applied to the
    zero-embedded input; restrictions and embeddings have norm 1, so the circular operator's
    norm bounds the padded one. A circular convolution is block-diagonalised by the 2-D DFT: its
    norm is the largest singular value of the ``C_out x C_in`` kernel transforms over all
    frequencies (Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", 2019).

    Args:
        weight: kernel ``(C_out, C_in, k, k)``.
        input_size: ``(H, W)``.

    Returns:
        The bound (a float).
    """
    k = weight.shape[-1]
    p = k // 2
    h, w = input_size[0] + 2 * p, input_size[1] + 2 * p
    if k > h or k > w:
        h, w = max(h, k), max(w, k)
    spectrum = torch.fft.fft2(weight.double(), s=(h, w))  # (C_out, C_in, h, w)
    mats = spectrum.permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(mats, ord=2).max())


_EXACT_CONV_MAX = 1024
"""Inputs with at most this many elements get the exact norm of the dense operator."""


def _conv_exact_norm(weight: Tensor, size: tuple[int, int], padding: int) -> float:
    """Exact ``||conv||_2`` from the dense matrix of the convolution (small inputs only)."""
    c_in = weight.shape[1]
    n = c_in * size[0] * size[1]
    basis = torch.eye(n, dtype=torch.float64, device=weight.device).reshape(n, c_in, *size)
    dense = torch.nn.functional.conv2d(basis, weight.double(), padding=padding).reshape(n, -1)
    # A little slack for the rounding of the SVD itself keeps the bound an upper bound.
    return float(torch.linalg.matrix_norm(dense, ord=2)) * (1 + 1e-12)


def _layer_bound(layer: nn.Module, input_size: tuple[int, int] | None) -> float:
    if isinstance(layer, SpectralLinear):
        return float(torch.linalg.matrix_norm(layer.normalized_weight().double(), ord=2))
    if isinstance(layer, SpectralConv2d):
        size = input_size or layer.spatial_size
        if size is None:
            raise ValueError("certify: give input_size for a convolution that never ran forward")
        weight = layer.normalized_weight()
        if weight.shape[1] * size[0] * size[1] <= _EXACT_CONV_MAX:
            return _conv_exact_norm(weight, size, layer.padding)
        return conv_operator_norm_bound(weight, size)
    if isinstance(layer, (LipSwish, Sine)):
        return 1.0
    if isinstance(layer, nn.ELU):
        return max(1.0, float(layer.alpha))
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.double(), ord=2))
    if isinstance(layer, (nn.Identity, nn.ReLU, nn.Tanh, nn.LeakyReLU)):
        return 1.0
    raise TypeError(f"certify: no Lipschitz bound known for {type(layer).__name__}")


@torch.no_grad()
def certify(module: nn.Module, input_size: tuple[int, int] | None = None) -> Certificate:
    r"""Guaranteed bound on ``Lip`` of a layer, a :class:`LipschitzNet`, or an ``nn.Sequential``.

    ``Lip(f_n o ... o f_1) <= prod_i Lip(f_i)``. Dense layers: exact spectral norm of the
    effective weight (SVD); convolutions: :func:`conv_operator_norm_bound` on ``input_size``
    (default: the size the layer last saw), or the exact norm of the dense operator when the
    input has at most 1024 elements; activations of this package: 1.

    Args:
        module: the layer or network.
        input_size: ``(H, W)`` for convolutions.

    Returns:
        A :class:`Certificate`; ``certificate.contractive`` tells whether ``Lip < 1``.

    Example:
        >>> from implicit_transforms.lipschitz import LipschitzMLP
        >>> certify(LipschitzMLP(3, [8], coeff=0.9)).contractive
        True
    """
    if isinstance(module, LipschitzNet):
        chain = [(f"{i}:{type(m).__name__}", m) for i, m in enumerate(module.lipschitz_chain())]
    elif isinstance(module, nn.Sequential):
        chain = [(f"{name}:{type(m).__name__}", m) for name, m in module.named_children()]
    else:
        chain = [(type(module).__name__, module)]
    layers: dict[str, float] = {}
    bound = 1.0
    for name, layer in chain:
        sub = (
            certify(layer, input_size) if isinstance(layer, (nn.Sequential, LipschitzNet)) else None
        )
        value = sub.bound if sub is not None else _layer_bound(layer, input_size)
        layers[name] = value
        bound *= value
    return Certificate(bound=bound, layers=layers)
