"""Ready configurations named after their papers, built from an event shape and
:class:`~implicit_transforms.blocks.BlockOptions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from implicit_transforms.blocks.base import InvertibleBlock
from implicit_transforms.blocks.implicit import ImplicitBlock
from implicit_transforms.blocks.options import BlockOptions, training_logdet_doc
from implicit_transforms.blocks.residual import ResidualBlock
from implicit_transforms.recipes.families import FACTORY_HIDDEN
from implicit_transforms.recipes.spec import BlockSpec, lipschitz_net

__all__ = [
    "BlockFactory",
    "build_block",
    "impflow_block",
    "iresnet_block",
    "lipschitz_net",
    "resflow_block",
]


def build_block(
    family: str,
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Any,
) -> InvertibleBlock:
    """A block of ``family`` (``"iresnet"``, ``"resflow"`` or ``"impflow"``):
    ``BlockSpec.from_options(...).build()`` (:class:`~implicit_transforms.recipes.spec.BlockSpec`).

    Args:
        family: which table entry (:data:`~implicit_transforms.recipes.families.FAMILIES`) fills the
            unset options.
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`BlockOptions` (default: all family defaults).
        **changes: fields of :class:`BlockOptions` to change (``coeff=0.9``,
            ``solver=Broyden(...)``, ``on_failure="warn"``, ...); unknown names raise.

    Returns:
        A :class:`ResidualBlock` (iresnet, resflow) or an :class:`ImplicitBlock` (impflow).

    Raises:
        TypeError, ValueError: a bad ``event_shape`` (an int or ``(D,)`` / ``(C, H, W)``),
            ``hidden`` (a positive int or a sequence of them), ``context_features`` or option,
            naming the argument.

    Example:
        >>> type(build_block("impflow", 2, [8])).__name__
        'ImplicitBlock'
    """
    spec = BlockSpec.from_options(
        family, event_shape, hidden, context_features=context_features, options=options, **changes
    )
    return spec.build()


_B_co = TypeVar("_B_co", bound=InvertibleBlock, covariant=True)


class BlockFactory(Protocol[_B_co]):
    """The signature of :func:`iresnet_block`, :func:`resflow_block` and :func:`impflow_block`."""

    def __call__(
        self,
        event_shape: int | Sequence[int],
        hidden: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        context_features: int | None = None,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> _B_co:
        """Build the block."""
        ...


_ARGS_DOC = """

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP; an int is one hidden layer) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change:
            ``coeff``, ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``,
            ``logdet_train``, ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``,
            ``generator``, ``compile``. Unknown names raise ``TypeError``.
"""


def _factory(family: str, summary: str) -> BlockFactory[Any]:
    def factory(
        event_shape: int | Sequence[int],
        hidden: int | Sequence[int] = FACTORY_HIDDEN,
        *,
        context_features: int | None = None,
        options: BlockOptions | None = None,
        **changes: Any,
    ) -> InvertibleBlock:
        return build_block(
            family,
            event_shape,
            hidden,
            context_features=context_features,
            options=options,
            **changes,
        )

    factory.__name__ = factory.__qualname__ = f"{family}_block"
    factory.__doc__ = summary + training_logdet_doc(family) + _ARGS_DOC
    return factory


iresnet_block: BlockFactory[ResidualBlock] = _factory(
    "iresnet",
    "i-ResNet block: ELU network (c = 0.9), truncated power series (5 terms, Hutchinson),\n"
    "    fixed-point inverse.",
)
resflow_block: BlockFactory[ResidualBlock] = _factory(
    "resflow",
    "Residual Flow block: sine network (c = 0.97; the paper's LipSwish with\n"
    "    ``activation='lipswish'``), unbiased roulette log-det with Neumann gradient, fixed-point\n"
    "    inverse.",
)
impflow_block: BlockFactory[ImplicitBlock] = _factory(
    "impflow",
    "ImpFlow block: two sine networks (c = 0.97; LipSwish with ``activation='lipswish'``),\n"
    "    Broyden in both directions, roulette log-det.",
)
