# Sourced by the multi-stage recipes: `timed STAGE cmd...` runs a stage and adds its wall time to
# $TIMINGS/STAGE.sec (so a resumed recipe sums its sessions).
timed() {
  local stage=$1; shift
  local start; start=$(date +%s.%N)
  "$@"
  mkdir -p "$TIMINGS"
  "$PYTHON" - "$TIMINGS/$stage.sec" "$start" <<'PY'
import os, sys, time
path, start = sys.argv[1], float(sys.argv[2])
before = float(open(path).read()) if os.path.exists(path) else 0.0
open(path, "w").write(f"{before + time.time() - start:.1f}")
PY
}
