"""Exact log-determinant from the full Jacobian (small dimensions, tests, evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from implicit_transforms.logdet.base import evaluate_with_input_grad, flat_dim, vjp

__all__ = ["ExactLogDet"]


class ExactLogDet:
    r"""``log |det(I + J_g(x))|`` from the full Jacobian and ``slogdet``.

    The Jacobian of each sample is assembled from ``N`` vector-Jacobian products with the
    basis vectors (``N = prod(event)``), so the cost is ``N`` backward passes: meant for
    ``N`` up to a few dozen. Differentiable (through ``create_graph``) when grad mode is on.

    Args:
        max_dim: refuse events with more than this many elements (a guard against
            accidentally building a huge Jacobian).

    Example:
        >>> import torch
        >>> gx, ld = ExactLogDet()(lambda x: 0.5 * x, torch.zeros(4, 3))
        >>> torch.allclose(ld, torch.full((4,), 3 * torch.log(torch.tensor(1.5))))
        True
    """

    def __init__(self, max_dim: int = 4096) -> None:
        self.max_dim = max_dim

    def __repr__(self) -> str:
        return f"ExactLogDet(max_dim={self.max_dim})"

    def jacobian(
        self, g: Callable[[Tensor], Tensor], x: Tensor, *, event_dims: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g(x), J)`` with ``J: (*batch, N, N)``, ``J[..., i, j] = d g_i / d x_j``."""
        n = flat_dim(x, event_dims)
        if n > self.max_dim:
            raise ValueError(
                f"ExactLogDet: an event of {n} elements exceeds max_dim={self.max_dim}; use a "
                "stochastic estimator (PowerSeriesLogDet, RouletteLogDet) for large inputs"
            )
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in, gx = evaluate_with_input_grad(g, x)
            batch = x.shape[: x.dim() - event_dims]
            basis = torch.eye(n, dtype=x.dtype, device=x.device)
            rows = [
                vjp(
                    gx,
                    x_in,
                    basis[i].reshape(x.shape[x.dim() - event_dims :]).expand_as(gx),
                    create_graph=grad_mode,
                ).reshape(*batch, n)
                for i in range(n)
            ]
        jac = torch.stack(rows, dim=-2)
        if not grad_mode:
            return gx.detach(), jac.detach()
        return gx, jac

    def __call__(
        self, g: Callable[[Tensor], Tensor], x: Tensor, *, event_dims: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g(x), log|det(I + J_g(x))|)``; shapes ``(*batch, *event)`` and ``batch``."""
        gx, jac = self.jacobian(g, x, event_dims=event_dims)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        return gx, torch.linalg.slogdet(eye + jac).logabsdet
