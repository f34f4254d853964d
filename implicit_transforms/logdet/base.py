"""The log-determinant estimator protocol and the helpers estimators share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from implicit_transforms.errors import HigherOrderGradientError

__all__ = [
    "LogDetEstimator",
    "evaluate_with_input_grad",
    "first_order_only",
    "flat_dim",
    "vjp",
]


@runtime_checkable
class LogDetEstimator(Protocol):
    """Computes ``g(x)`` and ``log det(I + dg/dx)`` per sample for ``Lip(g) < 1``.

    ``estimator(g, x, event_dims=k) -> (gx, logdet)`` with ``x, gx: (*batch, *event)`` and
    ``logdet: batch``. The estimator evaluates ``g`` itself because it needs the autograd graph
    of ``g`` at ``x``; both outputs are differentiable when grad mode is on. Since
    ``Lip(g) < 1`` the determinant is positive, so ``log|det| = log det = tr log(I + J_g)``.
    """

    def __call__(
        self, g: Callable[[Tensor], Tensor], x: Tensor, *, event_dims: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g(x), log det(I + J_g(x)))``."""
        ...


def evaluate_with_input_grad(g: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Evaluate ``g`` on an input that requires grad (needed for Jacobian products).

    Returns ``(x_in, gx)`` where ``x_in`` is ``x`` itself if it already requires grad (so
    gradients keep flowing upstream) and a detached leaf copy otherwise. Must be called with
    grad mode enabled.
    """
    x_in = x if x.requires_grad else x.detach().requires_grad_()
    gx = g(x_in)
    if not isinstance(gx, Tensor) or gx.shape != x.shape:
        got = tuple(gx.shape) if isinstance(gx, Tensor) else type(gx).__name__
        raise ValueError(
            f"the residual network must map shape {tuple(x.shape)} to itself, got {got}"
        )
    return x_in, gx


def vjp(gx: Tensor, x: Tensor, v: Tensor, *, create_graph: bool) -> Tensor:
    """``v^T dg/dx`` through the recorded graph of ``gx = g(x)`` (the graph is retained)."""
    (out,) = torch.autograd.grad(gx, x, v, retain_graph=True, create_graph=create_graph)
    return out


def flat_dim(x: Tensor, event_dims: int) -> int:
    """Number of elements of one event, ``prod(x.shape[-event_dims:])``."""
    if not isinstance(event_dims, int) or not 0 < event_dims <= x.dim():
        raise ValueError(f"event_dims must be an int in [1, x.dim()={x.dim()}], got {event_dims!r}")
    return math.prod(x.shape[x.dim() - event_dims :])


def sum_event(t: Tensor, event_dims: int) -> Tensor:
    """Sum over the trailing ``event_dims`` dimensions."""
    return t.sum(dim=tuple(range(t.dim() - event_dims, t.dim())))


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses to build a graph (``create_graph=True``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, message: str) -> Tensor:
        ctx.message = message  # type: ignore[attr-defined]
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        if torch.is_grad_enabled():
            raise HigherOrderGradientError(ctx.message)  # type: ignore[attr-defined]
        return grad, None


def first_order_only(t: Tensor, message: str) -> Tensor:
    """``t`` unchanged, with a backward that raises
    :class:`~implicit_transforms.errors.HigherOrderGradientError` (``message``) when a second
    derivative is requested: for gradients given by an identity that has no derivative of
    its own, where autograd would otherwise return a silently wrong second derivative."""
    return _FirstOrderOnly.apply(t, message)
