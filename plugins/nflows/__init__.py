"""The blocks in nflows: ``implicit_transforms.plugins.nflows``.

* :mod:`~implicit_transforms.plugins.nflows.transforms`: the adapter, any block as an nflows
  ``Transform`` (:class:`BlockTransform`) and one transform per family;
* :mod:`~implicit_transforms.plugins.nflows.deferred`: the log-det an ``inverse`` returns,
  computed at its first use (``Flow.sample`` discards it and never pays for it);
* :mod:`~implicit_transforms.plugins.nflows.images`: multiscale image flows built from them
  (:func:`image_flow`).

Needs the ``nflows`` extra: ``pip install 'implicit-transforms[nflows]'``.

"""

from implicit_transforms.plugins.nflows.images import (
    CheckedActNorm,
    FlattenTransform,
    LevelBuilder,
    LogitTransform,
    image_flow,
    initialize_actnorm,
    level_shapes,
)
from implicit_transforms.plugins.nflows.transforms import (
    BlockTransform,
    ImpFlowTransform,
    IResNetTransform,
    MonotoneTransform,
    ResFlowTransform,
)

__all__ = [
    "BlockTransform",
    "CheckedActNorm",
    "FlattenTransform",
    "IResNetTransform",
    "ImpFlowTransform",
    "LevelBuilder",
    "LogitTransform",
    "MonotoneTransform",
    "ResFlowTransform",
    "image_flow",
    "initialize_actnorm",
    "level_shapes",
]
