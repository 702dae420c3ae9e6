#!/usr/bin/env bash
# Set up (first run: creates .venv and installs requirements.txt) and start Stable Studio.
# All flags go to app.py: ./launch.sh --help lists them.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/ensure-venv.sh
exec .venv/bin/python app.py "$@"
