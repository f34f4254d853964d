r"""Seeded 2-D toy densities: the command line's built-in data sets, and the benchmarks' and
tutorials' toy data.

Every sampler has the signature ``sampler(n, generator) -> (n, 2)`` tensor (float64) and draws
all randomness from ``generator``, so a seed fixes the data set exactly.

Example:
    >>> x = TOY_DATASETS["checkerboard"](1000, torch.Generator().manual_seed(0))
    >>> x.shape, bool((x.abs() <= 4).all())
    (torch.Size([1000, 2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "KNOWN_ENTROPY_BITS",
    "TOY_DATASETS",
    "Sampler",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "moons",
    "pinwheel",
    "rings",
    "swissroll",
    "two_spirals",
]

Sampler = Callable[[int, torch.Generator], Tensor]
"""``sampler(n, generator) -> (n, 2)`` float64 samples."""


def _uniform(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _normal(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _choice(n: int, k: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, k, (n,), generator=g)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 "black" 2x2 squares of a 4x4 board covering ``[-4, 4]^2``.

    The support has area 32, so the differential entropy is ``log2(32) = 5`` bits exactly.
    """
    col = _choice(n, 4, g)
    row = 2 * _choice(n, 2, g) + (col % 2)  # rows of the same parity as the column
    x = -4.0 + 2.0 * col.double() + 2.0 * _uniform(n, g)
    y = -4.0 + 2.0 * row.double() + 2.0 * _uniform(n, g)
    return torch.stack([x, y], dim=1)


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """Mixture of 8 isotropic Gaussians (std 0.35) on a circle of radius 2.8."""
    angle = _choice(n, 8, g).double() * (2 * math.pi / 8)
    centres = 2.8 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.35 * _normal((n, 2), g)


def two_spirals(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved Archimedean spirals ``r = t``, ``t in [0, 3 pi]``, with noise 0.1."""
    t = torch.sqrt(_uniform(n, g)) * 3 * math.pi
    sign = 2.0 * _choice(n, 2, g).double() - 1.0
    pts = sign[:, None] * torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return pts / 3.0 + 0.1 * _normal((n, 2), g)


def moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaving half circles with Gaussian noise 0.1, centred and scaled by 2."""
    theta = math.pi * _uniform(n, g)
    upper = _choice(n, 2, g).bool()
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + 0.2 * _normal((n, 2), g)


def pinwheel(n: int, g: torch.Generator) -> Tensor:
    """Five curved arms: radial noise 0.3, tangential noise 0.1, twist rate 0.25."""
    arm = _choice(n, 5, g).double()
    feats = _normal((n, 2), g) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    feats[:, 0] += 1.0
    angle = arm * (2 * math.pi / 5) + 0.25 * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]])
    return 2.0 * rotated.T


def rings(n: int, g: torch.Generator) -> Tensor:
    """Four concentric rings of radii 1, 2, 3, 4 (equal mass), radial noise 0.08."""
    radius = 1.0 + _choice(n, 4, g).double()
    angle = 2 * math.pi * _uniform(n, g)
    pts = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return pts + 0.08 * _normal((n, 2), g)


def circles(n: int, g: torch.Generator) -> Tensor:
    """Two concentric circles of radii 3 and 1.5 (equal mass), noise 0.12."""
    radius = torch.where(_choice(n, 2, g).bool(), 3.0, 1.5).double()
    angle = 2 * math.pi * _uniform(n, g)
    pts = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return pts + 0.12 * _normal((n, 2), g)


def swissroll(n: int, g: torch.Generator) -> Tensor:
    """A 2-D Swiss roll ``t (cos t, sin t)``, ``t in [1.5 pi, 4.5 pi]``, scaled by 1/4."""
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return pts / 4.0 + 0.2 * _normal((n, 2), g)


TOY_DATASETS: dict[str, Sampler] = {
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "moons": moons,
    "pinwheel": pinwheel,
    "rings": rings,
    "circles": circles,
    "swissroll": swissroll,
}

#: Differential entropy (bits per sample) where it is known in closed form.
KNOWN_ENTROPY_BITS: dict[str, float] = {"checkerboard": 5.0}
