"""Log-determinant estimators for residual maps ``x -> x + g(x)`` with ``Lip(g) < 1``.

Every estimator is called as ``estimator(g, x, event_dims=k) -> (g(x), logdet)``: the exact
one (:class:`ExactLogDet`), or the power series (:class:`SeriesLogDet`) with a length
distribution: :class:`Fixed` (truncated, :class:`PowerSeriesLogDet`) or :class:`Geometric` /
:class:`Poisson` (unbiased Russian roulette, :class:`RouletteLogDet`).
"""

from implicit_transforms.logdet.base import LogDetEstimator
from implicit_transforms.logdet.exact import ExactLogDet
from implicit_transforms.logdet.random import (
    Fixed,
    Geometric,
    Poisson,
    SeriesLength,
    sample_probes,
)
from implicit_transforms.logdet.series import (
    PowerSeriesLogDet,
    RouletteLogDet,
    SeriesLogDet,
    power_series_bound,
)

__all__ = [
    "ExactLogDet",
    "Fixed",
    "Geometric",
    "LogDetEstimator",
    "Poisson",
    "PowerSeriesLogDet",
    "RouletteLogDet",
    "SeriesLength",
    "SeriesLogDet",
    "power_series_bound",
    "sample_probes",
]
