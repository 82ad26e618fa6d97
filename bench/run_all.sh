#!/usr/bin/env bash
# Run every bench/ script and print one table of the ratios they measured (each side by side in one run).
# Usage: [RUN=runs/quickstart] bash bench/run_all.sh [--device cuda]   (each script's output: bench/results/<name>.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p bench/results
run() {  # run NAME ARGS...
  local name=$1; shift
  echo "[bench] $name" >&2
  "$PYTHON" "bench/$name.py" "$@" > "bench/results/$name.txt" 2>&1 || echo "RATIO $name: FAILED" >> "bench/results/$name.txt"
}
run sampling "$@"
run encode "$@"
run fid --num_images 32 --batch 8 "$@"
run unet_step --configs bundled --iters 3 "$@"
run precision "$@"
run levers "$@"
run discriminator --iters 3 "$@"
TABLE=${TABLE:-runs/quickstart/compare_table/compare.json}  # the method table's wall time, when one was made
run domain $([ -f "$TABLE" ] && echo --table "$TABLE") "$@"
if [ -n "${PAGODA_OFFICIAL_CM:-}" ]; then  # the official network side by side: needs a checkout (bench/official.py)
  run official "$@"
else
  echo "[bench] official skipped: set PAGODA_OFFICIAL_CM to a consistency_models checkout" >&2
fi
RUN=${RUN:-runs/quickstart}  # the scripts that need a finished quickstart run (its models, samples, references)
if [ -f "$RUN/ref16.npz" ]; then
  run inception_precision --ref "$RUN/ref16.npz" --samples "$RUN"/compare/samples/*/samples_*x16x16x3.npz "$@"
  "$PYTHON" bench/profile_steps.py --run "$RUN" > bench/results/profile_steps.txt 2>&1 || echo "profile_steps FAILED" >&2
else
  echo "[bench] inception_precision and profile_steps skipped: no finished quickstart run at $RUN (set RUN=...)" >&2
fi
printf '\n%-32s %12s  %s\n' "measurement" "value" "what"
printf '%-32s %12s  %s\n' "--------------------------------" "------------" "----"
grep -h "^RATIO" bench/results/*.txt | sed 's/^RATIO //' | while IFS= read -r line; do
  name=${line%%:*}; rest=${line#*: }; value=${rest%%  *}; note=${rest#"$value"}
  printf '%-32s %12s %s\n' "$name" "$value" "$note"
done
