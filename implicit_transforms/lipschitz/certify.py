"""Guaranteed Lipschitz bounds for trained layers, residual networks and whole models.

Power iteration *under*-estimates operator norms, so a trained model is only known to be
invertible once an upper bound is checked. Dense layers use the exact largest singular value;
convolutions the exact norm of the dense operator on small inputs and the FFT bound below on
larger ones. :func:`certify` takes a layer, a network, or any model containing networks (a
block, an nflows ``Flow``, a Pyro transform or guide) and reports every network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from implicit_transforms.lipschitz.activations import ConcatenatedActivation, LipSwish, Sine
from implicit_transforms.lipschitz.densenet import DenseStep
from implicit_transforms.lipschitz.networks import LipschitzNet
from implicit_transforms.lipschitz.norms import exact_operator_norm
from implicit_transforms.lipschitz.spectral import SpectralConv2d, SpectralLinear

__all__ = ["Certificate", "certify", "conv_operator_norm_bound"]


@dataclass(frozen=True)
class Certificate:
    """A guaranteed upper bound on a Lipschitz constant.

    Attributes:
        bound: for a layer or a network, the bound on its ``Lip`` (product over its chain);
            for a model, the largest bound over its networks (every residual map of the model
            is invertible when it is below 1).
        layers: per-layer bounds of a network, keyed by a readable layer name.
        networks: for a model, the certificate of every Lipschitz network it contains, keyed
            by the network's module path (empty for a single layer or network).

    Example:
        >>> cert = Certificate(0.9, layers={"0": 0.95, "2": 0.947})
        >>> cert.contractive, str(cert)
        (True, 'Lip <= 0.900000 (contractive)')
    """

    bound: float
    layers: dict[str, float] = field(default_factory=dict)
    networks: dict[str, Certificate] = field(default_factory=dict)

    @property
    def contractive(self) -> bool:
        """Whether the bound certifies ``Lip < 1`` (so every ``x + g(x)`` is invertible)."""
        return self.bound < 1.0

    def __str__(self) -> str:
        if not self.networks:
            return f"Lip <= {self.bound:.6f} ({'contractive' if self.contractive else 'NOT contractive'})"
        lines = [f"{len(self.networks)} networks, largest bound {self.bound:.6f}:"]
        for name, cert in self.networks.items():
            lines.append(f"  {name}: {cert}")
        return "\n".join(lines)


@torch.no_grad()
def conv_operator_norm_bound(weight: Tensor, input_size: tuple[int, int]) -> float:
    r"""Upper bound on ``||conv||_2`` of a stride-1 zero-padded ("same") convolution.

    Zero padding on an ``H x W`` input equals the restriction, to the ``H x W`` block, of a
    *circular* convolution on the torus of :func:`~implicit_transforms.lipschitz.norms.circular_grid`
    applied to the zero-embedded input; restrictions and embeddings have norm 1, so the
    circular operator's norm bounds the padded one. A circular convolution is
    block-diagonalised by the 2-D DFT: its norm is the largest singular value of the
    ``C_out x C_in`` kernel transforms over all frequencies (Sedghi, Gupta, Long, "The Singular
    Values of Convolutional Layers", 2019). The same bound normalises
    :class:`~implicit_transforms.lipschitz.SpectralConv2d`.

    Args:
        weight: kernel ``(C_out, C_in, k, k)``.
        input_size: ``(H, W)``.

    Returns:
        The bound (a float, computed in float64).

    Example:
        >>> conv_operator_norm_bound(torch.ones(1, 1, 1, 1) * 0.5, (4, 4))
        0.5
    """
    return float(exact_operator_norm(weight.double(), input_size))


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
        if layer.spatial_size is None:
            raise ValueError(
                "certify: a convolution has not run forward yet, and its normalisation is set "
                "by the input size it first sees: run one forward pass first"
            )
        size = input_size or layer.spatial_size
        weight = layer.normalized_weight()
        if weight.shape[1] * size[0] * size[1] <= _EXACT_CONV_MAX:
            return _conv_exact_norm(weight, size, layer.padding)
        return conv_operator_norm_bound(weight, size)
    if isinstance(layer, DenseStep):
        # [eta1 x, eta2 act(W x)]: sqrt(eta1^2 + eta2^2 Lip(act o W)^2)
        inner = _layer_bound(layer.layer, input_size) * _layer_bound(layer.activation, input_size)
        return layer.bound(inner)
    if isinstance(layer, (LipSwish, Sine, ConcatenatedActivation)):
        # the concatenated ones (R^n -> R^2n) by their scale constants, derived and tested
        return 1.0
    if isinstance(layer, nn.ELU):
        return max(1.0, float(layer.alpha))
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.double(), ord=2))
    if isinstance(layer, (nn.Identity, nn.ReLU, nn.Tanh, nn.LeakyReLU)):
        return 1.0
    raise TypeError(f"certify: no Lipschitz bound known for {type(layer).__name__}")


def _chain_certificate(module: nn.Module, input_size: tuple[int, int] | None) -> Certificate:
    if isinstance(module, LipschitzNet):
        chain = [(f"{i}:{type(m).__name__}", m) for i, m in enumerate(module.lipschitz_chain())]
    elif isinstance(module, nn.Sequential):
        chain = [(f"{name}:{type(m).__name__}", m) for name, m in module.named_children()]
    else:
        chain = [(type(module).__name__, module)]
    layers: dict[str, float] = {}
    bound = 1.0
    for name, layer in chain:
        if isinstance(layer, (nn.Sequential, LipschitzNet)):
            value = _chain_certificate(layer, input_size).bound
        else:
            value = _layer_bound(layer, input_size)
        layers[name] = value
        bound *= value
    return Certificate(bound=bound, layers=layers)


def _modules_of(obj: Any) -> Iterator[tuple[str, nn.Module]]:
    """Top-level modules of ``obj``: itself, or the parts of a transformed distribution."""
    if isinstance(obj, nn.Module):
        yield "", obj
        return
    parts = getattr(obj, "transforms", None)
    if parts is None:
        raise TypeError(
            "certify: expected an nn.Module (a layer, a network, a block, an nflows Flow, a Pyro "
            f"transform or guide) or a distribution with .transforms, got {type(obj).__name__}"
        )
    for i, part in enumerate(parts):
        if isinstance(part, nn.Module):
            yield f"transforms.{i}", part


def lipschitz_networks(obj: Any) -> dict[str, LipschitzNet]:
    """Every :class:`LipschitzNet` inside ``obj`` (a module or a transformed distribution),
    keyed by module path; networks nested in another network are not listed twice.

    Args:
        obj: a module, or an object with ``.transforms`` (a Pyro or torch transformed
            distribution).

    Returns:
        The networks by module path (in the order ``named_modules`` visits them).

    Example:
        >>> from implicit_transforms import resflow_block
        >>> list(lipschitz_networks(resflow_block(2, [8])))
        ['net']
    """
    found: dict[str, LipschitzNet] = {}
    for prefix, top in _modules_of(obj):
        for name, module in top.named_modules(prefix=prefix):
            if isinstance(module, LipschitzNet) and not any(
                name.startswith(outer + ".") for outer in found
            ):
                found[name or type(module).__name__] = module
    return found


@torch.no_grad()
def certify(module: Any, input_size: tuple[int, int] | None = None) -> Certificate:
    r"""Guaranteed bound on ``Lip`` of a layer or a network, or of every network of a model.

    .. math:: \mathrm{Lip}(f_n \circ \cdots \circ f_1) \le \prod_i \mathrm{Lip}(f_i)

    ``Lip(f_n o ... o f_1) <= prod_i Lip(f_i)``. Dense layers: exact spectral norm of the
    effective weight (SVD in float64); a dense layer of an i-DenseNet
    (:class:`~implicit_transforms.lipschitz.densenet.DenseStep`)
    ``sqrt(eta1^2 + eta2^2 Lip(act o W)^2)``; convolutions: :func:`conv_operator_norm_bound` on
    ``input_size`` (default: the size the layer last saw), or the exact norm of the dense
    operator when the input has at most 1024 elements; activations of this package: 1.

    Any other module (an :class:`~implicit_transforms.InvertibleBlock`, an nflows ``Flow``, a
    Pyro ``TransformModule`` or guide), or a distribution with ``.transforms``, is searched
    for Lipschitz networks: the certificate lists each one in ``networks`` and its ``bound`` is
    the largest of theirs.

    Args:
        module: the layer, network or model.
        input_size: ``(H, W)`` for convolutions.

    Returns:
        A :class:`Certificate`; ``certificate.contractive`` tells whether ``Lip < 1`` (for a
        model: whether every network is contractive).

    Raises:
        TypeError: a layer with no known bound, or an object that is neither a module nor a
            distribution with transforms.
        ValueError: a model without any Lipschitz network, a Pyro autoguide that was never
            called (it builds its networks on its first call), or a convolution that never ran
            forward (its normalisation depends on the input size it first sees).

    Example:
        >>> from implicit_transforms.lipschitz import LipschitzMLP
        >>> certify(LipschitzMLP(3, [8], coeff=0.9)).contractive
        True
    """
    if isinstance(module, (LipschitzNet, nn.Sequential)):
        return _chain_certificate(module, input_size)
    if isinstance(module, nn.Module) and getattr(module, "prototype_trace", False) is None:
        # A Pyro autoguide builds its transform (and networks) on its first call.
        raise ValueError(
            f"certify: {type(module).__name__} has not built its networks yet (a Pyro autoguide "
            "builds them on its first call): run the guide once first (guide(*model_args) or "
            "one SVI step), then certify it"
        )
    nets = lipschitz_networks(module)
    if not nets:
        if isinstance(module, nn.Module) and not list(module.children()):
            return _chain_certificate(module, input_size)  # a single layer
        raise ValueError(
            f"certify: {type(module).__name__} contains no Lipschitz network (LipschitzMLP or "
            "LipschitzCNN) to certify"
        )
    networks = {name: _chain_certificate(net, input_size) for name, net in nets.items()}
    return Certificate(bound=max(c.bound for c in networks.values()), layers={}, networks=networks)
