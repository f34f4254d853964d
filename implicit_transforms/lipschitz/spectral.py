r"""Spectrally normalised linear and convolutional layers with ``||W'|| <= c < 1``.

The weight a layer applies is ``W' = W / max(1, sigma(W) / c)``, computed from the raw weight
``W`` **as it is at that call**, however it was changed: any optimiser (fused and foreach
kernels included), a write through ``p.data``, ``load_state_dict``, Pyro's param store. The
layer keeps a copy of the raw weight its estimate of ``sigma`` belongs to and compares
contents (not version counters or storage pointers, which several optimisers leave
unchanged) before every use; the estimate is brought up to date whenever they differ.

* Dense layers whose smaller side is at most :data:`EXACT_MAX_DIM` use the **exact** largest
  singular value (a symmetric eigen-decomposition of the smaller Gram matrix): the bound holds
  at every call, in training and in evaluation, with no state to go stale.
* Convolutions with moderate channel counts use the **exact norm of the circular
  convolution** on a slightly larger torus, a guaranteed upper bound of the zero-padded
  convolution's norm (see :class:`SpectralConv2d`).
* Larger layers use warm-started power iteration: ``n_power_iterations`` steps per weight
  change in training, and a safety ``margin`` (``sigma`` is multiplied by ``1 + margin``)
  against the lag of a few iterations; in evaluation mode (and whenever a layer is switched to
  it) the iteration runs to a tolerance. Only these layers need
  :func:`~implicit_transforms.lipschitz.certify` to know the bound.

``sigma`` is formed as ``u^T W v`` from the (constant) singular-vector estimates, so it equals
the estimate in value and its gradient is the derivative of the top singular value,
``u v^T``. Between two weight changes every call sees exactly the same map, so every
iteration of a solve and the log-det estimate of the same step use one fixed map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EXACT_MAX_CHANNELS",
    "EXACT_MAX_DIM",
    "SpectralConv2d",
    "SpectralLinear",
    "check_coeff",
    "circular_grid",
    "frozen_weights",
]

EXACT_MAX_DIM = 256
"""Dense layers with ``min(D_in, D_out)`` at most this use the exact spectral norm (an
eigen-decomposition of a ``min x min`` Gram matrix; about 0.7 ms for 128 on one CPU core)."""

EVAL_TOLERANCE = 1e-6
"""Relative tolerance of the power iteration in evaluation mode."""


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
    """Shared logic: content-keyed updates, refinement, the soft rescaling."""

    weight: nn.Parameter
    u: Tensor
    v: Tensor
    estimate_current: Tensor
    coeff: float
    n_power_iterations: int
    margin: float
    exact: bool

    def _init_spectral(self, coeff: float, n_power_iterations: int, margin: float) -> None:
        self.coeff = check_coeff(coeff)
        if (
            isinstance(n_power_iterations, bool)
            or not isinstance(n_power_iterations, int)
            or n_power_iterations < 1
        ):
            raise ValueError(
                f"n_power_iterations must be a positive int, got {n_power_iterations!r}"
            )
        if not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be a float in [0, 1), got {margin!r}")
        self.n_power_iterations = n_power_iterations
        self.margin = float(margin)
        self.exact = False
        self._estimate_of: Tensor | None = None  # the raw weight the estimate belongs to
        # Saved with the state: whether u, v belonged to the saved weight.
        self.register_buffer("estimate_current", torch.zeros((), dtype=torch.bool))
        # frozen_weights(): the normalised weight of the current scope and its grad mode.
        self._frozen: Tensor | None = None
        self._freeze_grad: bool | None = None

    # Subclasses implement the operator and its adjoint on the buffers' shapes.
    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _ready(self) -> bool:
        return True

    # -- keeping the estimate in line with the raw weight ---------------------------------
    def _is_current(self) -> bool:
        seen, w = self._estimate_of, self.weight
        return (
            seen is not None
            and seen.shape == w.shape
            and seen.dtype == w.dtype
            and seen.device == w.device
            and torch.equal(seen, w.detach())
        )

    @torch.no_grad()
    def _sync(self) -> None:
        """Bring ``sigma``'s estimate up to date with the raw weight if its content changed."""
        if not self._ready() or self._is_current():
            return
        w = self.weight.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"{type(self).__name__}: the weight contains NaN or Inf (a diverged optimiser "
                "step?); the layer cannot be normalised"
            )
        if self.exact:
            self._exact_singular_vectors(w)
        elif self.training:
            self._iterate(w, self.n_power_iterations)
        else:
            self._iterate_to(w, EVAL_TOLERANCE, 2000)
        self._estimate_of = w.clone()

    def _exact_singular_vectors(self, w: Tensor) -> None:
        raise NotImplementedError

    def _iterate(self, w: Tensor, n: int) -> None:
        u, v = self.u, self.v
        for _ in range(n):
            v = _normalize(self._apply_wt(u, w))
            u = _normalize(self._apply_w(v, w))
        self.u.copy_(u)
        self.v.copy_(v)

    def _iterate_to(self, w: Tensor, tol: float, max_iter: int) -> float:
        prev = float((self.u * self._apply_w(self.v, w)).sum())
        for _ in range(max_iter):
            self._iterate(w, 1)
            cur = float((self.u * self._apply_w(self.v, w)).sum())
            if abs(cur - prev) <= tol * max(abs(cur), 1e-30):
                return cur
            prev = cur
        return prev

    # -- public API --------------------------------------------------------------------------
    @torch.no_grad()
    def power_iteration(self, n: int) -> None:
        """Run ``n`` more power iterations on the current weight (no autograd)."""
        if self.exact:
            self._sync()
            return
        self._sync()
        self._iterate(self.weight.detach(), n)
        self._estimate_of = self.weight.detach().clone()

    @torch.no_grad()
    def refine(self, tol: float = EVAL_TOLERANCE, max_iter: int = 2000) -> float:
        """Bring ``sigma`` to a relative tolerance ``tol`` (exact layers: already exact);
        return it.

        Power iteration gives a lower bound of the true norm that converges to it; use
        :func:`~implicit_transforms.lipschitz.certify` for a guaranteed upper bound.
        """
        if not self._ready():
            raise RuntimeError(
                f"{type(self).__name__}: run one forward pass first (input size unknown)"
            )
        self._sync()
        if not self.exact:
            self._iterate_to(self.weight.detach(), tol, max_iter)
        self._estimate_of = self.weight.detach().clone()
        return float(self.sigma())

    def sigma(self) -> Tensor:
        """The norm used to normalise the current weight, ``u^T W v`` with the estimated
        singular pair (differentiable in ``W``; exact for exact layers)."""
        self._sync()
        return self._sigma_of(self.weight)

    def _sigma_of(self, weight: Tensor) -> Tensor:
        return (self.u.clone() * self._apply_w(self.v.clone(), weight)).sum()

    def normalized_weight(self) -> Tensor:
        """``W / max(1, (1 + margin) sigma / c)`` for the raw weight as it is now.

        Inside :func:`frozen_weights` it is computed once and reused until the scope ends.
        """
        frozen = self._frozen
        if frozen is not None:
            return frozen
        if self._freeze_grad is None:
            return self._normalize_now()
        with torch.set_grad_enabled(self._freeze_grad):
            self._frozen = self._normalize_now()
        return self._frozen

    def _normalize_now(self) -> Tensor:
        factor = 1.0 if self.exact else 1.0 + self.margin
        scale = torch.clamp(self.sigma() * (factor / self.coeff), min=1.0)
        return self.weight / scale

    def train(self, mode: bool = True) -> _SpectralMixin:
        """Switch mode; going to evaluation refines the estimate to :data:`EVAL_TOLERANCE`."""
        super().train(mode)
        if not mode and not self.exact and self._ready():
            self.refine(EVAL_TOLERANCE)
        return self

    # -- state dicts: the estimate is saved with a flag telling whether it belonged to the
    # saved weight, so a round trip restores exactly the same map without re-estimating.
    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        with torch.no_grad():
            self.estimate_current.fill_(bool(self._ready() and self._is_current()))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        key = prefix + "estimate_current"
        if key not in state_dict:  # a state dict from before the flag existed
            state_dict[key] = torch.zeros((), dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args)
        trusted = bool(self.estimate_current)
        self._estimate_of = self.weight.detach().clone() if trusted else None

    def _apply(self, fn: Any, recurse: bool = True) -> _SpectralMixin:
        # A dtype or device move keeps the buffers but not the copy of the weight.
        self._estimate_of = None
        return super()._apply(fn, recurse)


