r"""A log-determinant that is computed when it is first used, or never.

nflows' ``Flow.sample`` calls every layer's ``inverse``, which must return ``(outputs,
logabsdet)``, and throws the summed log-det away; ``Flow.sample_and_log_prob`` makes the very
same calls and keeps it. A transform cannot tell the two apart, so
:class:`~implicit_transforms.plugins.nflows.BlockTransform` returns a :class:`DeferredLogDet`:
a tensor of the right shape, dtype and device whose values are computed by the block (from the
known pair ``(x, y)``, never by another solve) at its first use in any torch operation. What
nflows' ``CompositeTransform`` does with it, ``total_logabsdet += logabsdet``, stays deferred;
anything else (``log_prob - logabsdet``, ``.sum()``, printing, ``.backward()``) computes it.

The computation runs in the grad mode the log-det was created in. It refuses (``RuntimeError``)
when what it depends on changed in between: an in-place change of the inputs, the outputs or a
parameter (their version counters), or a switch between training and evaluation mode.

Example:
    >>> import torch
    >>> calls = []
    >>> ld = DeferredLogDet(lambda: calls.append(1) or torch.ones(3), torch.zeros(3))
    >>> total = torch.zeros(3)
    >>> total += ld  # nflows' CompositeTransform: still nothing computed
    >>> len(calls), tuple(total.shape)
    (0, (3,))
    >>> (total * 2).tolist(), len(calls)
    ([2.0, 2.0, 2.0], 1)
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

__all__ = ["DeferredLogDet"]

# Answered from the placeholder: what a shape check needs, without computing anything.
_METADATA = (
    Tensor.shape.__get__,  # type: ignore[attr-defined]
    Tensor.dtype.__get__,  # type: ignore[attr-defined]
    Tensor.device.__get__,
    Tensor.ndim.__get__,  # type: ignore[attr-defined]
    Tensor.size,
    Tensor.dim,
    Tensor.numel,
)


class DeferredLogDet(Tensor):
    """A tensor whose values are ``compute()``, computed at its first use in a torch operation.

    Until then it holds NaN (whatever bypassed torch's dispatch would see NaN, never a number
    that looks right). ``a += deferred`` (nflows' ``CompositeTransform``) and ``deferred += a``
    stay deferred; every other operation computes the value once and runs on it.

    Args:
        compute: returns the log-det, of the placeholder's shape, dtype and device.
        placeholder: a tensor of the log-det's shape, dtype and device.
        depends_on: tensors whose in-place change makes ``compute`` wrong (checked by version
            counter when it runs).
        module: a module whose parameters and training mode ``compute`` reads (checked too).
    """

    _compute: Callable[[], Tensor] | None
    _value: Tensor | None
    _grad_mode: bool
    _versions: list[tuple[Tensor, int]]
    _module: nn.Module | None
    _training: bool

    @staticmethod
    def __new__(
        cls,
        compute: Callable[[], Tensor],
        placeholder: Tensor,
        depends_on: Iterable[Tensor] = (),
        module: nn.Module | None = None,
    ) -> DeferredLogDet:
        with torch.no_grad():
            nan = torch.full_like(placeholder, float("nan"))
        self = Tensor._make_subclass(cls, nan, False)
        self._compute = compute
        self._value = None
        self._grad_mode = torch.is_grad_enabled()
        watched = [*depends_on, *(module.parameters() if module is not None else ())]
        self._versions = [(t, t._version) for t in watched]
        self._module = module
        self._training = module.training if module is not None else False
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    @property
    def computed(self) -> bool:
        """Whether the value has been computed."""
        return self._value is not None

    def value(self) -> Tensor:
        """The log-det as a plain tensor (computed now if it was not yet)."""
        if self._value is None:
            self._check_unchanged()
            compute = self._compute
            if compute is None:  # pragma: no cover - _compute is cleared only after _value is set
                raise RuntimeError("DeferredLogDet lost its computation")
            with torch.set_grad_enabled(self._grad_mode):
                self._value = compute()
            # free what the computation held on to (the solve's outputs, the context)
            self._compute = None
            self._versions = []
            self._module = None
        return self._value

    def _check_unchanged(self) -> None:
        changed = any(t._version != v for t, v in self._versions)
        module = self._module
        if module is not None and module.training != self._training:
            changed = True
        if changed:
            raise RuntimeError(
                "a block's log-det was deferred (nflows' Flow.sample discards it; "
                "sample_and_log_prob uses it) and is needed now, but the block's inputs, "
                "outputs, parameters or training mode changed in between: use the log-det "
                "before changing them, or call the block's inverse_and_logdet directly"
            )

    def _add_deferred(self, other: Any) -> DeferredLogDet:
        """``self += other`` without computing anything: the computation grows a term."""
        compute = self._compute
        if compute is None:  # pragma: no cover - only called while not computed
            raise RuntimeError("DeferredLogDet lost its computation")
        # a plain term is copied: its owner may change it in place before we compute
        term = other if isinstance(other, DeferredLogDet) else other.clone()

        def grown() -> Tensor:
            return compute() + _plain(term)

        self._compute = grown
        return self

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func is Tensor.add_ and len(args) == 2 and not kwargs:
            target, other = args
            if isinstance(other, Tensor) and _same_layout(target, other):
                if isinstance(target, DeferredLogDet) and not target.computed:
                    return target._add_deferred(other)
                if (
                    isinstance(other, DeferredLogDet)
                    and not isinstance(target, DeferredLogDet)
                    and not other.computed
                    and _caller_rebinds(sys._getframe(1))
                ):
                    # ``total += deferred``: Python binds ``total`` to what we return, so
                    # return the deferred sum (``total``'s current value is one of its terms).
                    start = target.clone()
                    return DeferredLogDet(lambda: start + other.value(), start)
        return func(*tree_map(_plain, args), **tree_map(_plain, kwargs))


def _plain(obj: Any) -> Any:
    return obj.value() if isinstance(obj, DeferredLogDet) else obj


def _same_layout(a: Tensor, b: Tensor) -> bool:
    with torch._C.DisableTorchFunctionSubclass():
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


# the argument of BINARY_OP that means ``+=`` (Python 3.11+)
_INPLACE_ADD = next(
    (i for i, (name, _) in enumerate(getattr(dis, "_nb_ops", ())) if name == "NB_INPLACE_ADD"),
    None,
)


def _caller_rebinds(frame: FrameType | None) -> bool:
    """Whether the Python code that triggered ``add_`` is ``a += b`` (which rebinds ``a`` to the
    result) rather than a call of ``a.add_(b)`` (whose caller expects ``a`` itself to change)."""
    if frame is None:
        return False
    code, i = frame.f_code.co_code, frame.f_lasti
    if i < 0 or i + 1 >= len(code):
        return False
    op, arg = code[i], code[i + 1]
    if "INPLACE_ADD" in dis.opmap:  # Python 3.10
        return op == dis.opmap["INPLACE_ADD"]
    return op == dis.opmap.get("BINARY_OP") and arg == _INPLACE_ADD
