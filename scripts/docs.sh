#!/usr/bin/env bash
# The documentation, set-up included: the API reference (from the docstrings), the tutorials
# (rendered from their committed outputs, never executed) and the command line's --help, into
# docs/_build/html (open docs/_build/html/index.html). Offline. Any Sphinx warning fails the
# build (-W, after all of them are reported: --keep-going), and so does any cross-reference
# that does not resolve (-n). Extra arguments go to sphinx-build (e.g. -E: re-read every page).
set -euo pipefail
cd "$(dirname "$0")/.."
# The dev extra includes docs: reuse a dev environment (CI, after scripts/test.sh) as it is.
if [ -f ".venv/.installed-dev-$(sha1sum pyproject.toml | cut -c1-12)" ]; then
  bash scripts/setup-env.sh dev
else
  bash scripts/setup-env.sh docs
fi
export MPLBACKEND=Agg
exec .venv/bin/python -m sphinx -b html -W --keep-going -n "$@" docs docs/_build/html
