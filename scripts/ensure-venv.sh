#!/usr/bin/env bash
# Create .venv in the repo root when missing and (re)install requirements when they changed.
# Sourced by launch.sh and run-tests.sh; extra requirement files may be passed as arguments.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "Stable Studio needs Python 3.10 or newer ($python is $("$python" --version 2>&1))." >&2
    exit 1
fi
if [ ! -x "$root/.venv/bin/python" ]; then
    echo "Creating virtual environment in $root/.venv"
    "$python" -m venv "$root/.venv"
fi
stamp="$root/.venv/.requirements.sha256"
nodeps="$root/requirements-nodeps.txt"  # packages whose declared dependencies we replace (see the file)
wanted="$(cat "$root/requirements.txt" "$nodeps" "$@" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing requirements into .venv (first run takes a few minutes)"
    "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
    args=(-r "$root/requirements.txt")
    for extra in "$@"; do args+=(-r "$extra"); done
    "$root/.venv/bin/python" -m pip install --quiet "${args[@]}"
    "$root/.venv/bin/python" -m pip install --quiet --no-deps -r "$nodeps"
    echo "$wanted" > "$stamp"
fi
