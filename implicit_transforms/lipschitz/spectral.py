r"""Spectrally normalised linear and convolutional layers with ``||W'|| <= c < 1``.

The weight a layer applies is ``W' = W / max(1, s / c)`` with ``s >= ||W||`` a **guaranteed**
bound, computed from the raw weight ``W`` **as it is at that call**, however it was changed:
any optimiser (fused and foreach kernels included), a write through ``p.data``,
``load_state_dict`` (whatever state it carries), ``vector_to_parameters``, re-initialisation,
checkpoint averaging, Pyro's param store. The layer keeps a copy of the raw weight its bound
belongs to and compares contents (not version counters or storage pointers, which several
optimisers leave unchanged) before every use; the bound is redone whenever they differ. Stored
singular vectors are only warm starts, never trusted.

* **Exact** layers (dense layers whose smaller side is at most :data:`EXACT_MAX_DIM`, and
  convolutions whose smaller channel count is at most :data:`EXACT_MAX_CHANNELS`) use the exact
  largest singular value from an eigen-decomposition of the smaller Gram matrix (for
  convolutions, of every frequency's matrix of the circular convolution, a guaranteed bound of
  the zero-padded one): ``s = ||W||``.
* **Certified** layers (every larger one) run ``n_power_iterations`` warm-started power
  iterations for a lower estimate and its singular pair, then certify an upper bound ``s``
  slightly above it by a Cholesky factorisation
  (:func:`~implicit_transforms.lipschitz.norms.certified_norm_bound`), falling back to the
  exact eigenvalue when the estimate lags. The relative slack adapts (about ``1e-4`` to
  ``1e-3`` once training settles); in evaluation mode the power iteration first runs to a
  tolerance, so the bound is tight.

In both cases the bound holds at **every** call, in training and in evaluation, at any size.
``sigma`` has the value ``s`` and the gradient ``u v^T`` of the top singular value (from the
estimated singular pair). Between two weight changes every call sees exactly the same map, so
every iteration of a solve and the log-det estimate of the same step use one fixed map.

Under ``torch.func`` transforms (``jacrev``, ``vmap`` over stacked ensembles,
``functional_call`` inside them) no state can be written: the layers then normalise by the
exact norm from an SVD (:func:`~implicit_transforms.lipschitz.norms.exact_operator_norm`), a
pure function of the weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implicit_transforms.lipschitz.norms import (
    SLACK_MIN,
    certified_norm_bound,
    circular_grid,
    circular_spectrum,
    exact_operator_norm,
    gram,
)
from implicit_transforms.recipes.families import LAYER_COEFF
from implicit_transforms.validation import real_scalar

__all__ = [
    "EXACT_MAX_CHANNELS",
    "EXACT_MAX_DIM",
    "CertifiedNorm",
    "ExactNorm",
    "NormStrategy",
    "SpectralConv2d",
    "SpectralLinear",
    "check_coeff",
    "circular_grid",
    "frozen_weights",
]

EXACT_MAX_DIM = 256
"""Dense layers (and 1x1 convolutions) with ``min(D_in, D_out)`` at most this use the exact
spectral norm (an eigen-decomposition of a ``min x min`` Gram matrix; about 0.7 ms for 128 on
one CPU core); larger ones a certified bound (see the module docstring)."""

EXACT_MAX_CHANNELS = 64
"""Convolutions whose smaller channel count is at most this use the exact norm of the circular
convolution; larger ones a certified bound of it."""

EVAL_TOLERANCE = 1e-6
"""Relative tolerance of the power iteration of certified layers in evaluation mode."""

_START_SLACK = 1e-3


def check_coeff(coeff: float, name: str = "coeff") -> float:
    """Validate a Lipschitz coefficient ``0 < c < 1`` and return it as a float.

    Accepts Python, NumPy and 0-d tensor real scalars; refuses booleans.

    Example:
        >>> check_coeff(0.9)
        0.9
    """
    value = real_scalar(coeff, name, "a float in (0, 1)")
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must be in (0, 1) so that the residual map is invertible, got {coeff!r}"
        )
    return value


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, jacrev, vmap, ...) is running."""
    return torch._C._functorch.peek_interpreter_stack() is not None


