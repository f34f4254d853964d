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
    makes the activation 1-Lipschitz whatever ``beta`` is learned:

    .. math:: \mathrm{LipSwish}(x) = \frac{x\,\sigma(\beta x)}{1.1}, \qquad
        \beta = \log(1 + e^{\rho}), \qquad
        \sup_x \Big|\frac{d}{dx}\mathrm{LipSwish}(x)\Big| < 1.

    Args:
        beta: initial ``beta > 0`` (the parameter is ``rho = softplus^{-1}(beta)``).

    References:
        Chen et al., "Residual Flows for Invertible Generative Modeling", 2019.

    Example:
        >>> import torch
        >>> act = LipSwish()
        >>> x = torch.linspace(-6, 6, 1001, requires_grad=True)
        >>> (slope,) = torch.autograd.grad(act(x).sum(), x)
        >>> bool(slope.abs().max() < 1), float(act.beta.detach())
        (True, 1.0)
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
        """Apply elementwise.

        Args:
            x: any shape.

        Returns:
            ``LipSwish(x)``, same shape and dtype.
        """
        beta = self.beta.to(x.dtype)
        return x * torch.sigmoid(beta * x) / 1.1


class Sine(nn.Module):
    r"""``sin(2 pi x) / (2 pi)``: derivative ``cos(2 pi x)``, so 1-Lipschitz.

    .. math:: \mathrm{Sine}(x) = \frac{\sin(2\pi x)}{2\pi}, \qquad
        \frac{d}{dx}\mathrm{Sine}(x) = \cos(2\pi x) \in [-1, 1].

    The periodic activation lets a contractive network ``g`` oscillate, which the ImpFlow
    and Residual Flow factories use by default (measured in ``benchmarks/README.md``).

    Example:
        >>> import torch
        >>> Sine()(torch.tensor([0.25]))  # sin(pi / 2) / (2 pi)
        tensor([0.1592])
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise.

        Args:
            x: any shape.

        Returns:
            ``sin(2 pi x) / (2 pi)``, same shape and dtype.
        """
        return torch.sin(2 * math.pi * x) / (2 * math.pi)


ACTIVATIONS: dict[str, type[nn.Module]] = {"lipswish": LipSwish, "sin": Sine, "elu": nn.ELU}
"""Names accepted by :func:`make_activation` (ELU with ``alpha = 1`` is 1-Lipschitz)."""


def make_activation(name: str) -> nn.Module:
    """Build a fresh 1-Lipschitz activation by name: ``"lipswish"``, ``"sin"`` or ``"elu"``.

    Args:
        name: a key of :data:`ACTIVATIONS`.

    Returns:
        A new module (a learnable LipSwish has its own ``beta``).

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> make_activation("sin")
        Sine()
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()