class SpectralLinear(_SpectralMixin):
    r"""``y = W' x + b`` with ``W' = W / max(1, sigma / c)`` and ``sigma = ||W||_2``.

    ``sigma`` is exact when ``min(D_in, D_out) <= EXACT_MAX_DIM`` (default ``exact=None``),
    otherwise estimated by power iteration (see the module docstring).

    Args:
        in_features: input size ``D_in``.
        out_features: output size ``D_out``.
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per weight change (power-iteration layers).
        margin: safety factor ``1 + margin`` on the power-iteration estimate.
        exact: force the exact norm (``True``) or power iteration (``False``).

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
        n_power_iterations: int = 2,
        margin: float = 0.02,
        exact: bool | None = None,
    ) -> None:
        super().__init__()
        self._init_spectral(coeff, n_power_iterations, margin)
        self.in_features, self.out_features = in_features, out_features
        self.exact = min(in_features, out_features) <= EXACT_MAX_DIM if exact is None else exact
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self.register_buffer("u", _normalize(torch.randn(out_features)))
        self.register_buffer("v", _normalize(torch.randn(in_features)))
        self.refine()

    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        return w @ x

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        return w.T @ y

    def _exact_singular_vectors(self, w: Tensor) -> None:
        # sigma^2 is the top eigenvalue of the smaller Gram matrix; its eigenvector is one
        # singular vector and the other follows from one product.
        if w.shape[0] >= w.shape[1]:
            _, vecs = torch.linalg.eigh(w.T @ w)
            v = vecs[:, -1]
            u = _normalize(w @ v)
        else:
            _, vecs = torch.linalg.eigh(w @ w.T)
            u = vecs[:, -1]
            v = _normalize(w.T @ u)
        self.u.copy_(u)
        self.v.copy_(v)

    def prepare(self, spatial_size: tuple[int, ...] | None = None) -> Tensor:
        """The normalised weight to apply now (``spatial_size`` is unused by dense layers)."""
        return self.normalized_weight()

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        """``x W^T + b`` with a given (normalised) weight: pure, traceable."""
        return F.linear(x, weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the normalised affine map."""
        return self.apply_weight(x, self.normalized_weight())

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, coeff={self.coeff}, "
            f"bias={self.bias is not None}, exact={self.exact}"
        )


