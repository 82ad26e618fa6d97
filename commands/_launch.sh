# Sourced by the recipes: picks the interpreter and the launcher.
#   NPROC=8 bash commands/stage2_imagenet64.sh      -> mpiexec -n 8 python ...
#   LAUNCHER=torchrun NPROC=8 bash ...              -> torchrun --nproc_per_node 8 ...
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
NPROC=${NPROC:-1}
launch() {
  if [ "$NPROC" -le 1 ]; then
    "$PYTHON" "$@"
  elif [ "${LAUNCHER:-mpiexec}" = torchrun ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "$@"
  else
    MPIEXEC=$(dirname "$PYTHON")/mpiexec; [ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
    "$MPIEXEC" -n "$NPROC" "$PYTHON" "$@"
  fi
}
