#!/usr/bin/env bash
# The README's first command, set-up included: create .venv (if missing) with the nflows, plot,
# progress and images (scikit-learn's digits) extras, then train the default model (RQ spline
# couplings alternating with ImpFlow blocks, on the checkerboard).
# Extra arguments go to `implicit-transforms train` (e.g. `--dataset moons --model resflow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh nflows,plot,progress,images
exec .venv/bin/implicit-transforms train "$@"
