"""Activations with Lipschitz constant at most 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "CLIPSWISH_SCALE",
    "CPILA_SCALE",
    "CLipSwish",
    "CPila",
    "ConcatenatedActivation",
    "LipSwish",
    "Sine",
    "activation_expansion",
    "make_activation",
    "pila",
]


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


CLIPSWISH_SCALE = 1.1043615440359
r"""``C = sup_u sqrt(a(u)^2 + (1 - a(u))^2)`` with ``a(u) = sigma(u) (1 + u (1 - sigma(u)))``
the slope of ``x sigma(x)``; rounded up in the 13th digit (see :class:`CLipSwish`)."""

CPILA_SCALE = math.sqrt(1.0 + 361.0 * math.exp(-8.0)) * (1.0 + 1e-13)
r"""``sqrt(1 + 361 e^{-8}) = 1.0588210...``: the Lipschitz constant of ``[Pila(x - 0.2),
Pila(-x - 0.2)]`` (see :class:`CPila`), with a little slack for rounding."""


class ConcatenatedActivation(nn.Module):
    """Base class of the activations ``R^n -> R^{2n}`` that concatenate two 1-Lipschitz
    curves of every coordinate along ``dim``: the next layer takes ``expansion`` times the
    features.

    Args:
        dim: the feature dimension the two halves are concatenated along (``-1`` for vectors
            ``(*, D)``, ``-3`` for images ``(*, C, H, W)``).
    """

    expansion: int = 2
    """How many times the input's features the output has."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class CLipSwish(ConcatenatedActivation):
    r"""Concatenated LipSwish ``[s(x), s(-x)] / C`` with ``s(x) = x sigmoid(beta x)``,
    1-Lipschitz as a map ``R^n -> R^{2n}``.

    With ``u = beta x`` the slopes are ``s'(x) = a(u)`` and ``d/dx s(-x) = -a(-u)`` where
    ``a(u) = sigma(u) (1 + u (1 - sigma(u)))``; since ``s(x) - s(-x) = x``,
    ``a(u) + a(-u) = 1``. The Jacobian stacks two diagonal matrices, so its spectral norm is
    ``max_i sqrt(a(u_i)^2 + (1 - a(u_i))^2) / C``, whatever ``beta`` is. ``a`` ranges over
    ``[1 - a*, a*]`` with ``a* = max_u a(u) = 1.0998393...`` (at ``u = 2.3994``), and the
    convex ``t^2 + (1 - t)^2`` is largest at the ends, so

    .. math:: \mathrm{CLipSwish}(x) = \frac{[\,x\,\sigma(\beta x),\ -x\,\sigma(-\beta x)\,]}{C},
        \qquad C = \sqrt{a_*^2 + (1 - a_*)^2} = 1.10436154\ldots

    makes it 1-Lipschitz (:data:`~implicit_transforms.lipschitz.activations.CLIPSWISH_SCALE`,
    equality approached at ``beta x = +-2.3994``). The paper writes ``C`` as LipSwish's 1.1
    times 1.004.

    Args:
        dim: the feature dimension the halves are concatenated along.
        beta: initial ``beta > 0`` (learnable, ``beta = softplus(rho)``).

    Shapes:
        ``(..., n, ...) -> (..., 2n, ...)`` along ``dim``.

    References:
        Perugachi-Diaz, Tomczak, Bhulai, "Invertible DenseNets with Concatenated LipSwish",
        2021.

    Example:
        >>> import torch
        >>> CLipSwish()(torch.zeros(3, 4)).shape
        torch.Size([3, 8])
    """

    def __init__(self, dim: int = -1, beta: float = 1.0) -> None:
        super().__init__(dim)
        if not beta > 0:
            raise ValueError(f"CLipSwish: beta must be > 0, got {beta!r}")
        self.rho = nn.Parameter(torch.tensor(math.log(math.expm1(beta))))

    @property
    def beta(self) -> Tensor:
        """The current ``beta = softplus(rho)``."""
        return F.softplus(self.rho)

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``[s(x), s(-x)] / C`` along ``dim``.

        Args:
            x: any shape with the feature dimension at ``dim``.

        Returns:
            Twice as many features along ``dim``, same dtype.
        """
        beta = self.beta.to(x.dtype)
        both = torch.cat([x, -x], dim=self.dim)
        return both * torch.sigmoid(beta * both) / CLIPSWISH_SCALE


def pila(x: Tensor, k: float = 5.0) -> Tensor:
    r"""The Pila function: ``x`` for ``x > 0``, ``(k^2 x^3 / 2 - k x^2 + x) e^{k x}`` else.

    Its slope on ``x <= 0`` is ``(k^3 x^3 / 2 + k^2 x^2 / 2 - k x + 1) e^{k x}``, which meets
    1 at 0 (with zero curvature: Pila is twice continuously differentiable) and whose own
    derivative ``k^3 x^2 (k x / 2 + 2) e^{k x}`` vanishes only at ``x = -4 / k``: the slope
    decreases from 0 to its minimum ``-19 e^{-4} = -0.348`` there, then rises to 1.

    Args:
        x: any shape.
        k: sharpness ``k > 0``.

    Returns:
        ``Pila(x)``, same shape and dtype.

    References:
        Ahn, Kim, Hong, Kim, "Invertible Monotone Operators for Normalizing Flows", 2022.

    Example:
        >>> import torch
        >>> pila(torch.tensor([1.0, 0.0, -0.2]))
        tensor([ 1.0000,  0.0000, -0.1839])
    """
    if not k > 0:
        raise ValueError(f"pila: k must be > 0, got {k!r}")
    # The cubic branch only ever sees x <= 0 (no overflow of e^{kx}); a where, not a clamp,
    # so that the slope at exactly 0 is 1 (clamp's gradient vanishes at its bound).
    neg = torch.where(x > 0, torch.zeros_like(x), x)
    cubic = (0.5 * k * k * neg - k) * neg * neg + neg
    return torch.where(x > 0, x, cubic * torch.exp(k * neg))


class CPila(ConcatenatedActivation):
    r"""Concatenated Pila ``[Pila(x - 0.2), Pila(-x - 0.2)] / C`` (``k = 5``), 1-Lipschitz as
    a map ``R^n -> R^{2n}``.

    The Jacobian stacks two diagonal matrices with entries ``P'(x - 0.2)`` and
    ``-P'(-x - 0.2)``; its spectral norm is the largest ``sqrt(P'(x - 0.2)^2 +
    P'(-x - 0.2)^2) / C``. ``P'`` lies in ``[-19 e^{-4}, 1]`` (see
    :func:`~implicit_transforms.lipschitz.activations.pila`), and the two arguments sum to
    ``-0.4``: the largest value is at ``x = +-0.6``, where one slope is 1
    (argument ``0.4 > 0``) and the other at its minimum (argument ``-0.8 = -4 / k``), so

    .. math:: \mathrm{CPila}(x) = \frac{[\,P(x - 0.2),\ P(-x - 0.2)\,]}{C}, \qquad
        C = \sqrt{1 + 361\,e^{-8}} = 1.0588210\ldots

    (:data:`~implicit_transforms.lipschitz.activations.CPILA_SCALE`; the paper rounds it up to
    1.06). Plain PyTorch: autograd gives every derivative, no compiled extension.

    Args:
        dim: the feature dimension the halves are concatenated along.

    Shapes:
        ``(..., n, ...) -> (..., 2n, ...)`` along ``dim``.

    References:
        Ahn, Kim, Hong, Kim, "Invertible Monotone Operators for Normalizing Flows", 2022.

    Example:
        >>> import torch
        >>> CPila(dim=1)(torch.zeros(2, 3, 4, 4)).shape
        torch.Size([2, 6, 4, 4])
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``[Pila(x - 0.2), Pila(-x - 0.2)] / C`` along ``dim``.

        Args:
            x: any shape with the feature dimension at ``dim``.

        Returns:
            Twice as many features along ``dim``, same dtype.
        """
        return pila(torch.cat([x, -x], dim=self.dim) - 0.2) / CPILA_SCALE


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "lipswish": LipSwish,
    "sin": Sine,
    "elu": nn.ELU,
    "clipswish": CLipSwish,
    "cpila": CPila,
}
"""Names accepted by :func:`make_activation` (ELU with ``alpha = 1`` is 1-Lipschitz;
``clipswish`` and ``cpila`` are :class:`ConcatenatedActivation`\\ s, which double the features)."""


def activation_expansion(name: str) -> int:
    """How many times its input's features the activation ``name`` outputs (2 for the
    concatenated ones, else 1): the next layer's input width is this times the layer's.

    Args:
        name: a key of :data:`ACTIVATIONS`.

    Returns:
        2 for a :class:`ConcatenatedActivation`, else 1.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> activation_expansion("clipswish"), activation_expansion("sin")
        (2, 1)
    """
    cls = _activation_class(name)
    return cls.expansion if issubclass(cls, ConcatenatedActivation) else 1


def _activation_class(name: str) -> type[nn.Module]:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def make_activation(name: str, *, dim: int = -1) -> nn.Module:
    """Build a fresh 1-Lipschitz activation by name (a key of :data:`ACTIVATIONS`).

    Args:
        name: a key of :data:`ACTIVATIONS`.
        dim: the feature dimension a concatenated activation (``"clipswish"``, ``"cpila"``)
            concatenates along (``-1`` vectors, ``-3`` images); elementwise ones ignore it.

    Returns:
        A new module (a learnable LipSwish or CLipSwish has its own ``beta``).

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> make_activation("sin")
        Sine()
        >>> make_activation("cpila", dim=-3)
        CPila(dim=-3)
    """
    cls = _activation_class(name)
    if issubclass(cls, ConcatenatedActivation):
        return cls(dim=dim)
    return cls()
