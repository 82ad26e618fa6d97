# Sourced by the progressive-distillation recipes after they set TEACHER, RUN, START_STEPS and ROUND_FLAGS (the
# preset and the paths of every round): one run per halving (ROUNDS: the student step counts, default every halving
# of START_STEPS), each initialised from the previous round's export; a round whose export was written at its last
# step (STEPS_PER_ROUND if set, else its config.json's total_steps) is skipped, an interrupted one resumes;
# --dry_run prints every round's config as one JSON object.
halvings() { local n=$1; while [ "$n" -gt 1 ]; do n=$((n / 2)); printf '%s ' "$n"; done; }
ROUNDS=${ROUNDS:-$(halvings "$START_STEPS")}
DRY_RUN=0
for arg in "$@"; do if [ "$arg" = --dry_run ]; then DRY_RUN=1; fi; done
finished() {  # finished RUN_DIR: prints the round's steps when its export was written at its last step
  "$PYTHON" - "$1" "${STEPS_PER_ROUND:-}" 2>/dev/null <<'PY'
import json, sys
run, steps = sys.argv[1], sys.argv[2]
total = int(steps) if steps else json.load(open(f"{run}/config.json"))["total_steps"]
if json.load(open(f"{run}/exports/student.json")).get("step") != total:
    sys.exit(1)
print(total)
PY
}
SEP="{"
for STEPS in $ROUNDS; do
  TEACHER_STEPS=$((2 * STEPS))
  INPUT=$RUN/steps$TEACHER_STEPS/exports/student.pt
  if [ "$TEACHER_STEPS" -eq "$START_STEPS" ]; then INPUT=$TEACHER; fi
  if [ "$DRY_RUN" = 1 ]; then printf '%s"steps%s": ' "$SEP" "$STEPS"; SEP=","
  elif DONE=$(finished "$RUN/steps$STEPS"); then echo "steps$STEPS: finished ($DONE steps), skipped"; continue; fi
  launch scripts/train.py --method progressive $ROUND_FLAGS --init_from "$INPUT" --teacher_steps "$TEACHER_STEPS" \
    --run_dir "$RUN/steps$STEPS" ${STEPS_PER_ROUND:+--total_steps $STEPS_PER_ROUND} "$@"
done
if [ "$DRY_RUN" = 1 ]; then echo "}"; fi
