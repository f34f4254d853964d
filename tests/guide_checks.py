"""Checks shared by the Pyro guide tests (``conftest.py`` puts this folder on ``sys.path``).

``perturb`` moves a guide's parameters off their identity start so that no test passes
trivially; ``exact_log_q`` is the reference log-density of a transformed standard normal,
from a fresh inverse and the autograd Jacobian.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

__all__ = ["exact_log_q", "perturb"]


def perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter away from its (identity) start, so no test passes trivially."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def exact_log_q(transform: torch.distributions.Transform, z: torch.Tensor) -> torch.Tensor:
    """``log N(x) - log|det dT/dx|`` with ``x = T^{-1}(z)`` solved afresh (``z`` is cloned, so
    no cache answers), the Jacobian from autograd and ``slogdet``."""
    x = transform.inv(z.clone()).detach()
    logdets = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t: transform(t[None])[0], xi)
        logdets.append(torch.linalg.slogdet(jac).logabsdet)
    base = dist.Normal(torch.zeros(z.shape[-1], dtype=z.dtype), 1.0).to_event(1)
    return base.log_prob(x) - torch.stack(logdets)
