"""Activations with Lipschitz constant at most 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "LipSwish", "Sine", "make_activation"]


class LipSwish(nn.Module):
    r"""``LipSwish(x) = x * sigmoid(beta x) / 1.1`` with learnable ``beta = softplus(rho) >= 0``.

    ``max_x |d/dx x sigmoid(beta x)| <= 1.0999`` for every ``beta >= 0``, so dividing by 1.1
    makes the activation 1-Lipschitz whatever ``beta`` is learned.

    References:
        Chen et al., "Residual Flows for Invertible Generative Modeling", 2019.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"LipSwish: beta must be > 0, got {beta!r}")
        # softplus^{-1}(beta)
        self.rho = nn.Parameter(torch.tensor(math.log(math.expm1(beta))))

    @property
    def beta(self) -> Tensor:
        """The current ``beta = softplus(rho)``."""
        return F.softplus(self.rho)

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise."""
        beta = self.beta.to(x.dtype)
        return x * torch.sigmoid(beta * x) / 1.1


class Sine(nn.Module):
    r"""``sin(2 pi x) / (2 pi)``: derivative ``cos(2 pi x)``, so 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise."""
        return torch.sin(2 * math.pi * x) / (2 * math.pi)


ACTIVATIONS: dict[str, type[nn.Module]] = {"lipswish": LipSwish, "sin": Sine, "elu": nn.ELU}
"""Names accepted by :func:`make_activation` (ELU with ``alpha = 1`` is 1-Lipschitz)."""


def make_activation(name: str) -> nn.Module:
    """Build a fresh 1-Lipschitz activation by name: ``"lipswish"``, ``"sin"`` or ``"elu"``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()
