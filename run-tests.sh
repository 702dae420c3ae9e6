#!/usr/bin/env bash
# Run the whole test suite: sets up .venv if needed, installs test tools and Chromium for the browser tests.
# Extra arguments go to pytest (e.g. ./run-tests.sh -k infotext).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/ensure-venv.sh requirements-test.txt requirements-ray.txt  # the scale-out tests run by default
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Chromium for the browser tests (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "Chromium not found and cannot be installed here: browser tests will be skipped." >&2
    fi
fi
.venv/bin/ruff check --quiet .  # pyflakes-level errors and bug patterns; style is left to review
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q --durations=25 "$@"  # the slowest tests, to keep the suite fast
