"""Random ingredients of the stochastic estimators: Hutchinson probes and series lengths.

All randomness comes from an explicit :class:`torch.Generator` when one is given, so results
are reproducible independently of the global RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

__all__ = ["Fixed", "Geometric", "Poisson", "ProbeKind", "SeriesLength", "sample_probes"]

ProbeKind = Literal["gaussian", "rademacher"]


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def sample_probes(
    like: Tensor, n: int, kind: ProbeKind, generator: torch.Generator | None
) -> Tensor:
    """Draw ``n`` Hutchinson probes ``v`` with ``E[v] = 0``, ``Cov(v) = I``.

    Args:
        like: tensor whose shape ``S``, dtype and device the probes take.
        n: number of probes.
        kind: ``"gaussian"`` (``N(0, I)``) or ``"rademacher"`` (uniform signs).
        generator: source of randomness (global RNG when ``None``).

    Returns:
        Tensor of shape ``(n, *S)``.

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> v = sample_probes(torch.zeros(4, 3), 2, "rademacher", gen)
        >>> v.shape, sorted(set(v.flatten().tolist()))
        (torch.Size([2, 4, 3]), [-1.0, 1.0])
    """
    device = _gen_device(generator, like.device)
    shape = (n, *like.shape)
    if kind == "gaussian":
        v = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    elif kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        v = (2 * bits - 1).to(like.dtype)
    else:
        raise ValueError(f"probe kind must be 'gaussian' or 'rademacher', got {kind!r}")
    return v.to(like.device)


class SeriesLength(Protocol):
    """Distribution of the random number of series terms ``N >= n_exact_terms``, for
    :class:`~implicit_transforms.logdet.RouletteLogDet`: term ``k`` of a series truncated at
    ``N`` is weighted by ``1 / P(N >= k)``, which makes the truncated sum unbiased.
    :class:`Geometric` and :class:`Poisson` implement it.
    """

    def sample(self, generator: torch.Generator | None) -> int:
        """Draw ``N``.

        Args:
            generator: source of randomness (global RNG when ``None``).

        Returns:
            The number of terms, ``>= n_exact_terms``.
        """
        ...

    def survival(self, k: int) -> float:
        """``P(N >= k)``.

        Args:
            k: a term index, ``>= 1``.

        Returns:
            The probability that term ``k`` is evaluated (1 for the exact terms).
        """
        ...


@dataclass(frozen=True)
class Fixed:
    """``N = n_terms`` always: the truncated series (i-ResNet), biased by at most
    :func:`~implicit_transforms.logdet.series.power_series_bound`.

    Example:
        >>> Fixed(5).sample(None), Fixed(5).survival(5)
        (5, 1.0)
    """

    n_terms: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.n_terms, bool) or not isinstance(self.n_terms, int) or self.n_terms < 1:
            raise ValueError(f"Fixed: n_terms must be a positive int, got {self.n_terms!r}")

    def sample(self, generator: torch.Generator | None) -> int:
        """``n_terms`` (no randomness)."""
        return self.n_terms

    def survival(self, k: int) -> float:
        """``P(N >= k)``: 1 up to ``n_terms`` (only those terms are ever evaluated)."""
        return 1.0 if k <= self.n_terms else 0.0


@dataclass(frozen=True)
class Geometric:
    r"""``N = n_exact_terms + M`` with ``P(M >= j) = (1 - p)^j``, ``j = 0, 1, ...``.

    .. math:: P(N \ge k) = (1 - p)^{\max(0,\ k - n_\text{exact})}

    Args:
        p: success probability in ``(0, 1)``; the expected number of extra terms is ``(1-p)/p``.
        n_exact_terms: terms always evaluated (weight 1).

    Example:
        >>> import torch
        >>> length = Geometric(p=0.5, n_exact_terms=2)
        >>> length.survival(2), length.survival(4)
        (1.0, 0.25)
        >>> length.sample(torch.Generator().manual_seed(0)) >= 2
        True
    """

    p: float = 0.5
    n_exact_terms: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"Geometric: p must be in (0, 1), got {self.p!r}")
        if not isinstance(self.n_exact_terms, int) or self.n_exact_terms < 1:
            raise ValueError(
                f"Geometric: n_exact_terms must be an int >= 1, got {self.n_exact_terms!r}"
            )

    def sample(self, generator: torch.Generator | None) -> int:
        """Draw ``N`` by inversion: ``M = floor(log U / log(1 - p))``."""
        device = _gen_device(generator, torch.device("cpu"))
        u = float(torch.rand((), generator=generator, device=device, dtype=torch.float64))
        u = max(u, 1e-300)
        return self.n_exact_terms + int(math.floor(math.log(u) / math.log1p(-self.p)))

    def survival(self, k: int) -> float:
        """``P(N >= k)``: 1 for ``k <= n_exact_terms``, else ``(1-p)^(k - n_exact_terms)``."""
        return 1.0 if k <= self.n_exact_terms else (1.0 - self.p) ** (k - self.n_exact_terms)


@dataclass(frozen=True)
class Poisson:
    """``N = n_exact_terms + M`` with ``M ~ Poisson(rate)``.

    Args:
        rate: mean number of extra terms, ``> 0``.
        n_exact_terms: terms always evaluated (weight 1).

    Example:
        >>> length = Poisson(rate=2.0, n_exact_terms=1)
        >>> length.survival(1), round(length.survival(2), 4)  # P(M >= 1) = 1 - exp(-2)
        (1.0, 0.8647)
    """

    rate: float = 2.0
    n_exact_terms: int = 2

    def __post_init__(self) -> None:
        if not self.rate > 0.0:
            raise ValueError(f"Poisson: rate must be > 0, got {self.rate!r}")
        if not isinstance(self.n_exact_terms, int) or self.n_exact_terms < 1:
            raise ValueError(
                f"Poisson: n_exact_terms must be an int >= 1, got {self.n_exact_terms!r}"
            )

    def sample(self, generator: torch.Generator | None) -> int:
        """Draw ``N``."""
        device = _gen_device(generator, torch.device("cpu"))
        rate = torch.tensor(self.rate, dtype=torch.float64, device=device)
        return self.n_exact_terms + int(torch.poisson(rate, generator=generator))

    def survival(self, k: int) -> float:
        """``P(N >= k) = P(M >= j)``, ``j = k - n_exact_terms``: the regularised lower
        incomplete gamma function ``P(j, rate)`` (no cancellation in the far tail)."""
        j = k - self.n_exact_terms
        if j <= 0:
            return 1.0
        args = torch.tensor([float(j), self.rate], dtype=torch.float64)
        return float(torch.special.gammainc(args[0], args[1]))
