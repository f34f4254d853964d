"""``.. cli-help:: [SUBCOMMAND]``: the ``--help`` text of ``implicit-transforms``, captured at
build time by running ``python -m implicit_transforms [SUBCOMMAND] --help`` with the
interpreter that runs Sphinx, so the page can never disagree with the parser."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class CliHelp(SphinxDirective):
    """The help of the command line, or of one of its subcommands, as a literal block."""

    optional_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {"width": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        args = [*self.arguments[0].split(), "--help"] if self.arguments else ["--help"]
        env = {**os.environ, "COLUMNS": str(self.options.get("width", 100))}
        command = [sys.executable, "-m", "implicit_transforms", *args]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            # A reported error, so that `-W` fails the build instead of printing stale help.
            return [
                self.state.document.reporter.error(
                    f"`implicit-transforms {' '.join(args)}` exited with {proc.returncode}: "
                    f"{proc.stderr.strip()}",
                    line=self.lineno,
                )
            ]
        text = f"$ implicit-transforms {' '.join(args)}\n{proc.stdout.rstrip()}"
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