def _spectral_layers(modules: tuple[nn.Module, ...]) -> list[_SpectralMixin]:
    return [m for module in modules for m in module.modules() if isinstance(m, _SpectralMixin)]


@contextmanager
def frozen_weights(*modules: nn.Module) -> Iterator[None]:
    """Within the scope, every spectral layer of ``modules`` normalises its weight once (at
    its first use) and reuses that tensor: the many network evaluations of one block call (a
    solve, the log-det, the implicit-gradient graph) then cost one normalisation per layer.

    The weight is normalised with the grad mode of the scope's entry, so a first use inside a
    ``no_grad`` solve still yields a tensor that carries gradients to the raw weight. Nested
    scopes keep the outermost one's tensors. The weights must not change inside the scope.
    """
    layers = [m for m in _spectral_layers(modules) if m._freeze_grad is None]
    grad = torch.is_grad_enabled()
    for m in layers:
        m._freeze_grad = grad
    try:
        yield
    finally:
        for m in layers:
            m._freeze_grad = None
            m._frozen = None


EXACT_MAX_CHANNELS = 64
"""Convolutions whose smaller channel count is at most this (or any 1x1 convolution whose
smaller side is at most :data:`EXACT_MAX_DIM`) use the exact norm of the circular convolution,
a guaranteed bound; larger ones use power iteration with a margin."""


def circular_grid(input_size: tuple[int, int], kernel_size: int) -> tuple[int, int]:
    """The torus ``(H + p, W + p)``, ``p = k // 2``, on which a circular convolution's norm
    bounds the zero-padded ("same") convolution's on ``(H, W)`` (``(1, 1)`` for ``k = 1``).

    Embedding an ``H x W`` input into the torus with zeros elsewhere, the circular convolution
    reads ``x`` at offsets ``-p .. H - 1 + p``, which never wrap onto the input as long as the
    torus has at least ``H + p`` cells; restricting the output to ``H x W`` then gives exactly
    the zero-padded convolution, and embeddings and restrictions have norm 1.
    """
    if kernel_size == 1:
        return (1, 1)
    p = kernel_size // 2
    return (input_size[0] + p, input_size[1] + p)


