"""Validation: of constructor arguments (shared checks with one wording), and the switch for
the NaN/Inf checks of inputs (the one check that reads tensor values).

Arguments. Every entry point (the factories, the nflows transforms, the Pyro helpers and
recipes, :class:`~implicit_transforms.blocks.BlockOptions`) checks its sizes, shapes,
coefficients and components with the functions here, so a mistake gets the same
``TypeError``/``ValueError`` naming the argument, with what was expected and what was given,
wherever it is made.

Inputs.
Blocks and solvers check that their inputs are finite and raise a clear ``ValueError`` naming
the argument. Reading the answer back is a host synchronisation on an accelerator; once a
pipeline is known to be sound, turn the check off (as with ``torch.distributions``'
``validate_args``)::

    with implicit_transforms.input_validation(False):
        loss = -flow.log_prob(x).mean()

Shape, dtype and context checks are never skipped: they read no tensor values.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

__all__ = [
    "check_event_shape",
    "check_hidden",
    "check_instance",
    "check_positive_int",
    "input_validation",
    "real_scalar",
    "set_input_validation",
    "validating_inputs",
]


def _describe(value: Any) -> str:
    """``repr`` for short values, the type's name otherwise (a module, a long list)."""
    text = repr(value)
    name = type(value).__name__
    return f"{text} ({name})" if len(text) <= 40 else f"a {name}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int >= 1`` (numpy integers accepted; bools refused).

    Args:
        value: the value to check.
        name: the argument's name, for the error message.

    Returns:
        ``int(value)``.

    Example:
        >>> check_positive_int(3, "features")
        3
        >>> check_positive_int(2.0, "features")
        Traceback (most recent call last):
        ...
        TypeError: features must be a positive int, got 2.0 (float)
    """
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_event_shape(value: Any, name: str) -> tuple[int, ...]:
    """An event shape: an int ``D`` (vectors ``(*, D)``) or a sequence ``(D,)`` or
    ``(C, H, W)`` of positive ints, returned as a tuple.

    Args:
        value: ``D``, ``(D,)`` or ``(C, H, W)``.
        name: the argument's name, for the error message.

    Returns:
        the shape as a tuple of ints.

    Example:
        >>> check_event_shape(2, "event_shape"), check_event_shape([1, 4, 4], "event_shape")
        ((2,), (1, 4, 4))
    """
    expected = f"{name} must be an int D or a shape (D,) or (C, H, W) of positive ints"
    if _is_int(value):
        return (check_positive_int(value, name),)
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, torch.Size)):
        raise TypeError(f"{expected}, got {_describe(value)}")
    shape = tuple(value)
    if len(shape) not in (1, 3) or not all(_is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{expected}, got {shape!r}")
    return tuple(int(s) for s in shape)


def check_hidden(value: Any, name: str) -> list[int]:
    """Hidden sizes: a sequence of positive ints, or one int for a single hidden layer
    (``16`` is ``[16]``, as nflows' own ``hidden_features``). For convolutional networks the
    first entry is the number of hidden channels.

    Args:
        value: an int or a sequence of positive ints.
        name: the argument's name, for the error message.

    Returns:
        the hidden sizes as a list.

    Example:
        >>> check_hidden(16, "hidden_dims"), check_hidden((32, 32), "hidden_dims")
        ([16], [32, 32])
    """
    expected = f"{name} must be a positive int or a sequence of positive ints"
    if _is_int(value):
        return [check_positive_int(value, name)]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{expected}, got {_describe(value)}")
    sizes = list(value)
    for h in sizes:
        if not _is_int(h):
            raise TypeError(f"{expected}, got an entry {_describe(h)}")
        if h < 1:
            raise ValueError(f"{expected}, got an entry {h!r}")
    return [int(h) for h in sizes]


def real_scalar(value: Any, name: str, expected: str = "a real number") -> float:
    """``value`` as a Python float: any real number (``float``, ``int``, numpy scalars) or a
    0-d real tensor; bools, complex numbers and tensors with more than one element are
    refused.

    Args:
        value: the number.
        name: the argument's name, for the error message.
        expected: what the message says was expected.

    Returns:
        ``float(value)``.

    Example:
        >>> import numpy as np
        >>> real_scalar(np.float32(0.5), "coeff")
        0.5
        >>> real_scalar(True, "coeff")
        Traceback (most recent call last):
        ...
        TypeError: coeff must be a real number, got True (bool)
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.dtype.is_complex and value.dtype != torch.bool:
            return float(value.item())
        got = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        raise TypeError(f"{name} must be {expected}, got {got}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    return float(value)


def check_instance(value: Any, name: str) -> None:
    """Refuse a class where an instance is expected (``solver=Broyden`` for ``Broyden()``):
    classes are callable, so without this check the mistake surfaces at the first call, far
    from where it was made.

    Args:
        value: the value to check (``None`` passes).
        name: the argument's name, for the error message.

    Example:
        >>> from implicit_transforms.solvers import Broyden
        >>> check_instance(Broyden, "solver")
        Traceback (most recent call last):
        ...
        TypeError: solver: pass Broyden() (an instance), got the class Broyden
    """
    if isinstance(value, type):
        raise TypeError(
            f"{name}: pass {value.__name__}() (an instance), got the class {value.__name__}"
        )


_VALIDATE: ContextVar[bool] = ContextVar("implicit_transforms_validate_inputs", default=True)


def validating_inputs() -> bool:
    """Whether NaN/Inf checks of inputs are on (default ``True``).

    Returns:
        The setting of the current context (see :func:`input_validation`).

    Example:
        >>> validating_inputs()
        True
    """
    return _VALIDATE.get()


def set_input_validation(enabled: bool) -> None:
    """Turn the NaN/Inf checks of inputs on or off for the current context.

    The setting is a context variable: it holds for the current thread (or ``asyncio`` task)
    until changed again. Prefer the scoped :func:`input_validation`.

    Args:
        enabled: ``True`` to check inputs for NaN/Inf, ``False`` to skip the check.

    Raises:
        TypeError: if ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _VALIDATE.set(enabled)


@contextmanager
def input_validation(enabled: bool) -> Iterator[None]:
    """Within the scope, NaN/Inf checks of inputs are ``enabled`` (restored afterwards).

    Args:
        enabled: ``True`` to check inputs for NaN/Inf, ``False`` to skip the check (no host
            synchronisation for it on an accelerator).

    Returns:
        A context manager.

    Raises:
        TypeError: if ``enabled`` is not a bool.

    Example:
        >>> with input_validation(False):
        ...     validating_inputs()
        False
        >>> validating_inputs()
        True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    token = _VALIDATE.set(enabled)
    try:
        yield
    finally:
        _VALIDATE.reset(token)
