r"""Operator norms of dense and convolutional weights: exact values and certified bounds.

Pure functions shared by the spectral layers (which normalise with them at every weight
change) and by :func:`~implicit_transforms.lipschitz.certify` (which reports them).

* A dense weight ``W`` is one matrix; a stride-1 "same" convolution is bounded by the
  *circular* convolution on a slightly larger torus (:func:`circular_grid`), which the 2-D DFT
  block-diagonalises into one ``C_out x C_in`` matrix per frequency (:func:`circular_spectrum`).
  Either way the quantity of interest is ``max_f ||M_f||_2`` over a batch of matrices.
* :func:`certified_norm_bound` turns any *lower* estimate of that maximum (power iteration
  gives one) into a guaranteed *upper* bound: ``s`` bounds every ``||M_f||`` exactly when
  ``s^2 I - M_f^H M_f`` is positive definite, which one Cholesky factorisation decides. It costs
  a Gram matrix and a Cholesky factorisation in float64, several times less than an
  eigen-decomposition, and holds for any size.

References:
    Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "NormBound",
    "certified_norm_bound",
    "circular_grid",
    "circular_spectrum",
    "exact_operator_norm",
    "gram",
]

SLACK_MIN = 1e-4
"""Smallest relative slack :func:`certified_norm_bound` proposes above the estimate."""

_SLACK_GROWTH = 4.0
_MAX_TRIES = 3


def circular_grid(input_size: tuple[int, int], kernel_size: int) -> tuple[int, int]:
    """The torus ``(H + p, W + p)``, ``p = k // 2``, on which a circular convolution's norm
    bounds the zero-padded ("same") convolution's on ``(H, W)`` (``(1, 1)`` for ``k = 1``).

    Embedding an ``H x W`` input into the torus with zeros elsewhere, the circular convolution
    reads ``x`` at offsets ``-p .. H - 1 + p``, which never wrap onto the input as long as the
    torus has at least ``H + p`` cells; restricting the output to ``H x W`` then gives exactly
    the zero-padded convolution, and embeddings and restrictions have norm 1. The torus is at
    least ``k x k`` so that the kernel fits.

    Args:
        input_size: the convolution's input ``(H, W)``.
        kernel_size: odd kernel size ``k``.

    Returns:
        The torus ``(N_1, N_2)``.

    Example:
        >>> circular_grid((8, 8), 3)
        (9, 9)
    """
    if kernel_size == 1:
        return (1, 1)
    p = kernel_size // 2
    return (max(input_size[0] + p, kernel_size), max(input_size[1] + p, kernel_size))


def circular_spectrum(weight: Tensor, grid: tuple[int, int]) -> Tensor:
    r"""The circular convolution's per-frequency matrices ``K_hat(f) = sum_ab K[:, :, a, b]
    e^{-2 pi i (f_1 a / N_1 + f_2 b / N_2)}`` for ``f_2 <= N_2 / 2``.

    A real kernel has ``K_hat(-f) = conj(K_hat(f))``, with the same singular values, so the
    half spectrum (``rfft2``) holds every singular value of the circular convolution; frequency
    ``(f_1, f_2)`` is row ``f_1 (N_2 // 2 + 1) + f_2``.

    Args:
        weight: kernel ``(C_out, C_in, k, k)``.
        grid: the torus ``(N_1, N_2)``.

    Returns:
        ``(N_1 (N_2 // 2 + 1), C_out, C_in)`` complex matrices.

    Example:
        >>> circular_spectrum(torch.ones(2, 3, 1, 1), (1, 1)).shape
        torch.Size([1, 2, 3])
    """
    n1, n2 = grid
    spec = torch.fft.rfft2(weight, s=(n1, n2))
    return spec.permute(2, 3, 0, 1).reshape(n1 * (n2 // 2 + 1), weight.shape[0], weight.shape[1])


def gram(mats: Tensor) -> Tensor:
    """The smaller Gram matrix of each matrix, ``M^H M`` or ``M M^H``: ``(F, m, n) -> (F, k, k)``
    with ``k = min(m, n)``; its eigenvalues are the squared singular values.

    Args:
        mats: ``(F, m, n)`` real or complex matrices.

    Returns:
        ``(F, k, k)`` Hermitian positive semi-definite matrices.

    Example:
        >>> gram(torch.eye(3)[None, :2]).shape
        torch.Size([1, 2, 2])
    """
    return mats.mH @ mats if mats.shape[-1] <= mats.shape[-2] else mats @ mats.mH


def exact_operator_norm(weight: Tensor, spatial_size: tuple[int, int] | None = None) -> Tensor:
    r"""``||W||_2`` of a dense weight, or the circular bound of a convolution's norm on
    ``spatial_size``: a pure, differentiable function of ``weight`` (SVD-based, so it works
    under ``torch.func`` transforms, where no state can be kept).

    Args:
        weight: ``(D_out, D_in)`` or a kernel ``(C_out, C_in, k, k)``.
        spatial_size: the convolution's input ``(H, W)`` (ignored for dense weights).

    Returns:
        A 0-d tensor, differentiable in ``weight``.

    Example:
        >>> float(exact_operator_norm(torch.diag(torch.tensor([3.0, 1.0]))))
        3.0
    """
    if weight.dim() == 2:
        return torch.linalg.matrix_norm(weight, ord=2)
    if spatial_size is None:
        raise ValueError("exact_operator_norm: a convolution needs its input's (H, W)")
    grid = circular_grid(spatial_size, int(weight.shape[-1]))
    return torch.linalg.matrix_norm(circular_spectrum(weight, grid), ord=2).amax()


@dataclass(frozen=True)
class NormBound:
    """A certified upper bound on ``max_f ||M_f||_2``.

    Attributes:
        bound: the bound ``s``; every ``||M_f||_2 <= s``.
        slack: the relative slack ``s / estimate - 1`` that was certified (the next call's
            proposal: halved after a first-try success, kept after a retry).
        tries: Cholesky factorisations made (each one ``O(k^3 / 3)`` per matrix).
        exact: whether the bound came from the eigenvalue fallback.
    """

    bound: float
    slack: float
    tries: int
    exact: bool


@torch.no_grad()
def certified_norm_bound(mats: Tensor, estimate: float, slack: float = 1e-3) -> NormBound:
    r"""A guaranteed upper bound on ``max_f ||M_f||_2`` from a lower ``estimate``.

    Proposes ``s = estimate (1 + slack)`` and checks that ``s^2 (1 - kappa) I - M_f^H M_f`` is
    positive definite for every ``f`` by a Cholesky factorisation in float64 (``kappa = 16 k
    eps_64`` absorbs the factorisation's rounding, so a success proves ``||M_f|| < s``). On
    failure the slack grows fourfold (three tries), then the exact largest eigenvalue of the
    Gram matrices decides. Any ``estimate`` is safe (a poor one only costs tries); the bound is
    within ``slack`` of the norm when the estimate is good.

    Args:
        mats: ``(F, m, n)`` real or complex matrices (``F = 1`` for a dense weight).
        estimate: a lower estimate of the norm (e.g. power iteration's ``||W v||``).
        slack: the relative slack to propose first.

    Returns:
        A :class:`NormBound`.

    Example:
        >>> w = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
        >>> nb = certified_norm_bound(w, estimate=1.999)
        >>> 2.0 <= nb.bound <= 2.0 * 1.01
        True
    """
    wide = torch.complex128 if mats.is_complex() else torch.float64
    g = gram(mats.detach().to(wide))
    k = g.shape[-1]
    eye = torch.eye(k, dtype=wide, device=g.device)
    kappa = 16 * k * torch.finfo(torch.float64).eps
    estimate = float(estimate)
    usable = math.isfinite(estimate) and estimate > 0.0
    slack = max(float(slack), SLACK_MIN)
    for tries in range(1, _MAX_TRIES + 1 if usable else 1):
        s = estimate * (1.0 + slack)
        _, info = torch.linalg.cholesky_ex(g.neg() + (s * s * (1 - kappa)) * eye)
        if not bool(info.any()):
            return NormBound(s, slack / 2 if tries == 1 else slack, tries, exact=False)
        slack *= _SLACK_GROWTH
    top = float(torch.linalg.eigvalsh(g)[..., -1].amax().clamp_min(0.0))
    # Weyl: the computed eigenvalues are within k eps ||G|| of the true ones; pad by twice that.
    s = math.sqrt(top * (1 + 2 * kappa)) + math.sqrt(torch.finfo(torch.float64).tiny)
    slack = max(s / estimate - 1.0, SLACK_MIN) if usable else slack
    return NormBound(s, slack, _MAX_TRIES if usable else 0, exact=True)
