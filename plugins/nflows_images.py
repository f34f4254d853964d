"""Compatibility module: the image flows now live in
:mod:`implicit_transforms.plugins.nflows.images` (and are re-exported by
:mod:`implicit_transforms.plugins.nflows`); this module only re-exports them so that existing
imports keep working."""

from implicit_transforms.plugins.nflows.images import (
    CheckedActNorm,
    FlattenTransform,
    LevelBuilder,
    LogitTransform,
    image_flow,
    initialize_actnorm,
    level_shapes,
)

__all__ = [
    "CheckedActNorm",
    "FlattenTransform",
    "LevelBuilder",
    "LogitTransform",
    "image_flow",
    "initialize_actnorm",
    "level_shapes",
]
