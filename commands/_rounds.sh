# Sourced by the progressive-distillation recipes after they set TEACHER, RUN, START_STEPS, STEPS_PER_ROUND,
# DATA_FLAGS and TRAIN_FLAGS: one run per halving (ROUNDS: the student step counts, default every halving of
# START_STEPS), each initialised from the previous round's export; a round whose export was written at its last
# step is skipped, an interrupted one resumes; --dry_run prints every round's config as one JSON object.
halvings() { local n=$1; while [ "$n" -gt 1 ]; do n=$((n / 2)); printf '%s ' "$n"; done; }
ROUNDS=${ROUNDS:-$(halvings "$START_STEPS")}
DRY_RUN=0
for arg in "$@"; do if [ "$arg" = --dry_run ]; then DRY_RUN=1; fi; done
finished() {  # finished RUN_DIR: its export was written at the last step of the round
  "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("step") != int(sys.argv[2]))' \
    "$1/exports/student.json" "$STEPS_PER_ROUND" 2>/dev/null
}
SEP="{"
for STEPS in $ROUNDS; do
  TEACHER_STEPS=$((2 * STEPS))
  INPUT=$RUN/steps$TEACHER_STEPS/exports/student.pt
  if [ "$TEACHER_STEPS" -eq "$START_STEPS" ]; then INPUT=$TEACHER; fi
  MODEL_FLAGS="--init_from $INPUT --teacher_steps $TEACHER_STEPS --rho 7 --dropout 0"
  if [ "$DRY_RUN" = 1 ]; then printf '%s"steps%s": ' "$SEP" "$STEPS"; SEP=","
  elif finished "$RUN/steps$STEPS"; then echo "steps$STEPS: finished ($STEPS_PER_ROUND steps), skipped"; continue; fi
  launch scripts/train.py --method progressive --run_dir "$RUN/steps$STEPS" $DATA_FLAGS $MODEL_FLAGS $TRAIN_FLAGS "$@"
done
if [ "$DRY_RUN" = 1 ]; then echo "}"; fi
