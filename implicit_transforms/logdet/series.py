r"""Power-series log-determinant estimators for ``I + J_g`` with ``Lip(g) < 1``.

``log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k``, converging absolutely when
``||J|| < 1``. Traces are estimated with Hutchinson probes, ``tr(A) = E[v^T A v]``, and the
powers are applied by repeated vector-Jacobian products ``v^T J^k``.

Two ways to differentiate:

* ``gradient="backprop"``: autograd through every product (memory grows with the number of
  terms);
* ``gradient="neumann"``: ``d log det(I + J) = tr((I + J)^{-1} dJ)`` with the inverse as the
  (weighted) Neumann series ``sum_j (-1)^j J^j``. The series vector ``w^T = v^T sum_j c_j J^j``
  is formed without a graph, and one differentiable product ``w^T J v`` carries the gradient:
  memory independent of the number of terms. The returned value is still a genuine estimate of
  the log-determinant (``value + surrogate - surrogate.detach()``), and because the surrogate
  is per sample, gradients are correct for any per-sample upstream weighting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from implicit_transforms.logdet.base import (
    evaluate_with_input_grad,
    first_order_only,
    flat_dim,
    sum_event,
    vjp,
)
from implicit_transforms.logdet.random import (
    Fixed,
    Geometric,
    ProbeKind,
    SeriesLength,
    sample_probes,
)

__all__ = [
    "GradientMode",
    "PowerSeriesLogDet",
    "RouletteLogDet",
    "SeriesLogDet",
    "power_series_bound",
]

GradientMode = Literal["backprop", "neumann"]

_NEUMANN_FIRST_ORDER = (
    "a second derivative (create_graph=True) was requested through a log-det estimated with "
    "gradient='neumann', whose gradient is a first-order identity; use gradient='backprop' "
    "or ExactLogDet for higher derivatives"
)


def power_series_bound(lipschitz: float, n_terms: int, dim: int) -> float:
    r"""Bound on the truncation error of the log-det power series after ``n_terms`` terms.

    ``|log det(I + J) - sum_{k<=n} (-1)^{k+1} tr(J^k)/k| <= dim * sum_{k>n} L^k / k
    <= dim * L^(n+1) / ((n+1) (1 - L))`` for ``||J||_2 <= L < 1``, since ``|tr(J^k)| <= dim L^k``:

    .. math::
        \Big|\log\det(I + J) - \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\operatorname{tr}(J^k)\Big|
        \le N \sum_{k > n} \frac{L^k}{k} \le \frac{N\,L^{n+1}}{(n+1)(1-L)}.

    Args:
        lipschitz: bound ``L`` on ``||J_g||_2``, in ``[0, 1)``.
        n_terms: number of terms kept.
        dim: matrix size ``N``.

    Returns:
        The bound (a float).

    Example:
        >>> round(power_series_bound(0.5, 10, 2), 8)
        0.00017756
    """
    if not 0.0 <= lipschitz < 1.0:
        raise ValueError(f"lipschitz must be in [0, 1), got {lipschitz!r}")
    return dim * lipschitz ** (n_terms + 1) / ((n_terms + 1) * (1.0 - lipschitz))


def _check_common(n_probes: int, probe: str, gradient: str, name: str) -> None:
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"{name}: n_probes must be a positive int, got {n_probes!r}")
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"{name}: probe must be 'gaussian' or 'rademacher', got {probe!r}")
    if gradient not in ("backprop", "neumann"):
        raise ValueError(f"{name}: gradient must be 'backprop' or 'neumann', got {gradient!r}")


def _series_logdet(
    g: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    event_dims: int,
    n_terms: int,
    survival: Callable[[int], float],
    n_probes: int,
    probe: ProbeKind,
    gradient: GradientMode,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    r"""Shared kernel: ``sum_{k=1}^{n} (-1)^{k+1} v^T J^k v / (k P(N >= k))`` averaged over probes.

    With ``survival == 1`` this is the truncated series; with a random ``n`` and its survival
    function it is the unbiased Russian-roulette estimator.
    """
    flat_dim(x, event_dims)
    grad_mode = torch.is_grad_enabled()
    with torch.enable_grad():
        x_in, gx = evaluate_with_input_grad(g, x)
        probes = sample_probes(x, n_probes, probe, generator)
        value = x.new_zeros(x.shape[: x.dim() - event_dims])
        surrogate = torch.zeros_like(value)
        backprop = grad_mode and gradient == "backprop"
        neumann = grad_mode and gradient == "neumann"
        for v in probes:
            w = v
            series_vec = torch.zeros_like(v) if neumann else None
            for k in range(1, n_terms + 1):
                weight = survival(k)
                if series_vec is not None:
                    # gradient term j = k - 1: (-1)^j J^j / P(N >= j + 1)
                    series_vec = series_vec + ((-1) ** (k - 1) / weight) * w
                w = vjp(gx, x_in, w, create_graph=backprop)
                if not backprop:
                    w = w.detach()
                value = value + ((-1) ** (k + 1) / (k * weight)) * sum_event(w * v, event_dims)
            if series_vec is not None:
                jv = vjp(gx, x_in, series_vec.detach(), create_graph=True)
                surrogate = surrogate + sum_event(jv * v, event_dims)
        value = value / n_probes
        surrogate = surrogate / n_probes
    if not grad_mode:
        return gx.detach(), value.detach()
    if gradient == "neumann":
        surrogate = first_order_only(surrogate, _NEUMANN_FIRST_ORDER)
        return gx, value.detach() + (surrogate - surrogate.detach())
    return gx, value


class SeriesLogDet:
    r"""The power series of ``log det(I + J)`` with a number of terms ``N`` drawn from
    ``length`` and Hutchinson probes:

    ``(1/P) sum_p sum_{k=1}^{N} (-1)^{k+1} v_p^T J^k v_p / (k P(N >= k))``.

    With :class:`~implicit_transforms.logdet.Fixed` lengths it is the truncated series
    (i-ResNet, biased by at most :func:`power_series_bound`); with a random length
    (:class:`~implicit_transforms.logdet.Geometric`, :class:`~implicit_transforms.logdet.Poisson`)
    the Russian-roulette weights ``1 / P(N >= k)`` make it unbiased (Residual Flows).
    :class:`PowerSeriesLogDet` and :class:`RouletteLogDet` are this class with each paper's
    defaults.

    Args:
        length: distribution of ``N`` (a :class:`~implicit_transforms.logdet.SeriesLength`).
        n_probes: number of Hutchinson probes ``P``.
        probe: ``"gaussian"`` or ``"rademacher"``.
        gradient: ``"backprop"`` or ``"neumann"`` (see the module docstring).
        generator: explicit source of randomness for ``N`` and the probes.

    Example:
        >>> import torch
        >>> from implicit_transforms.logdet import Fixed
        >>> est = SeriesLogDet(Fixed(3), gradient="backprop")
        >>> gx, ld = est(lambda x: 0.1 * x, torch.zeros(4, 2))
        >>> ld.shape
        torch.Size([4])
    """

    def __init__(
        self,
        length: SeriesLength,
        n_probes: int = 1,
        *,
        probe: ProbeKind = "gaussian",
        gradient: GradientMode = "neumann",
        generator: torch.Generator | None = None,
    ) -> None:
        name = type(self).__name__
        _check_common(n_probes, probe, gradient, name)
        if not callable(getattr(length, "sample", None)) or not callable(
            getattr(length, "survival", None)
        ):
            raise TypeError(
                f"{name}: length must be a SeriesLength (Fixed, Geometric, Poisson or an object "
                f"with sample() and survival()), got {type(length).__name__}"
            )
        self.length: SeriesLength = length
        self.n_probes, self.probe, self.gradient = n_probes, probe, gradient
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={self.length!r}, n_probes={self.n_probes}, "
            f"probe={self.probe!r}, gradient={self.gradient!r})"
        )

    def __call__(
        self, g: Callable[[Tensor], Tensor], x: Tensor, *, event_dims: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g(x), estimate of log det(I + J_g(x)))``.

        Args:
            g: the residual network, ``(*batch, *event) -> (*batch, *event)``.
            x: input, shape ``(*batch, *event)``.
            event_dims: number of trailing dimensions forming one sample.

        Returns:
            ``g(x)`` of shape ``(*batch, *event)`` and the estimate of shape ``batch``.
        """
        n_terms = self.length.sample(self.generator)
        tail = self.length.survival(n_terms)
        if not math.isfinite(tail) or tail <= 0:
            raise RuntimeError(f"{type(self).__name__}: P(N >= {n_terms}) underflowed to zero")
        return _series_logdet(
            g,
            x,
            event_dims=event_dims,
            n_terms=n_terms,
            survival=self.length.survival,
            n_probes=self.n_probes,
            probe=self.probe,
            gradient=self.gradient,
            generator=self.generator,
        )