class NormStrategy:
    """How a spectral layer bounds ``||W||`` at a weight change: an object the layer holds
    (``layer.norm``), so a layer never branches on a mode flag.

    ``update`` runs at every weight change, ``improve`` on request (``refine``, ``eval()``),
    ``sigma`` gives the differentiable norm the layer divides by (value ``s >= ||W||``).
    """

    def update(self, layer: _SpectralMixin, w: Tensor) -> None:
        """Bring the layer's bound up to date with the raw weight ``w``."""
        raise NotImplementedError

    def improve(
        self,
        layer: _SpectralMixin,
        w: Tensor,
        *,
        tol: float = EVAL_TOLERANCE,
        max_iter: int = 2000,
        n_iterations: int | None = None,
    ) -> None:
        """Tighten the bound (more power iterations); a no-op where it is already exact."""

    def sigma(self, layer: _SpectralMixin, weight: Tensor) -> Tensor:
        """``s``, differentiable in ``weight``."""
        raise NotImplementedError


class ExactNorm(NormStrategy):
    """``s = ||W||`` exactly: an eigen-decomposition of the smaller Gram matrix (per
    frequency for convolutions) at each weight change."""

    def update(self, layer: _SpectralMixin, w: Tensor) -> None:
        layer._exact_singular_vectors(w)
        layer._bound = None

    def sigma(self, layer: _SpectralMixin, weight: Tensor) -> Tensor:
        return layer._exact_sigma(weight)

    def __repr__(self) -> str:
        return "ExactNorm()"


class CertifiedNorm(NormStrategy):
    """``s`` slightly above ``||W||``: warm-started power iteration for an estimate, then
    :func:`~implicit_transforms.lipschitz.norms.certified_norm_bound` proves ``s`` (value the
    certified bound, gradient the estimated singular pair's ``u v^T``)."""

    def update(self, layer: _SpectralMixin, w: Tensor) -> None:
        if layer.training:
            layer._iterate(w, layer.n_power_iterations)
        else:
            layer._iterate_to(w, EVAL_TOLERANCE, 2000)
        layer._certify(w)

    def improve(
        self,
        layer: _SpectralMixin,
        w: Tensor,
        *,
        tol: float = EVAL_TOLERANCE,
        max_iter: int = 2000,
        n_iterations: int | None = None,
    ) -> None:
        if n_iterations is not None:
            layer._iterate(w, n_iterations)
        else:
            layer._iterate_to(w, tol, max_iter)
            layer._slack = SLACK_MIN
        layer._certify(w)

    def sigma(self, layer: _SpectralMixin, weight: Tensor) -> Tensor:
        lin = layer._power_sigma(weight)
        if layer._bound is None:  # pragma: no cover - update() always certifies first
            raise RuntimeError(f"{type(layer).__name__}: no certified bound yet")
        return lin + (layer._bound - lin).detach()

    def __repr__(self) -> str:
        return "CertifiedNorm()"


