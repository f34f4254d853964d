"""Ready configurations named after their papers, built from an event shape and
:class:`~implicit_transforms.blocks.BlockOptions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch  # noqa: F401  (doctests)
from typing_extensions import Unpack

from implicit_transforms.blocks.base import InvertibleBlock
from implicit_transforms.blocks.impflow import ImplicitBlock
from implicit_transforms.blocks.monotone import MonotoneBlock
from implicit_transforms.blocks.options import BlockOptions, BlockSettings
from implicit_transforms.blocks.residual import ResidualBlock
from implicit_transforms.recipes.families import FACTORY_HIDDEN
from implicit_transforms.recipes.spec import BlockSpec, lipschitz_net

__all__ = [
    "build_block",
    "impflow_block",
    "iresnet_block",
    "lipschitz_net",
    "monotone_block",
    "resflow_block",
]


def build_block(
    family: str,
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Unpack[BlockSettings],
) -> InvertibleBlock:
    """A block of ``family`` (``"iresnet"``, ``"resflow"``, ``"impflow"`` or ``"monotone"``):
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
        A :class:`ResidualBlock` (iresnet, resflow), an :class:`ImplicitBlock` (impflow) or a
        :class:`MonotoneBlock` (monotone).

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


def iresnet_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Unpack[BlockSettings],
) -> ResidualBlock:
    """i-ResNet block: ELU network (c = 0.9), truncated power series (5 terms, Hutchinson),
    fixed-point inverse.

    Training-mode log-det: exact (``ExactLogDet``) for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements, up to
    which it costs no more than the estimator. Larger events get a truncated (biased) power-series estimate, which changes from
    call to call: for the exact value pass ``logdet_train=ExactLogDet()``, or call ``.eval()``
    (exact up to :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` elements
    unless ``logdet_eval`` is given). Giving ``logdet_train`` or a setting of the estimator
    (``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``) keeps that estimator.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP; an int is one hidden layer) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (:class:`~implicit_transforms.blocks.options.BlockSettings`): ``coeff``,
            ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``, ``logdet_train``,
            ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``,
            ``compile``, ``zero_init``, ``network``. Unknown names raise ``TypeError``.

    Returns:
        The block (its defaults: the ``"iresnet"`` entry of
        :data:`~implicit_transforms.recipes.families.FAMILIES`).

    Example:
        >>> type(iresnet_block(3, [8]).solver).__name__
        'FixedPoint'
    """
    block = build_block(
        "iresnet",
        event_shape,
        hidden,
        context_features=context_features,
        options=options,
        **changes,
    )
    return cast(ResidualBlock, block)  # the table entry decides the class


def resflow_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Unpack[BlockSettings],
) -> ResidualBlock:
    """Residual Flow block: sine network (c = 0.97; the paper's LipSwish with
    ``activation='lipswish'``), unbiased roulette log-det with Neumann gradient, fixed-point
    inverse.

    Training-mode log-det: exact (``ExactLogDet``) for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements, up to
    which it costs no more than the estimator. Larger events get an unbiased Russian-roulette estimate, which changes from
    call to call: for the exact value pass ``logdet_train=ExactLogDet()``, or call ``.eval()``
    (exact up to :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` elements
    unless ``logdet_eval`` is given). Giving ``logdet_train`` or a setting of the estimator
    (``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``) keeps that estimator.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP; an int is one hidden layer) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (:class:`~implicit_transforms.blocks.options.BlockSettings`): ``coeff``,
            ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``, ``logdet_train``,
            ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``,
            ``compile``, ``zero_init``, ``network``. Unknown names raise ``TypeError``.

    Returns:
        The block (its defaults: the ``"resflow"`` entry of
        :data:`~implicit_transforms.recipes.families.FAMILIES`).

    Example:
        >>> resflow_block(2, [8])(torch.zeros(4, 2))[0].shape
        torch.Size([4, 2])
    """
    block = build_block(
        "resflow",
        event_shape,
        hidden,
        context_features=context_features,
        options=options,
        **changes,
    )
    return cast(ResidualBlock, block)  # the table entry decides the class


