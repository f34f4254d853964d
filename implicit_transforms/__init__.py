"""implicit-transforms: implicit and residual normalizing-flow blocks for PyTorch."""

from implicit_transforms.errors import (
    ConvergenceError,
    ConvergenceWarning,
    ImplicitTransformsWarning,
)

__all__ = ["ConvergenceError", "ConvergenceWarning", "ImplicitTransformsWarning"]
__version__ = "0.1.0"
