# Sourced by the quickstart recipes: reads [--fast] into FAST (tiny budgets, the same code path), sets up .venv,
# and exports the interpreter, the thread count and PRECISION (auto unless set).
FAST=0
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=1 ;;
    *) echo "usage: bash $0 [--fast]" >&2; exit 2 ;;
  esac
done
bash commands/setup_env.sh
export PYTHON=.venv/bin/python OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PRECISION=${PRECISION:-auto}
