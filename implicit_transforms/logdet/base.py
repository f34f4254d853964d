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
    r"""Computes ``g(x)`` and ``log det(I + dg/dx)`` per sample for ``Lip(g) < 1``.

    ``estimator(g, x, event_dims=k) -> (gx, logdet)`` with ``x, gx: (*batch, *event)`` and
    ``logdet: batch``. The estimator evaluates ``g`` itself because it needs the autograd graph
    of ``g`` at ``x``; both outputs are differentiable when grad mode is on. Since
    ``Lip(g) < 1`` the determinant is positive, so ``log|det| = log det = tr log(I + J_g)``:

    .. math:: \log\det(I + J_g(x)) = \operatorname{tr}\log(I + J_g(x))
        = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k} \operatorname{tr}\big(J_g(x)^k\big).

    :class:`ExactLogDet`, :class:`PowerSeriesLogDet` and :class:`RouletteLogDet` implement it.

    Example:
        >>> from implicit_transforms.logdet import ExactLogDet, RouletteLogDet
        >>> isinstance(ExactLogDet(), LogDetEstimator), isinstance(RouletteLogDet(), LogDetEstimator)
        (True, True)
    """

    def __call__(
        self, g: Callable[[Tensor], Tensor], x: Tensor, *, event_dims: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g(x), log det(I + J_g(x)))``.

        Args:
            g: the residual network, ``(*batch, *event) -> (*batch, *event)``.
            x: input, shape ``(*batch, *event)``.
            event_dims: number of trailing dimensions forming one sample.

        Returns:
            ``g(x)`` of shape ``(*batch, *event)`` and the log-det of shape ``batch``.
        """
        ...


def evaluate_with_input_grad(g: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Evaluate ``g`` on an input that requires grad (needed for Jacobian products).

    Must be called with grad mode enabled.

    Args:
        g: the residual network, ``(*batch, *event) -> (*batch, *event)``.
        x: input, shape ``(*batch, *event)``.

    Returns:
        ``(x_in, gx)`` where ``x_in`` is ``x`` itself if it already requires grad (so
        gradients keep flowing upstream) and a detached leaf copy otherwise, and
        ``gx = g(x_in)``.

    Raises:
        ValueError: if ``g`` does not map the shape of ``x`` to itself.

    Example:
        >>> import torch
        >>> x_in, gx = evaluate_with_input_grad(torch.tanh, torch.zeros(2, 3))
        >>> x_in.requires_grad, gx.shape
        (True, torch.Size([2, 3]))
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
    """``v^T dg/dx`` through the recorded graph of ``gx = g(x)`` (the graph is retained).

    Args:
        gx: ``g(x)``, shape ``(*batch, *event)``, with its autograd graph.
        x: the input that graph starts from.
        v: cotangent, same shape as ``gx``.
        create_graph: whether the product itself is differentiable.

    Returns:
        ``v^T J_g(x)`` per sample, shape of ``x``.

    Example:
        >>> import torch
        >>> x = torch.ones(1, 2, requires_grad=True)
        >>> vjp(3.0 * x, x, torch.ones(1, 2), create_graph=False).tolist()
        [[3.0, 3.0]]
    """
    (out,) = torch.autograd.grad(gx, x, v, retain_graph=True, create_graph=create_graph)
    return out


def flat_dim(x: Tensor, event_dims: int) -> int:
    """Number of elements of one event, ``prod(x.shape[-event_dims:])``.

    Args:
        x: a tensor of shape ``(*batch, *event)``.
        event_dims: ``len(event)``, in ``[1, x.dim()]``.

    Returns:
        ``N = prod(event)``.

    Example:
        >>> import torch
        >>> flat_dim(torch.zeros(8, 3, 4, 4), 3)
        48
    """
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
    its own, where autograd would otherwise return a silently wrong second derivative.

    Args:
        t: the tensor whose first-order gradient is correct.
        message: the error's message (say what to use instead).

    Returns:
        A copy of ``t`` whose first derivative passes through unchanged.

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> (g,) = torch.autograd.grad(first_order_only(x * x, "first order only").sum(), x)
        >>> g.tolist()
        [2.0, 2.0]
    """
    return _FirstOrderOnly.apply(t, message)
