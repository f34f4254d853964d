"""``python -m implicit_transforms`` runs the command-line trainer."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``implicit-transforms`` console script."""
    try:
        from implicit_transforms.cli.main import main as cli_main
    except ImportError as err:
        print(
            f"implicit-transforms: error: the command line needs nflows ({err}); "
            "pip install 'implicit-transforms[nflows]'",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
