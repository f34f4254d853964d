#!/usr/bin/env bash
# Create .venv (if missing) and install the package with the given extras (default: dev).
# Re-installs only when pyproject.toml changed. Sourced by the other scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-dev}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-${extras//,/-}-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # Take the CPU build of torch when this machine offers it; else whatever pip resolves.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0" 2>/dev/null || .venv/bin/python -m pip install -q torch
  fi
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
