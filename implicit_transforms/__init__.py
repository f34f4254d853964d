"""implicit-transforms: implicit and residual normalizing-flow blocks for PyTorch.

Stable names are re-exported here; submodules hold the rest (``solvers``, ``implicit``,
``logdet``, ``lipschitz``, ``blocks``).
"""

from typing import Any

from implicit_transforms.blocks import (
    BlockOptions,
    ImplicitBlock,
    InvertibleBlock,
    MonotoneBlock,
    ResidualBlock,
    impflow_block,
    iresnet_block,
    lipschitz_net,
    monotone_block,
    resflow_block,
)
from implicit_transforms.errors import (
    ConvergenceError,
    ConvergenceWarning,
    FunctionalTransformError,
    HigherOrderGradientError,
    ImplicitTransformsWarning,
    LipschitzWarning,
    TracingError,
)
from implicit_transforms.implicit import attach_implicit_grad, solve_implicit
from implicit_transforms.lipschitz import (
    LipschitzCNN,
    LipschitzDenseCNN,
    LipschitzDenseMLP,
    LipschitzMLP,
    certify,
)
from implicit_transforms.solvers import (
    Anderson,
    Broyden,
    FixedPoint,
    SolverResult,
    solver_tolerance,
)
from implicit_transforms.validation import input_validation, set_input_validation

__all__ = [
    "Anderson",
    "BlockOptions",
    "Broyden",
    "ConvergenceError",
    "ConvergenceWarning",
    "FixedPoint",
    "FunctionalTransformError",
    "HigherOrderGradientError",
    "ImplicitBlock",
    "ImplicitTransformsWarning",
    "InvertibleBlock",
    "LipschitzCNN",
    "LipschitzDenseCNN",
    "LipschitzDenseMLP",
    "LipschitzMLP",
    "LipschitzWarning",
    "MonotoneBlock",
    "ResidualBlock",
    "SolverResult",
    "TracingError",
    "attach_implicit_grad",
    "certify",
    "impflow_block",
    "input_validation",
    "iresnet_block",
    "lipschitz_net",
    "load_run",
    "monotone_block",
    "resflow_block",
    "set_input_validation",
    "solve_implicit",
    "solver_tolerance",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``load_run`` needs nflows (the trainer's flows): imported on first use, so that importing
    # the package does not import nflows.
    if name == "load_run":
        from implicit_transforms.cli.load import load_run

        return load_run
    raise AttributeError(f"module 'implicit_transforms' has no attribute {name!r}")
