#!/usr/bin/env bash
# The full test suite, set-up included: lint, format check, type check, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k solvers` or `--device cuda`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh dev
export MPLBACKEND=Agg
.venv/bin/ruff check implicit_transforms plugins tests benchmarks
.venv/bin/ruff format --check implicit_transforms plugins tests benchmarks
.venv/bin/mypy implicit_transforms plugins
.venv/bin/python -m pytest "$@"
