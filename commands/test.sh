#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (CPU; slow end-to-end tests included).
# Extra arguments go to pytest, e.g. `bash commands/test.sh -m "not slow"`.
# No preset: it runs pytest, not a training or sampling script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash commands/setup_env.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest "$@"
