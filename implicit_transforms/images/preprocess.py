r"""Dequantisation and the logit transform: from integer pixels to an unbounded density.

An image with ``L`` grey levels per channel holds integers ``k in {0, ..., L - 1}^D``. A
continuous density ``p`` on ``[0, 1]^D`` assigns the discrete image the probability
``P(k) = int_{[0, 1/L)^D} p(k / L + v) dv``; with a noise ``u`` in ``[0, 1)^D`` drawn from
``q(u | k)`` and ``x = (k + u) / L``, Jensen's inequality gives the bound

``log P(k) >= E_q[log p(x) - log q(u | k)] - D log L``,

with ``q = 1`` (uniform dequantisation) or a learned ``q`` (variational dequantisation,
Ho et al. 2019), which tightens the bound. The flows then see ``y = logit(alpha + (1 - 2 alpha)
x)`` (the logit transform of RealNVP), whose log-det is part of ``log p(x)``.

References:
    Theis, van den Oord, Bethge, "A note on the evaluation of generative models", 2016;
    Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017;
    Ho, Chen, Srinivas, Duan, Abbeel, "Flow++", 2019.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VariationalDequantizer",
    "check_alpha",
    "check_levels",
    "dequantize",
    "logit_forward",
    "logit_inverse",
]


def check_levels(levels: int) -> int:
    """Validate the number of grey levels ``L >= 2`` (an int) and return it.

    Args:
        levels: grey levels per channel.

    Returns:
        ``levels``.

    Raises:
        ValueError: if ``levels`` is not an int ``>= 2``.

    Example:
        >>> check_levels(256)
        256
        >>> check_levels(1)
        Traceback (most recent call last):
            ...
        ValueError: levels must be an int >= 2 (grey levels per channel), got 1
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2 (grey levels per channel), got {levels!r}")
    return levels


