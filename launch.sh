#!/usr/bin/env bash
# Set up (first run: creates .venv and installs requirements.txt) and start Stable Studio.
# All flags go to app.py: ./launch.sh --help lists them.
set -euo pipefail
cd "$(dirname "$0")"
extras=()
for arg in "$@"; do  # --ray-address X or --ray-address=X: scale-out needs Ray Serve (docs/scale-out.md)
    case "$arg" in --ray-address|--ray-address=*) extras=(requirements-ray.txt) ;; esac
done
bash scripts/ensure-venv.sh ${extras[@]+"${extras[@]}"}
exec .venv/bin/python app.py "$@"