class SpectralConv2d(_SpectralMixin):
    r"""Stride-1 "same" convolution normalised by its operator norm on the actual input size.

    With ``exact`` (default when the smaller channel count is at most
    :data:`EXACT_MAX_CHANNELS`, or for 1x1 kernels at most :data:`EXACT_MAX_DIM`), ``sigma``
    is the exact norm of the *circular* convolution on the torus of :func:`circular_grid`: the
    largest singular value of the ``C_out x C_in`` kernel transforms over all its frequencies
    (an FFT and a batched eigen-decomposition per weight change). It bounds the zero-padded
    convolution's norm from above (by 1-20% on tiny inputs, less on larger ones), so the bound
    ``||conv|| <= c`` holds at every call. Otherwise ``sigma`` is estimated by warm-started
    power iteration with ``conv2d`` / ``conv_transpose2d`` (with the safety ``margin``, refined
    to a tolerance in evaluation mode); certify such layers with
    :func:`~implicit_transforms.lipschitz.certify`.

    The estimate refers to the spatial size ``(H, W)`` of the input seen in forward and is
    redone whenever that size changes.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size ``k`` (padding ``k // 2`` keeps the spatial size).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per weight change in training (power mode).
        margin: safety factor ``1 + margin`` on the power-iteration estimate.
        exact: force the circular bound (``True``) or power iteration (``False``).

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    References:
        Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", 2019.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        coeff: float = 0.97,
        bias: bool = True,
        n_power_iterations: int = 2,
        margin: float = 0.02,
        exact: bool | None = None,
    ) -> None:
        super().__init__()
        self._init_spectral(coeff, n_power_iterations, margin)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.in_channels, self.out_channels, self.kernel_size = (
            in_channels,
            out_channels,
            kernel_size,
        )
        self.padding = kernel_size // 2
        small = min(in_channels, out_channels)
        limit = EXACT_MAX_DIM if kernel_size == 1 else EXACT_MAX_CHANNELS
        self.exact = small <= limit if exact is None else exact
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        # Empty until the first forward pass tells the spatial size.
        self.register_buffer("u", torch.empty(0, out_channels, 0, 0))
        self.register_buffer("v", torch.empty(0, in_channels, 0, 0))
        # Exact mode: the maximising frequency's phases and singular pair (recomputed from the
        # weight whenever it changes, so they are not part of the state).
        self._phase: Tensor | None = None
        self._u_hat: Tensor | None = None
        self._v_hat: Tensor | None = None

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

    def _exact_singular_vectors(self, w: Tensor) -> None:
        size = self.spatial_size
        if size is None:  # pragma: no cover - _sync checks readiness first
            return
        n1, n2 = circular_grid(size, self.kernel_size)
        spec = torch.fft.fft2(w, s=(n1, n2)).permute(2, 3, 0, 1).reshape(n1 * n2, *w.shape[:2])
        # Top singular pair of every frequency from the smaller (Hermitian) Gram matrix.
        if w.shape[1] <= w.shape[0]:
            vals, vecs = torch.linalg.eigh(spec.mH @ spec)
            best = int(vals[:, -1].argmax())
            v = vecs[best, :, -1]
            u = spec[best] @ v
        else:
            vals, vecs = torch.linalg.eigh(spec @ spec.mH)
            best = int(vals[:, -1].argmax())
            u = vecs[best, :, -1]
            v = spec[best].mH @ u
        u = u / torch.linalg.vector_norm(u).clamp_min(torch.finfo(w.dtype).tiny)
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(w.dtype).tiny)
        f1, f2 = divmod(best, n2)
        k = self.kernel_size
        a = torch.arange(k, dtype=w.dtype, device=w.device)
        angle = -2 * math.pi * (f1 * a[:, None] / n1 + f2 * a[None, :] / n2)
        self._phase = torch.polar(torch.ones_like(angle), angle)  # (k, k)
        self._u_hat, self._v_hat = u, v

    def _sigma_of(self, weight: Tensor) -> Tensor:
        if not self.exact:
            return super()._sigma_of(weight)
        if self._phase is None or self._u_hat is None or self._v_hat is None:
            raise RuntimeError("SpectralConv2d: no estimate yet (run one forward pass first)")
        # K(f*) = sum_ab K[:, :, a, b] e^{-2 pi i (f1 a / N1 + f2 b / N2)}, linear in K.
        k_hat = torch.einsum("oiab,ab->oi", weight.to(self._phase.dtype), self._phase)
        return (self._u_hat.conj() @ k_hat @ self._v_hat).real

    @torch.no_grad()
    def _reset_size(self, h: int, w: int) -> None:
        like = self.weight
        self.u = _normalize(
            torch.randn(1, self.out_channels, h, w, dtype=like.dtype, device=like.device)
        )
        self.v = _normalize(
            torch.randn(1, self.in_channels, h, w, dtype=like.dtype, device=like.device)
        )
        self._estimate_of = None
        if self.exact:
            self._sync()
        else:
            self.refine(tol=1e-4, max_iter=500)

    def prepare(self, spatial_size: tuple[int, ...] | None = None) -> Tensor:
        """The normalised weight for inputs of spatial size ``(H, W)`` (the norm refers to it)."""
        if spatial_size is None or len(spatial_size) != 2:
            raise ValueError(f"SpectralConv2d needs the input's (H, W), got {spatial_size!r}")
        h, w = int(spatial_size[0]), int(spatial_size[1])
        if self.spatial_size != (h, w):
            self._reset_size(h, w)
        return self.normalized_weight()

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        """The "same" convolution with a given (normalised) weight: pure, traceable."""
        return F.conv2d(x, weight, self.bias, padding=self.padding)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the normalised convolution to ``(B, C_in, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SpectralConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.apply_weight(x, self.prepare((x.shape[2], x.shape[3])))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The buffers' shape depends on the input size seen by the saved model: adopt it.
        for name in ("u", "v"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.exact:  # the estimate is recomputed exactly from the loaded weight
            self._estimate_of = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"coeff={self.coeff}, bias={self.bias is not None}, exact={self.exact}"
        )