class PowerSeriesLogDet(SeriesLogDet):
    r"""Truncated power series with Hutchinson probes (i-ResNet): **biased** by at most
    :func:`power_series_bound`. :class:`SeriesLogDet` with a
    :class:`~implicit_transforms.logdet.Fixed` length.

    ``log det(I + J) ~ (1/P) sum_p sum_{k=1}^{n} (-1)^{k+1} v_p^T J^k v_p / k``

    .. math:: \log\det(I + J) \approx \frac1P \sum_{p=1}^{P} \sum_{k=1}^{n}
        \frac{(-1)^{k+1}}{k}\, v_p^\top J^k v_p, \qquad \mathbb E[v v^\top] = I.

    Args:
        n_terms: number of series terms ``n``.
        n_probes: number of Hutchinson probes ``P``.
        probe: ``"gaussian"`` or ``"rademacher"``.
        gradient: ``"backprop"`` or ``"neumann"`` (see :mod:`implicit_transforms.logdet.series`).
        generator: explicit source of randomness for the probes.

    References:
        Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen, "Invertible Residual Networks", 2019.

    Example:
        A linear ``g(x) = 0.1 x`` on ``D = 3`` (``J = 0.1 I``) with Rademacher probes, for which
        ``v^T J^k v = 3 * 0.1^k`` exactly: the estimate is the truncated series.

        >>> import math, torch
        >>> est = PowerSeriesLogDet(n_terms=8, probe="rademacher")
        >>> gx, logdet = est(lambda x: 0.1 * x, torch.zeros(4, 3, dtype=torch.float64))
        >>> logdet.shape, bool((logdet - 3 * math.log(1.1)).abs().max() < power_series_bound(0.1, 8, 3))
        (torch.Size([4]), True)
    """

    def __init__(
        self,
        n_terms: int = 5,
        n_probes: int = 1,
        *,
        probe: ProbeKind = "gaussian",
        gradient: GradientMode = "backprop",
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(n_terms, bool) or not isinstance(n_terms, int) or n_terms < 1:
            raise ValueError(f"PowerSeriesLogDet: n_terms must be a positive int, got {n_terms!r}")
        super().__init__(
            Fixed(n_terms), n_probes, probe=probe, gradient=gradient, generator=generator
        )

    @property
    def n_terms(self) -> int:
        """Number of series terms."""
        return self.length.sample(None)

    def __repr__(self) -> str:
        return (
            f"PowerSeriesLogDet(n_terms={self.n_terms}, n_probes={self.n_probes}, "
            f"probe={self.probe!r}, gradient={self.gradient!r})"
        )


class RouletteLogDet(SeriesLogDet):
    r"""Unbiased Russian-roulette power series (Residual Flows): :class:`SeriesLogDet` with a
    random length, by default :class:`~implicit_transforms.logdet.Geometric` and the
    memory-efficient Neumann gradient.

    Draws ``N`` from ``length`` (one draw per call) and returns
    ``(1/P) sum_p sum_{k=1}^{N} (-1)^{k+1} v_p^T J^k v_p / (k P(N >= k))``, whose expectation is
    exactly ``log det(I + J)``.

    .. math:: \widehat{\log\det}(I + J) = \frac1P \sum_{p=1}^{P} \sum_{k=1}^{N}
        \frac{(-1)^{k+1}}{k\,P(N \ge k)}\, v_p^\top J^k v_p, \qquad
        \mathbb E\big[\widehat{\log\det}\big] = \log\det(I + J).

    Args:
        length: distribution of ``N`` (:class:`Geometric` or :class:`Poisson`, which fix the
            number of always-evaluated terms ``n_exact_terms``).
        n_probes: number of Hutchinson probes ``P``.
        probe: ``"gaussian"`` or ``"rademacher"``.
        gradient: ``"neumann"`` (default) or ``"backprop"``.
        generator: explicit source of randomness for ``N`` and the probes.

    References:
        Chen, Behrmann, Duvenaud, Jacobsen, "Residual Flows for Invertible Generative
        Modeling", 2019.

    Example:
        >>> import torch
        >>> est = RouletteLogDet(n_probes=4, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(8, 2, dtype=torch.float64)
        >>> gx, logdet = est(lambda x: 0.5 * torch.tanh(x), x)
        >>> gx.shape, logdet.shape
        (torch.Size([8, 2]), torch.Size([8]))
    """

    def __init__(
        self,
        length: SeriesLength | None = None,
        n_probes: int = 1,
        *,
        probe: ProbeKind = "gaussian",
        gradient: GradientMode = "neumann",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            Geometric() if length is None else length,
            n_probes,
            probe=probe,
            gradient=gradient,
            generator=generator,
        )