def check_alpha(alpha: float) -> float:
    """Validate the logit margin ``0 <= alpha < 1/2`` and return it as a float.

    Args:
        alpha: the margin of :func:`logit_forward`.

    Returns:
        ``float(alpha)``.

    Raises:
        ValueError: if ``alpha`` is not a number in ``[0, 0.5)``.

    Example:
        >>> check_alpha(0)
        0.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 0.5:
        raise ValueError(f"alpha must be a float in [0, 0.5), got {alpha!r}")
    return float(alpha)


def _sum_event(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def dequantize(k: Tensor, levels: int, noise: Tensor) -> Tensor:
    r"""``x = (k + u) / L``: integer pixels ``k`` with noise ``u`` in ``[0, 1)``, on ``[0, 1)``.

    Args:
        k: ``(B, *E)`` integer-valued pixels in ``{0, ..., L - 1}`` (any dtype; the result has
            ``noise``'s dtype).
        levels: ``L``, grey levels per channel.
        noise: ``(B, *E)`` values in ``[0, 1)`` (e.g. ``torch.rand``: uniform dequantisation).

    Returns:
        ``(B, *E)`` dequantised values in ``[k / L, (k + 1) / L)``.

    Example:
        >>> k = torch.tensor([[0.0, 3.0]])
        >>> dequantize(k, 4, torch.tensor([[0.5, 0.5]]))
        tensor([[0.1250, 0.8750]])
    """
    check_levels(levels)
    if k.shape != noise.shape:
        raise ValueError(f"k and noise must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(noise.shape)}")  # fmt: skip
    return (k.to(noise.dtype) + noise) / levels


def logit_forward(x: Tensor, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    r"""``y = logit(s)``, ``s = alpha + (1 - 2 alpha) x``, and ``log|det dy/dx|`` per sample.

    .. math:: y = \log\frac{s}{1 - s}, \quad s = \alpha + (1 - 2\alpha)\,x, \qquad
        \log\Big|\det\frac{\partial y}{\partial x}\Big|
        = \sum_i \big[\log(1 - 2\alpha) - \log s_i - \log(1 - s_i)\big].

    ``dy/dx = (1 - 2 alpha) / (s (1 - s))`` element-wise, so the log-det is
    ``sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]``. ``alpha > 0`` keeps ``y`` finite at
    the edges ``x = 0`` and ``x = 1``.

    Args:
        x: ``(B, *E)`` values in ``[0, 1]``.
        alpha: margin in ``[0, 1/2)``.

    Returns:
        ``y: (B, *E)`` and the log-det ``(B,)``.

    Example:
        >>> y, ld = logit_forward(torch.full((1, 2), 0.5), alpha=0.0)
        >>> y, ld  # logit(1/2) = 0, dy/dx = 4 per element
        (tensor([[0., 0.]]), tensor([2.7726]))
    """
    alpha = check_alpha(alpha)
    s = alpha + (1 - 2 * alpha) * x
    y = torch.log(s) - torch.log1p(-s)
    ld = math.log1p(-2 * alpha) - torch.log(s) - torch.log1p(-s)
    return y, _sum_event(ld)


def logit_inverse(y: Tensor, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    r"""The inverse of :func:`logit_forward`: ``x = (sigmoid(y) - alpha) / (1 - 2 alpha)``.

    Log-det ``sum_i [log sigmoid(y_i) + log sigmoid(-y_i) - log(1 - 2 alpha)]``, computed with
    softplus so it stays finite for large ``|y|``.

    Args:
        y: ``(B, *E)`` real values.
        alpha: the same margin as the forward map.

    Returns:
        ``x: (B, *E)`` and the log-det ``(B,)``. ``x`` lies in
        ``(-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha))``, slightly wider than
        ``[0, 1]``: clamp samples to ``[0, 1]`` to show them as images.

    Example:
        >>> x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
        >>> y, ld = logit_forward(x)
        >>> x_back, ld_inv = logit_inverse(y)
        >>> torch.allclose(x_back, x), torch.allclose(ld_inv, -ld)
        (True, True)
    """
    alpha = check_alpha(alpha)
    x = (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)
    ld = -F.softplus(-y) - F.softplus(y) - math.log1p(-2 * alpha)
    return x, _sum_event(ld)


class VariationalDequantizer(nn.Module):
    r"""A learned dequantisation noise ``u ~ q(u | k)`` on ``(0, 1)^D`` with its log-density.

    .. math:: u = \sigma(h), \quad h = \mu(k) + e^{s(k)} \odot \epsilon, \qquad
        \log q(u \mid k) = \sum_i \big[\log \mathcal N(\epsilon_i; 0, 1) - s_i
        - \log\sigma(h_i) - \log\sigma(-h_i)\big].

    ``u = sigmoid(mu(k) + exp(s(k)) * eps)``, ``eps ~ N(0, I)``, where a small convolutional
    network reads the image ``k / L - 1/2`` and outputs the per-pixel ``mu`` and ``s``. By the
    change of variables,
    ``log q(u | k) = sum_i [log N(eps_i) - s_i - log sigmoid(h_i) - log sigmoid(-h_i)]`` with
    ``h = mu + exp(s) eps``. Used in the bound
    ``log P(k) >= E_q[log p((k + u) / L) - log q(u | k)] - D log L``, trained jointly with the
    flow; at initialisation (``mu = s = 0``) ``u = sigmoid(eps)``.

    Args:
        channels: ``C`` of the images ``(B, C, H, W)``.
        levels: ``L``.
        hidden_channels: width of the network.

    Example:
        >>> q = VariationalDequantizer(1, 17, hidden_channels=8)
        >>> u, log_q = q(torch.randint(0, 17, (2, 1, 4, 4)).double(), torch.randn(2, 1, 4, 4))
        >>> u.shape, log_q.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))

    References:
        Ho, Chen, Srinivas, Duan, Abbeel, "Flow++: Improving Flow-Based Generative Models with
        Variational Dequantization and Architecture Design", 2019.
    """

    def __init__(self, channels: int, levels: int, hidden_channels: int = 32) -> None:
        super().__init__()
        for name, v in (("channels", channels), ("hidden_channels", hidden_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.levels = check_levels(levels)
        self.channels = channels
        last = nn.Conv2d(hidden_channels, 2 * channels, 3, padding=1)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.SiLU(),
            last,
        )
        nn.init.zeros_(last.weight)  # start at u = sigmoid(eps)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, k: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | k))`` for pixels ``k: (B, C, H, W)`` and noise ``eps`` of that shape.

        Args:
            k: ``(B, C, H, W)`` integer-valued pixels in ``{0, ..., L - 1}``.
            eps: ``(B, C, H, W)`` standard normal noise (its dtype is the output's).

        Returns:
            ``u: (B, C, H, W)`` in ``(0, 1)`` and ``log q(u | k): (B,)``.
        """
        if k.dim() != 4 or k.shape[1] != self.channels or eps.shape != k.shape:
            raise ValueError(
                f"VariationalDequantizer expects k and eps of shape (B, {self.channels}, H, W), "
                f"got {tuple(k.shape)} and {tuple(eps.shape)}"
            )
        mu, s = self.net(k.to(eps.dtype) / self.levels - 0.5).chunk(2, dim=1)
        h = mu + torch.exp(s) * eps
        u = torch.sigmoid(h)
        log_normal = -0.5 * eps**2 - 0.5 * math.log(2 * math.pi)
        log_q = log_normal - s + F.softplus(-h) + F.softplus(h)
        return u, _sum_event(log_q)
