"""Lipschitz-constrained layers, activations and networks, and their certification."""

from implicit_transforms.lipschitz.activations import (
    ACTIVATIONS,
    CLipSwish,
    ConcatenatedActivation,
    CPila,
    LipSwish,
    Sine,
    make_activation,
)
from implicit_transforms.lipschitz.certify import (
    Certificate,
    certify,
    conv_operator_norm_bound,
    lipschitz_networks,
)
from implicit_transforms.lipschitz.densenet import (
    LipschitzDenseCNN,
    LipschitzDenseMLP,
    LipschitzDenseNet,
)
from implicit_transforms.lipschitz.networks import LipschitzCNN, LipschitzMLP, LipschitzNet
from implicit_transforms.lipschitz.spectral import (
    EXACT_MAX_DIM,
    SpectralConv2d,
    SpectralLinear,
    check_coeff,
)

__all__ = [
    "ACTIVATIONS",
    "EXACT_MAX_DIM",
    "CLipSwish",
    "CPila",
    "Certificate",
    "ConcatenatedActivation",
    "LipSwish",
    "LipschitzCNN",
    "LipschitzDenseCNN",
    "LipschitzDenseMLP",
    "LipschitzDenseNet",
    "LipschitzMLP",
    "LipschitzNet",
    "Sine",
    "SpectralConv2d",
    "SpectralLinear",
    "certify",
    "check_coeff",
    "conv_operator_norm_bound",
    "lipschitz_networks",
    "make_activation",
]