class _SpectralMixin(nn.Module):
    """Shared logic: content-keyed updates, exact or certified norms, the soft rescaling."""

    weight: nn.Parameter
    u: Tensor
    v: Tensor
    coeff: float
    n_power_iterations: int

    def _init_spectral(self, coeff: float, n_power_iterations: int) -> None:
        self.coeff = check_coeff(coeff)
        if (
            isinstance(n_power_iterations, bool)
            or not isinstance(n_power_iterations, int)
            or n_power_iterations < 1
        ):
            raise ValueError(
                f"n_power_iterations must be a positive int, got {n_power_iterations!r}"
            )
        self.n_power_iterations = n_power_iterations
        self.norm: NormStrategy = CertifiedNorm()
        self._estimate_of: Tensor | None = None  # the raw weight the bound belongs to
        self._bound: Tensor | None = None  # certified layers: s >= ||W|| for that weight
        self._slack = _START_SLACK
        # frozen_weights(): the normalised weight of the current scope and its grad mode.
        self._frozen: Tensor | None = None
        self._freeze_grad: bool | None = None

    # Subclasses implement the operator and its adjoint on the buffers' shapes.
    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _operator_matrices(self, w: Tensor) -> Tensor:
        """``(F, m, n)`` matrices whose largest norm bounds the layer's operator norm."""
        raise NotImplementedError

    def _spatial(self) -> tuple[int, int] | None:
        return None

    def _ready(self) -> bool:
        return True

    # -- keeping the bound in line with the raw weight ------------------------------------
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
        """Redo the norm of the raw weight if its content changed since the last one."""
        if not self._ready() or self._is_current():
            return
        w = self.weight.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"{type(self).__name__}: the weight contains NaN or Inf (a diverged optimiser "
                "step?); the layer cannot be normalised"
            )
        self.norm.update(self, w)
        self._estimate_of = w.clone()

    def _certify(self, w: Tensor) -> None:
        estimate = float(torch.linalg.vector_norm(self._apply_w(self.v, w)))
        result = certified_norm_bound(self._operator_matrices(w), estimate, self._slack)
        self._slack = result.slack
        self._bound = w.new_tensor(result.bound)

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
        """Run ``n`` more power iterations on the current weight and certify again (no
        autograd; exact layers are already exact)."""
        self._sync()
        if self._ready():
            self.norm.improve(self, self.weight.detach(), n_iterations=n)

    @torch.no_grad()
    def refine(self, tol: float = EVAL_TOLERANCE, max_iter: int = 2000) -> float:
        """Run the power iteration to a relative tolerance ``tol`` and certify a tight bound
        again (exact layers: already exact); return ``sigma``.

        The value is a guaranteed upper bound of the layer's norm either way; refining only
        makes a certified layer's bound tighter.
        """
        if not self._ready():
            raise RuntimeError(
                f"{type(self).__name__}: run one forward pass first (input size unknown)"
            )
        self._sync()
        self.norm.improve(self, self.weight.detach(), tol=tol, max_iter=max_iter)
        return float(self.sigma())

    def sigma(self) -> Tensor:
        """The norm ``s >= ||W||`` used to normalise the current weight (differentiable in
        ``W``, gradient ``u v^T`` of the top singular value; exact layers: ``s = ||W||``)."""
        if _functorch_active():
            return exact_operator_norm(self.weight, self._spatial())
        self._sync()
        return self.norm.sigma(self, self.weight)

    def _power_sigma(self, weight: Tensor) -> Tensor:
        """``u^T W v`` with the current singular-vector estimates (linear in ``W``)."""
        return (self.u.clone() * self._apply_w(self.v.clone(), weight)).sum()

    def _exact_sigma(self, weight: Tensor) -> Tensor:
        """The exact top singular value, linear in ``W`` through its singular pair."""
        return self._power_sigma(weight)

    @property
    def exact(self) -> bool:
        """Whether the layer normalises by the exact norm (:class:`ExactNorm`) rather than a
        certified bound (:class:`CertifiedNorm`). Assigning switches the strategy."""
        return isinstance(self.norm, ExactNorm)

    @exact.setter
    def exact(self, value: bool) -> None:
        self.norm = ExactNorm() if value else CertifiedNorm()
        self._estimate_of = None
        self._bound = None

    def normalized_weight(self) -> Tensor:
        """``W / max(1, s / c)`` for the raw weight as it is now (``s >= ||W||``).

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
        scale = torch.clamp(self.sigma() / self.coeff, min=1.0)
        return self.weight / scale

    def train(self, mode: bool = True) -> _SpectralMixin:
        """Switch mode; going to evaluation tightens a certified layer's bound."""
        super().train(mode)
        if not mode and self._ready():
            self.norm.improve(self, self.weight.detach(), tol=EVAL_TOLERANCE)
        return self

    # -- state dicts: the singular vectors are saved as warm starts; the bound is always
    # recomputed from the loaded weight (whatever the state dict claims).
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "estimate_current", None)  # state dicts of earlier versions
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._estimate_of = None
        self._bound = None

    def _apply(self, fn: Any, recurse: bool = True) -> _SpectralMixin:
        # A dtype or device move keeps the buffers but not the copy of the weight.
        self._estimate_of = None
        self._bound = None
        return super()._apply(fn, recurse)