def impflow_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Unpack[BlockSettings],
) -> ImplicitBlock:
    """ImpFlow block: two sine networks (c = 0.97; LipSwish with ``activation='lipswish'``),
    Broyden in both directions, roulette log-det.

    Training-mode log-det: exact (``ExactLogDet``) for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements, up to
    which it costs no more than the estimator. Larger events get an unbiased Russian-roulette estimate, which changes from
    call to call: for the exact value pass ``logdet_train=ExactLogDet()``, or call ``.eval()``
    (exact up to :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` elements
    unless ``logdet_eval`` is given). Giving ``logdet_train`` or a setting of the estimator
    (``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``) keeps that estimator.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP; an int is one hidden layer) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (:class:`~implicit_transforms.blocks.options.BlockSettings`): ``coeff``,
            ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``, ``logdet_train``,
            ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``,
            ``compile``, ``zero_init``, ``network``. Unknown names raise ``TypeError``.

    Returns:
        The block (its defaults: the ``"impflow"`` entry of
        :data:`~implicit_transforms.recipes.families.FAMILIES`).

    Example:
        >>> len(impflow_block(2, [8]).networks())
        2
    """
    block = build_block(
        "impflow",
        event_shape,
        hidden,
        context_features=context_features,
        options=options,
        **changes,
    )
    return cast(ImplicitBlock, block)  # the table entry decides the class


def monotone_block(
    event_shape: int | Sequence[int],
    hidden: int | Sequence[int] = FACTORY_HIDDEN,
    *,
    context_features: int | None = None,
    options: BlockOptions | None = None,
    **changes: Unpack[BlockSettings],
) -> MonotoneBlock:
    """Monotone Flows block: the Cayley operator of ``Id + g`` with one sine network
    (c = 0.97), Broyden in both directions, roulette log-det on both terms
    (:class:`~implicit_transforms.blocks.MonotoneBlock`).

    Training-mode log-det: exact (``ExactLogDet``) for events of at most
    :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_TRAIN_MAX_DIM` elements, up to
    which it costs no more than the estimator. Larger events get an unbiased Russian-roulette
    estimate of each of ``log det(I - J_g)`` and ``log det(I + J_g)``, which changes from
    call to call: for the exact value pass ``logdet_train=ExactLogDet()``, or call ``.eval()``
    (exact up to :data:`~implicit_transforms.recipes.families.EXACT_LOGDET_MAX_DIM` elements
    unless ``logdet_eval`` is given). Giving ``logdet_train`` or a setting of the estimator
    (``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``) keeps that estimator.

    Args:
        event_shape: ``D`` for vectors ``(*, D)`` or ``(C, H, W)`` for images.
        hidden: hidden sizes (MLP; an int is one hidden layer) or hidden channels (CNN).
        context_features: size of a context that enters as an additive bias, if any.
        options: a :class:`~implicit_transforms.blocks.BlockOptions`.
        **changes: :class:`~implicit_transforms.blocks.BlockOptions` fields to change
            (:class:`~implicit_transforms.blocks.options.BlockSettings`): ``coeff``,
            ``activation``, ``solver``, ``adjoint_solver``, ``on_failure``, ``logdet_train``,
            ``logdet_eval``, ``n_probes``, ``n_exact_terms``, ``n_terms``, ``generator``,
            ``compile``, ``zero_init``, ``network``. Unknown names raise ``TypeError``.

    Returns:
        The block (its defaults: the ``"monotone"`` entry of
        :data:`~implicit_transforms.recipes.families.FAMILIES`).

    Example:
        >>> block = monotone_block(2, [8])
        >>> len(block.networks()), type(block.solver).__name__
        (1, 'Broyden')
    """
    block = build_block(
        "monotone",
        event_shape,
        hidden,
        context_features=context_features,
        options=options,
        **changes,
    )
    return cast(MonotoneBlock, block)  # the table entry decides the class
