r"""Spectrally normalised linear and convolutional layers with ``||W|| <= c < 1``.

The effective weight is ``W / max(1, sigma / c)`` where ``sigma`` estimates the operator norm
of the layer by power iteration. The power-iteration state (``u``, ``v``) lives in buffers.

When the iteration runs: in training mode, on the first call after the raw weight changed
(an optimiser step, ``load_state_dict``, a move to another device); never between two calls
that see the same raw weight. So every iteration of a solve, and the log-det estimate of the
same step, see one fixed map. :meth:`refine` runs the iteration to a tolerance on demand
(e.g. before evaluation or certification).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpectralConv2d", "SpectralLinear", "check_coeff"]


def check_coeff(coeff: float, name: str = "coeff") -> float:
    """Validate a Lipschitz coefficient ``0 < c < 1`` and return it as a float."""
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1), got {type(coeff).__name__}")
    if not 0.0 < float(coeff) < 1.0:
        raise ValueError(
            f"{name} must be in (0, 1) so that the residual map is invertible, got {coeff!r}"
        )
    return float(coeff)


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)


class _SpectralMixin(nn.Module):
    """Shared logic: version tracking, automatic updates, refinement, the soft rescaling."""

    weight: nn.Parameter
    u: Tensor
    v: Tensor
    coeff: float
    n_power_iterations: int

    def _init_spectral(self, coeff: float, n_power_iterations: int) -> None:
        self.coeff = check_coeff(coeff)
        if not isinstance(n_power_iterations, int) or n_power_iterations < 1:
            raise ValueError(
                f"n_power_iterations must be a positive int, got {n_power_iterations!r}"
            )
        self.n_power_iterations = n_power_iterations
        self._seen_key: tuple[int, int] | None = None

    def _weight_key(self) -> tuple[int, int]:
        return (self.weight._version, self.weight.data_ptr())

    # Subclasses implement the operator and its adjoint on the buffers' shapes.
    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _ready(self) -> bool:
        return True

    @torch.no_grad()
    def power_iteration(self, n: int) -> None:
        """Run ``n`` power iterations on the buffers (no autograd)."""
        w = self.weight.detach()
        u, v = self.u, self.v
        for _ in range(n):
            v = _normalize(self._apply_wt(u, w))
            u = _normalize(self._apply_w(v, w))
        self.u.copy_(u)
        self.v.copy_(v)
        self._seen_key = self._weight_key()

    @torch.no_grad()
    def refine(self, tol: float = 1e-6, max_iter: int = 2000) -> float:
        """Power-iterate until ``sigma`` changes by less than ``tol`` (relative); return it.

        The estimate is a lower bound of the true norm that converges to it; use
        :func:`~implicit_transforms.lipschitz.certify` for a guaranteed upper bound.
        """
        if not self._ready():
            raise RuntimeError(
                f"{type(self).__name__}: run one forward pass first (input size unknown)"
            )
        prev = float(self.sigma())
        for _ in range(max_iter):
            self.power_iteration(1)
            cur = float(self.sigma())
            if abs(cur - prev) <= tol * max(abs(cur), 1e-30):
                return cur
            prev = cur
        return prev

    def mark_stale(self) -> None:
        """Make the next training-mode call run the power iteration, as after a weight change.

        A trainer calls this where a resumed run would restart (after a checkpoint), so that
        both see the same sequence of updates.
        """
        self._seen_key = None

    def sigma(self) -> Tensor:
        """Current estimate ``u^T W v`` of the operator norm (differentiable in ``W``)."""
        return (self.u.clone() * self._apply_w(self.v.clone(), self.weight)).sum()

    def normalized_weight(self) -> Tensor:
        """``W / max(1, sigma / c)`` with the current estimate; never updates the buffers."""
        scale = torch.clamp(self.sigma() / self.coeff, min=1.0)
        return self.weight / scale

    def _maybe_update(self) -> None:
        if self.training and self._seen_key != self._weight_key():
            self.power_iteration(self.n_power_iterations)


class SpectralLinear(_SpectralMixin):
    r"""``y = W' x + b`` with ``W' = W / max(1, sigma / c)`` and ``sigma ~ ||W||_2``.

    Args:
        in_features: input size ``D_in``.
        out_features: output size ``D_out``.
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per update (training mode, after a weight change).

    Shapes:
        ``(*, D_in) -> (*, D_out)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        coeff: float = 0.97,
        bias: bool = True,
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        self._init_spectral(coeff, n_power_iterations)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self.register_buffer("u", _normalize(torch.randn(out_features)))
        self.register_buffer("v", _normalize(torch.randn(in_features)))
        self.power_iteration(50)

    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        return w @ x

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        return w.T @ y

    def forward(self, x: Tensor) -> Tensor:
        """Apply the normalised affine map."""
        self._maybe_update()
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, coeff={self.coeff}, bias={self.bias is not None}"


class SpectralConv2d(_SpectralMixin):
    r"""Stride-1 "same" convolution normalised by its operator norm on the actual input size.

    ``sigma`` estimates ``||conv||_2`` for the input spatial size ``(H, W)`` seen in forward,
    by power iteration with ``conv2d`` / ``conv_transpose2d``; the buffers are re-created and
    the iteration refined to a tolerance whenever that size changes.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size ``k`` (padding ``k // 2`` keeps the spatial size).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per update.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        coeff: float = 0.97,
        bias: bool = True,
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        self._init_spectral(coeff, n_power_iterations)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.in_channels, self.out_channels, self.kernel_size = (
            in_channels,
            out_channels,
            kernel_size,
        )
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        # Empty until the first forward pass tells the spatial size.
        self.register_buffer("u", torch.empty(0, out_channels, 0, 0))
        self.register_buffer("v", torch.empty(0, in_channels, 0, 0))

    @property
    def spatial_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` the norm estimate refers to, or ``None`` before the first forward."""
        return None if self.v.shape[0] == 0 else (int(self.v.shape[2]), int(self.v.shape[3]))

    def _ready(self) -> bool:
        return self.spatial_size is not None

    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, padding=self.padding)

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        return F.conv_transpose2d(y, w, padding=self.padding)

    @torch.no_grad()
    def _reset_size(self, h: int, w: int) -> None:
        like = self.weight
        self.u = _normalize(
            torch.randn(1, self.out_channels, h, w, dtype=like.dtype, device=like.device)
        )
        self.v = _normalize(
            torch.randn(1, self.in_channels, h, w, dtype=like.dtype, device=like.device)
        )
        self.refine(tol=1e-4, max_iter=500)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the normalised convolution to ``(B, C_in, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SpectralConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if self.spatial_size != (x.shape[2], x.shape[3]):
            self._reset_size(x.shape[2], x.shape[3])
        self._maybe_update()
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The buffers' shape depends on the input size seen by the saved model: adopt it.
        for name in ("u", "v"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._seen_key = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"coeff={self.coeff}, bias={self.bias is not None}"
        )
