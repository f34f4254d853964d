"""Log-determinant estimators for residual maps ``x -> x + g(x)`` with ``Lip(g) < 1``.

Every estimator is called as ``estimator(g, x, event_dims=k) -> (g(x), logdet)``.
"""

from implicit_transforms.logdet.base import LogDetEstimator
from implicit_transforms.logdet.exact import ExactLogDet
from implicit_transforms.logdet.random import Geometric, Poisson, SeriesLength, sample_probes
from implicit_transforms.logdet.series import PowerSeriesLogDet, RouletteLogDet, power_series_bound

__all__ = [
    "ExactLogDet",
    "Geometric",
    "LogDetEstimator",
    "Poisson",
    "PowerSeriesLogDet",
    "RouletteLogDet",
    "SeriesLength",
    "power_series_bound",
    "sample_probes",
]
