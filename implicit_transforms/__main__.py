"""``python -m implicit_transforms`` runs the command-line trainer."""

from __future__ import annotations

import sys
from collections.abc import Sequence

_EXTRAS = {
    "nflows": "nflows",
    "pyro": "pyro",
    "matplotlib": "plot",
    "tqdm": "progress",
    "sklearn": "images",
    "torchvision": "vision",
}
"""Top-level package -> the extra of ``pyproject.toml`` that installs it."""


def missing_package(err: ImportError) -> str | None:
    """The top-level package whose absence caused ``err``, or ``None`` for any other failure.

    Follows the chain of causes (the plugins re-raise a missing host with install advice) to
    the first ``ModuleNotFoundError`` that names a module outside this package. An
    ``ImportError`` of another kind (a name missing from a module, an import cycle) is a bug
    rather than a missing installation.

    Example:
        >>> missing_package(ModuleNotFoundError("No module named 'nflows.flows'", name="nflows.flows"))
        'nflows'
        >>> missing_package(ImportError("cannot import name 'x'", name="implicit_transforms")) is None
        True
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            top = cause.name.split(".")[0]
            return None if top == "implicit_transforms" else top
        cause = cause.__cause__ or cause.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``implicit-transforms`` console script."""
    try:
        from implicit_transforms.cli.main import main as cli_main
    except ImportError as err:
        package = missing_package(err)
        if package is None:
            raise
        extra = _EXTRAS.get(package)
        advice = (
            f"pip install 'implicit-transforms[{extra}]'" if extra else f"pip install {package}"
        )
        print(
            f"implicit-transforms: error: the command line needs {package!r}, which is not "
            f"installed ({err}); {advice}",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
