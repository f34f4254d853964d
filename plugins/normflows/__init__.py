"""The blocks as normflows layers (:mod:`.layers`) and a ready-made flow (:mod:`.recipes`).

Needs the ``normflows`` extra. See :mod:`implicit_transforms.plugins.normflows.layers` for the
direction convention (the block's explicit map is normflows' ``inverse``).
"""

from implicit_transforms.plugins.normflows.layers import (
    BlockFlow,
    ConditionalImpFlow,
    ConditionalIResNet,
    ConditionalMonotone,
    ConditionalResFlow,
    ImpFlow,
    IResNet,
    Monotone,
    ResFlow,
)
from implicit_transforms.plugins.normflows.recipes import implicit_flow

__all__ = [
    "BlockFlow",
    "ConditionalIResNet",
    "ConditionalImpFlow",
    "ConditionalMonotone",
    "ConditionalResFlow",
    "IResNet",
    "ImpFlow",
    "Monotone",
    "ResFlow",
    "implicit_flow",
]