class SpectralLinear(_SpectralMixin):
    r"""``y = W' x + b`` with ``W' = W / max(1, s / c)`` and ``s >= ||W||_2`` guaranteed.

    ``s = ||W||_2`` exactly when ``min(D_in, D_out) <= EXACT_MAX_DIM`` (default ``exact=None``);
    otherwise a certified bound a little above it (see the module docstring).

    Args:
        in_features: input size ``D_in``.
        out_features: output size ``D_out``.
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per weight change (certified layers).
        exact: force the exact norm (``True``) or the certified bound (``False``).

    Shapes:
        ``(*, D_in) -> (*, D_out)``.

    Example:
        >>> layer = SpectralLinear(3, 4, coeff=0.9)
        >>> bool(torch.linalg.matrix_norm(layer.normalized_weight(), ord=2) <= 0.9 + 1e-6)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        coeff: float = LAYER_COEFF,
        bias: bool = True,
        n_power_iterations: int = 2,
        exact: bool | None = None,
    ) -> None:
        super().__init__()
        self._init_spectral(coeff, n_power_iterations)
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

    def _operator_matrices(self, w: Tensor) -> Tensor:
        return w[None]

    def _exact_singular_vectors(self, w: Tensor) -> None:
        # sigma^2 is the top eigenvalue of the smaller Gram matrix; its eigenvector is one
        # singular vector and the other follows from one product.
        _, vecs = torch.linalg.eigh(gram(w[None])[0])
        if w.shape[0] >= w.shape[1]:
            v = vecs[:, -1]
            u = _normalize(w @ v)
        else:
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


class SpectralConv2d(_SpectralMixin):
    r"""Stride-1 "same" convolution normalised by a guaranteed bound of its operator norm on
    the actual input size.

    The bound is the norm of the *circular* convolution on the torus of :func:`circular_grid`
    (the largest singular value of the ``C_out x C_in`` kernel transforms over all its
    frequencies), which bounds the zero-padded convolution's norm from above (by 1-20% on tiny
    inputs, less on larger ones). It is exact (an FFT and a batched eigen-decomposition per
    weight change) when the smaller channel count is at most :data:`EXACT_MAX_CHANNELS` (1x1
    kernels: :data:`EXACT_MAX_DIM`), else certified slightly above the power-iteration
    estimate (see the module docstring). ``||conv|| <= c`` holds at every call.

    The bound refers to the spatial size ``(H, W)`` of the input seen in forward and is
    redone whenever that size changes.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size ``k`` (padding ``k // 2`` keeps the spatial size).
        coeff: Lipschitz coefficient ``c`` in ``(0, 1)``.
        bias: whether to learn a bias.
        n_power_iterations: power iterations per weight change (certified layers).
        exact: force the exact circular norm (``True``) or the certified bound (``False``).

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
        coeff: float = LAYER_COEFF,
        bias: bool = True,
        n_power_iterations: int = 2,
        exact: bool | None = None,
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
        """The ``(H, W)`` the norm refers to, or ``None`` before the first forward."""
        return None if self.v.shape[0] == 0 else (int(self.v.shape[2]), int(self.v.shape[3]))

    def _spatial(self) -> tuple[int, int] | None:
        return self.spatial_size

    def _ready(self) -> bool:
        return self.spatial_size is not None

    def _apply_w(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, padding=self.padding)

    def _apply_wt(self, y: Tensor, w: Tensor) -> Tensor:
        return F.conv_transpose2d(y, w, padding=self.padding)

    def _operator_matrices(self, w: Tensor) -> Tensor:
        size = self.spatial_size
        if self.kernel_size == 1 or size is None:  # (a k > 1 layer is certified once sized)
            return w[None, :, :, 0, 0]
        return circular_spectrum(w, circular_grid(size, self.kernel_size))

    def _exact_singular_vectors(self, w: Tensor) -> None:
        size = self.spatial_size
        if size is None:  # pragma: no cover - _sync checks readiness first
            return
        n1, n2 = circular_grid(size, self.kernel_size)
        spec = circular_spectrum(w, (n1, n2))
        # Top singular pair of every frequency from the smaller (Hermitian) Gram matrix.
        vals, vecs = torch.linalg.eigh(gram(spec))
        best = int(vals[:, -1].argmax())
        if w.shape[1] <= w.shape[0]:
            v = vecs[best, :, -1]
            u = spec[best] @ v
        else:
            u = vecs[best, :, -1]
            v = spec[best].mH @ u
        u = u / torch.linalg.vector_norm(u).clamp_min(torch.finfo(w.dtype).tiny)
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(w.dtype).tiny)
        f1, f2 = divmod(best, n2 // 2 + 1)  # the half spectrum's layout
        k = self.kernel_size
        a = torch.arange(k, dtype=w.dtype, device=w.device)
        angle = -2 * math.pi * (f1 * a[:, None] / n1 + f2 * a[None, :] / n2)
        self._phase = torch.polar(torch.ones_like(angle), angle)  # (k, k)
        self._u_hat, self._v_hat = u, v

    def _exact_sigma(self, weight: Tensor) -> Tensor:
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
        self._bound = None
        self._sync()
        self.norm.improve(self, self.weight.detach(), tol=1e-4, max_iter=500)

    def prepare(self, spatial_size: tuple[int, ...] | None = None) -> Tensor:
        """The normalised weight for inputs of spatial size ``(H, W)`` (the norm refers to it)."""
        if spatial_size is None or len(spatial_size) != 2:
            raise ValueError(f"SpectralConv2d needs the input's (H, W), got {spatial_size!r}")
        h, w = int(spatial_size[0]), int(spatial_size[1])
        if self.spatial_size != (h, w):
            if _functorch_active():
                raise RuntimeError(
                    f"SpectralConv2d: under torch.func transforms the layer cannot adopt a new "
                    f"input size (saw {self.spatial_size}, got {(h, w)}): run one ordinary "
                    "forward pass at this size first"
                )
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

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"coeff={self.coeff}, bias={self.bias is not None}, exact={self.exact}"
        )
