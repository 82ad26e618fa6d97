#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (CPU; slow end-to-end tests included), one pytest worker
# per CPU core up to 8 (pytest-xdist; each test file stays on one worker, so its module fixtures are built once).
# Extra arguments go to pytest, e.g. `bash commands/test.sh -m "not slow"`; TEST_WORKERS=0 runs in one process.
# No preset: it runs pytest, not a training or sampling script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash commands/setup_env.sh
cores=$(nproc)
workers=${TEST_WORKERS:-$(( cores < 8 ? cores : 8 ))}  # at most 8: each worker holds its files' trained fixtures
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
