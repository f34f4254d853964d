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
  # torchvision (the vision extra, part of dev and all) needs its matching torch: take the pair
  # this machine offers (a CUDA build, about 5.5 GB, one minute from local disk), else pip's
  # choice. Without vision, take the CPU build of torch when this machine offers it.
  if [[ ",${extras}," =~ ,(vision|dev|all), ]]; then
    if ! .venv/bin/python -c "import torchvision" 2>/dev/null; then
      .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null \
        || .venv/bin/python -m pip install -q torch torchvision
    fi
  elif ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0" 2>/dev/null || .venv/bin/python -m pip install -q torch
  fi
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
