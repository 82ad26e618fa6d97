#!/usr/bin/env bash
# Create .venv (if missing) and install pagoda's requirements into it. Idempotent: a second run is quick.
# Usage: bash commands/setup_env.sh        (PYTHON=python3.11 to choose the interpreter)
# No preset: it installs the environment, not a training or sampling script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pagoda-requirements
want=$(cat requirements.txt requirements-data.txt setup.py | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (first time: a few minutes)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
