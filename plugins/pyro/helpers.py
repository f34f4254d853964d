"""Pyro transforms of each family built from sizes: ``resflow(D)``, ``iresnet(D)``,
``impflow(D)``, ``monotone(D)`` and their conditional versions, with the guide defaults (LipSwish).

Pyro-style names: classes (``ResFlow``, ...) wrap a block, lowercase helpers build one.

Example:
    >>> import torch, pyro.distributions as dist
    >>> t = resflow(2, [16])
    >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    >>> q.log_prob(q.rsample((5,))).shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from implicit_transforms.plugins.pyro.transforms import (
    BlockTransformModule,
    ConditionalBlockTransformModule,
)

from implicit_transforms.blocks import FAMILIES, BlockOptions, build_block
from implicit_transforms.blocks.options import training_logdet_doc
from implicit_transforms.recipes.families import GUIDE_ACTIVATION, helper_hidden
from implicit_transforms.validation import check_hidden, check_positive_int

__all__ = [
    "GUIDE_ACTIVATION",
    "ConditionalHelperFactory",
    "ConditionalIResNet",
    "ConditionalImpFlow",
    "ConditionalMonotone",
    "ConditionalResFlow",
    "HelperFactory",
    "IResNet",
    "ImpFlow",
    "Monotone",
    "ResFlow",
    "conditional_impflow",
    "conditional_iresnet",
    "conditional_monotone",
    "conditional_resflow",
    "impflow",
    "iresnet",
    "monotone",
    "resflow",
]


class ResFlow(BlockTransformModule):
    """Residual Flow block as a Pyro transform (build with :func:`resflow`)."""


class IResNet(BlockTransformModule):
    """i-ResNet block as a Pyro transform (build with :func:`iresnet`)."""


class ImpFlow(BlockTransformModule):
    """ImpFlow block as a Pyro transform (build with :func:`impflow`)."""


class Monotone(BlockTransformModule):
    """Monotone Flows block as a Pyro transform (build with :func:`monotone`)."""


class ConditionalResFlow(ConditionalBlockTransformModule):
    """Conditional Residual Flow (build with :func:`conditional_resflow`)."""

    _unconditioned = ResFlow


class ConditionalIResNet(ConditionalBlockTransformModule):
    """Conditional i-ResNet (build with :func:`conditional_iresnet`)."""

    _unconditioned = IResNet


class ConditionalImpFlow(ConditionalBlockTransformModule):
    """Conditional ImpFlow (build with :func:`conditional_impflow`)."""

    _unconditioned = ImpFlow


class ConditionalMonotone(ConditionalBlockTransformModule):
    """Conditional Monotone Flows block (build with :func:`conditional_monotone`)."""

    _unconditioned = Monotone


def _hidden(hidden_dims: int | Sequence[int] | None, input_dim: int) -> list[int]:
    check_positive_int(input_dim, "input_dim")
    if hidden_dims is None:
        return helper_hidden(input_dim)
    return check_hidden(hidden_dims, "hidden_dims")


def _guide_changes(
    family: str, options: BlockOptions | None, changes: dict[str, Any]
) -> dict[str, Any]:
    if FAMILIES[family].activation != "sin":  # i-ResNet keeps its paper's ELU
        return changes
    if "activation" not in changes and (options is None or options.activation is None):
        changes = {**changes, "activation": GUIDE_ACTIVATION}
    return changes


_T_co = TypeVar("_T_co", covariant=True)


class HelperFactory(Protocol[_T_co]):
    """The signature of :func:`resflow`, :func:`iresnet`, :func:`impflow` and :func:`monotone`."""

    def __call__(
        self,
        input_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> _T_co:
        """Build the transform."""
        ...


class ConditionalHelperFactory(Protocol[_T_co]):
    """The signature of the ``conditional_*`` helpers."""

    def __call__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> _T_co:
        """Build the conditional transform."""
        ...


_HELPER_ARGS = """

    Args:
        input_dim: ``D`` (events ``(*, D)``).
        hidden_dims: hidden sizes, an int for one hidden layer (default two layers of
            ``max(16, 8 D)``).
        options: a :class:`~implicit_transforms.blocks.BlockOptions`. ResFlow and ImpFlow
            default to LipSwish here
            (:data:`~implicit_transforms.recipes.families.GUIDE_ACTIVATION`), not the library's sine.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``, ``network``): the same settings as the factories and
            the nflows transforms.
    """


def _helper(family: str, cls: type[BlockTransformModule], summary: str) -> HelperFactory[Any]:
    def helper(
        input_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> BlockTransformModule:
        hidden = _hidden(hidden_dims, input_dim)
        changes = _guide_changes(family, options, changes)
        return cls(build_block(family, input_dim, hidden, options=options, **changes))

    helper.__name__ = helper.__qualname__ = family
    helper.__doc__ = summary + training_logdet_doc(family) + _HELPER_ARGS
    return helper


def _conditional_helper(
    family: str, cls: type[ConditionalBlockTransformModule], summary: str
) -> ConditionalHelperFactory[Any]:
    def helper(
        input_dim: int,
        context_dim: int,
        hidden_dims: int | Sequence[int] | None = None,
        *,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> ConditionalBlockTransformModule:
        hidden = _hidden(hidden_dims, input_dim)
        check_positive_int(context_dim, "context_dim")
        changes = _guide_changes(family, options, changes)
        block = build_block(
            family, input_dim, hidden, context_features=context_dim, options=options, **changes
        )
        return cls(block)

    helper.__name__ = helper.__qualname__ = f"conditional_{family}"
    helper.__doc__ = (
        summary
        + training_logdet_doc(family)
        + _HELPER_ARGS.replace(
            "        hidden_dims:",
            "        context_dim: size of the context ``(*, C)``.\n        hidden_dims:",
        )
    )
    return helper


resflow: HelperFactory[ResFlow] = _helper(
    "resflow", ResFlow, "Residual Flow transform on ``(*, input_dim)``."
)
iresnet: HelperFactory[IResNet] = _helper(
    "iresnet", IResNet, "i-ResNet transform on ``(*, input_dim)``."
)
impflow: HelperFactory[ImpFlow] = _helper(
    "impflow", ImpFlow, "ImpFlow transform on ``(*, input_dim)``."
)
monotone: HelperFactory[Monotone] = _helper(
    "monotone", Monotone, "Monotone Flows (Cayley) transform on ``(*, input_dim)``."
)
conditional_resflow: ConditionalHelperFactory[ConditionalResFlow] = _conditional_helper(
    "resflow", ConditionalResFlow, "Conditional Residual Flow transform."
)
conditional_iresnet: ConditionalHelperFactory[ConditionalIResNet] = _conditional_helper(
    "iresnet", ConditionalIResNet, "Conditional i-ResNet transform."
)
conditional_impflow: ConditionalHelperFactory[ConditionalImpFlow] = _conditional_helper(
    "impflow", ConditionalImpFlow, "Conditional ImpFlow transform."
)
conditional_monotone: ConditionalHelperFactory[ConditionalMonotone] = _conditional_helper(
    "monotone", ConditionalMonotone, "Conditional Monotone Flows (Cayley) transform."
)
