r"""Bits per dimension of discrete images under a continuous density on ``[0, 1]^D``.

For an image ``k`` with ``L`` levels per channel dequantised to ``x = (k + u) / L``, the
standard figure of merit is

``bits/dim = -(log p(x) - log q(u | k) - D log L) / (D ln 2)``,

an upper bound (in expectation over ``u``) of ``-log2 P(k) / D``, the code length per
sub-pixel. With uniform dequantisation ``log q = 0``. For 8-bit images ``L = 256`` and the
bound lies in ``[0, 8]`` for any sensible model (8 bits/dim is the uniform distribution over
all images); for the 17-level digits of scikit-learn the uniform model scores
``log2(17) = 4.09`` bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from implicit_transforms.images.preprocess import check_levels

__all__ = ["BitsSummary", "bits_per_dim", "dequantization_nll", "summarize_bits"]


def dequantization_nll(
    log_prob: Tensor, dims: int, levels: int = 256, log_q: Tensor | None = None
) -> Tensor:
    r"""Per-image negative log-likelihood bound of the discrete image, in nats:
    ``-(log p(x) - log q(u | k) - D log L)`` for ``x = (k + u) / L``.

    .. math:: -\log P(k) \le -\big(\log p(x) - \log q(u \mid k) - D \log L\big)

    Args:
        log_prob: ``(N,)`` log-densities (nats) of the dequantised images on ``[0, 1]^D``.
        dims: ``D``, sub-pixels per image (``C * H * W``).
        levels: ``L``, grey levels per channel.
        log_q: ``(N,)`` log-density of the dequantisation noise (variational), or ``None``
            (uniform: 0).

    Returns:
        ``(N,)`` nats; :func:`bits_per_dim` is this divided by ``D ln 2``.

    Example:
        >>> import torch, math
        >>> abs(float(dequantization_nll(torch.zeros(1), dims=2, levels=4)[0]) - 2 * math.log(4)) < 1e-6
        True
    """
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ValueError(f"dims must be a positive int, got {dims!r}")
    check_levels(levels)
    elbo = log_prob if log_q is None else log_prob - log_q
    return -(elbo - dims * math.log(levels))


def bits_per_dim(
    log_prob: Tensor, dims: int, levels: int = 256, log_q: Tensor | None = None
) -> Tensor:
    r"""Per-image bits/dim ``-(log p(x) - log q - D log L) / (D ln 2)``.

    .. math:: \text{bits/dim} = -\frac{\log p(x) - \log q(u \mid k) - D \log L}{D \ln 2}

    Args:
        log_prob: ``(N,)`` log-densities (nats) of the dequantised images on ``[0, 1]^D``.
        dims: ``D``, sub-pixels per image (``C * H * W``).
        levels: ``L``, grey levels per channel.
        log_q: ``(N,)`` log-density of the dequantisation noise (variational), or ``None``
            (uniform: 0).

    Returns:
        ``(N,)`` bits per dimension.

    Example:
        >>> import torch
        >>> bits_per_dim(torch.zeros(3), dims=784, levels=256)  # the uniform density
        tensor([8., 8., 8.])
    """
    return dequantization_nll(log_prob, dims, levels, log_q) / (dims * math.log(2))


@dataclass(frozen=True)
class BitsSummary:
    """Mean bits/dim over a set of images with its standard error ``std / sqrt(N)`` (the
    dequantisation and log-det estimator noise are part of the per-image spread).

    Attributes:
        mean: mean bits/dim.
        stderr: its standard error (NaN for one image).
        n: number of images.

    Example:
        >>> print(BitsSummary(2.5, 0.01, 180))
        2.5000 ± 0.0100 bits/dim (n=180)
    """

    mean: float
    stderr: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.stderr:.4f} bits/dim (n={self.n})"


def summarize_bits(bpd: Tensor) -> BitsSummary:
    """Mean and standard error of per-image bits/dim ``(N,)`` (``stderr`` is NaN for N = 1).

    Args:
        bpd: ``(N,)`` bits/dim per image (any shape is flattened), ``N >= 1``.

    Returns:
        A :class:`BitsSummary` (computed in float64, detached).

    Example:
        >>> import torch
        >>> s = summarize_bits(torch.tensor([2.0, 3.0, 4.0]))
        >>> s.mean, round(s.stderr, 4), s.n
        (3.0, 0.5774, 3)
    """
    values = bpd.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("summarize_bits needs at least one value")
    se = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return BitsSummary(float(values.mean()), se, n)
