"""Whether inputs are checked for NaN/Inf (the one check that reads tensor values).

Blocks and solvers check that their inputs are finite and raise a clear ``ValueError`` naming
the argument. Reading the answer back is a host synchronisation on an accelerator; once a
pipeline is known to be sound, turn the check off (as with ``torch.distributions``'
``validate_args``)::

    with implicit_transforms.input_validation(False):
        loss = -flow.log_prob(x).mean()

Shape, dtype and context checks are never skipped: they read no tensor values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["input_validation", "set_input_validation", "validating_inputs"]

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
