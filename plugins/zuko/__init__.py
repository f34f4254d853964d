"""The blocks as zuko lazy transforms (:mod:`.transforms`) and a ready-made flow
(:mod:`.recipes`).

Needs the ``zuko`` extra. See :mod:`implicit_transforms.plugins.zuko.transforms` for the
direction convention (the block's explicit map is the transform's ``_call``, data to base).
"""

from implicit_transforms.plugins.zuko.recipes import implicit_flow
from implicit_transforms.plugins.zuko.transforms import (
    BlockLazyTransform,
    BlockTransform,
    ImpFlow,
    IResNet,
    Monotone,
    ResFlow,
)

__all__ = [
    "BlockLazyTransform",
    "BlockTransform",
    "IResNet",
    "ImpFlow",
    "Monotone",
    "ResFlow",
    "implicit_flow",
]
