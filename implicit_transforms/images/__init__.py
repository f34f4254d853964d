"""Images as density-modelling data: dequantisation, the logit transform, bits per dimension,
and image data sets (scikit-learn's 8x8 digits; MNIST, Fashion-MNIST and CIFAR-10 read by
torchvision from local files).

The pieces here are host-agnostic pure functions and plain modules; the nflows builder of
multiscale image flows is :func:`implicit_transforms.plugins.nflows.image_flow`.
"""

from implicit_transforms.images.bits import (
    BitsSummary,
    bits_per_dim,
    dequantization_nll,
    summarize_bits,
)
from implicit_transforms.images.data import (
    IMAGE_DATASETS,
    ImageData,
    load_digits,
    load_image_dataset,
    load_torchvision,
)
from implicit_transforms.images.preprocess import (
    VariationalDequantizer,
    dequantize,
    logit_forward,
    logit_inverse,
)

__all__ = [
    "IMAGE_DATASETS",
    "BitsSummary",
    "ImageData",
    "VariationalDequantizer",
    "bits_per_dim",
    "dequantization_nll",
    "dequantize",
    "load_digits",
    "load_image_dataset",
    "load_torchvision",
    "logit_forward",
    "logit_inverse",
    "summarize_bits",
]
