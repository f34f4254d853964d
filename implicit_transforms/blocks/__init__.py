"""Invertible flow blocks: residual (i-ResNet, Residual Flow), implicit (ImpFlow) and monotone
(Monotone Flows)."""

from implicit_transforms.blocks.base import (
    EXACT_LOGDET_MAX_DIM,
    EXACT_LOGDET_TRAIN_MAX_DIM,
    InverseBlock,
    InvertibleBlock,
)
from implicit_transforms.blocks.factories import (
    build_block,
    impflow_block,
    iresnet_block,
    lipschitz_net,
    monotone_block,
    resflow_block,
)
from implicit_transforms.blocks.impflow import ImplicitBlock
from implicit_transforms.blocks.monotone import MonotoneBlock
from implicit_transforms.blocks.options import (
    FAMILIES,
    BlockOptions,
    BlockSettings,
    Family,
    adjoint_for,
    make_options,
)
from implicit_transforms.blocks.residual import ResidualBlock

__all__ = [
    "EXACT_LOGDET_MAX_DIM",
    "EXACT_LOGDET_TRAIN_MAX_DIM",
    "FAMILIES",
    "BlockOptions",
    "BlockSettings",
    "Family",
    "ImplicitBlock",
    "InverseBlock",
    "InvertibleBlock",
    "MonotoneBlock",
    "ResidualBlock",
    "adjoint_for",
    "build_block",
    "impflow_block",
    "iresnet_block",
    "lipschitz_net",
    "make_options",
    "monotone_block",
    "resflow_block",
]
