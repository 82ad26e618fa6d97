#!/usr/bin/env bash
# No preset: a chain of the dataset's stage recipes, each of which passes its own preset.
# Progressive growth on data (issue 32): a teacher at 8 px, its one-step generator at 8 px, grown 8 -> 16 -> 32 one
# 2x step at a time, against a single 4x step (8 -> 32) and bicubic up-sampling, in one method table.
#   teacher8 -> latents8 -> stage2 (8 px) -> grow16 (8 -> 16) -> grow32 (16 -> 32)
#                                         -> grow4x (8 -> 32 in one step)
#   -> compare/: every row on the same seeds, with the real-vs-real floors at 8, 16 and 32 px.
# Each step is its own run and uses the dataset's own recipes,
# commands/{stage1_teacher,encode,stage2,stage3}_$DATASET.sh, with IMAGE_SIZE / GROW / ACTIVATE_FROM set here (a dataset's recipes must honour those three; the digits' do).
# Usage: [DATASET=mnist] [RUN=runs/mnist/chain8] bash commands/growth_chain.sh [--precision bf16 ...]
#        ... --dry_run prints ONE JSON object: each step's resolved config under its name.
# Env: DATASET (mnist), RUN, TEACHER_STEPS / STAGE2_STEPS / GROW_STEPS (each recipe's own steps when unset),
#      ENCODE_LIMIT (2000), ENCODE_STEPS (12), N (500 samples per seed x 3 seeds), ACTIVATE_16 / ACTIVATE_32 /
#      ACTIVATE_4X (the first trained output block of each growth step: the parent's top level onwards; the
#      defaults fit the digits' 1,1,2 teacher, whose 8 px level is blocks 4-5 and whose first grown level 6-8).
# Rerunning resumes: a finished run returns at once, an interrupted one continues from its last checkpoint.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
DATASET=${DATASET:-mnist}
RUN=${RUN:-runs/$DATASET/chain8}
TEACHER_STEPS=${TEACHER_STEPS:-} STAGE2_STEPS=${STAGE2_STEPS:-} GROW_STEPS=${GROW_STEPS:-}  # empty: the recipe's own
ENCODE_LIMIT=${ENCODE_LIMIT:-2000} ENCODE_STEPS=${ENCODE_STEPS:-12} N=${N:-500}
ACTIVATE_16=${ACTIVATE_16:-4} ACTIVATE_32=${ACTIVATE_32:-6} ACTIVATE_4X=${ACTIVATE_4X:-4}
DRY_RUN=0
for arg in "$@"; do if [ "$arg" = --dry_run ]; then DRY_RUN=1; fi; done
for recipe in stage1_teacher encode stage2 stage3; do
  if [ ! -f "commands/${recipe}_$DATASET.sh" ]; then
    echo "no recipe commands/${recipe}_$DATASET.sh for DATASET=$DATASET" >&2; exit 2
  fi
done
TEACHER=$RUN/teacher8/exports/denoiser_ema0.999.pt
GEN8=$RUN/stage2/exports/generator_ema0.99.pt
GEN16=$RUN/grow16/exports/generator_ema0.99.pt
GEN32=$RUN/grow32/exports/generator_ema0.99.pt
GEN4X=$RUN/grow4x/exports/generator_ema0.99.pt
SEP="{"
step() {  # step NAME ENV... -- RECIPE: one run, or its resolved config under NAME with --dry_run
  local name=$1; shift
  if [ "$DRY_RUN" = 1 ]; then printf '%s"%s": ' "$SEP" "$name"; SEP=","; else echo "== $name =="; fi
  env "$@"
}
step teacher8 IMAGE_SIZE=8 RUN_DIR=$RUN/teacher8 STEPS=$TEACHER_STEPS bash commands/stage1_teacher_$DATASET.sh "$@"
step latents8 TEACHER=$TEACHER OUT_DIR=$RUN/latents8 LIMIT=$ENCODE_LIMIT ENCODE_STEPS=$ENCODE_STEPS \
  bash commands/encode_$DATASET.sh "$@"
step stage2 IMAGE_SIZE=8 TEACHER=$TEACHER LATENTS=$RUN/latents8 RUN_DIR=$RUN/stage2 STEPS=$STAGE2_STEPS \
  bash commands/stage2_$DATASET.sh "$@"
step grow16 GENERATOR=$GEN8 LATENTS=$RUN/latents8 RUN_DIR=$RUN/grow16 IMAGE_SIZE=16 GROW=2 ACTIVATE_FROM=$ACTIVATE_16 \
  STEPS=$GROW_STEPS bash commands/stage3_$DATASET.sh "$@"
step grow32 GENERATOR=$GEN16 LATENTS=$RUN/latents8 RUN_DIR=$RUN/grow32 IMAGE_SIZE=32 GROW=2 ACTIVATE_FROM=$ACTIVATE_32 \
  STEPS=$GROW_STEPS bash commands/stage3_$DATASET.sh "$@"
step grow4x GENERATOR=$GEN8 LATENTS=$RUN/latents8 RUN_DIR=$RUN/grow4x IMAGE_SIZE=32 GROW=4 ACTIVATE_FROM=$ACTIVATE_4X \
  STEPS=$GROW_STEPS bash commands/stage3_$DATASET.sh "$@"
# The table: the latents' data (the manifest's data_dir) is what every row is scored against.
DATA_DIR=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data_dir"])' \
  "$RUN/latents8/manifest.json" 2>/dev/null || echo "bundled:$DATASET")
COMPARE_FLAGS=(); if [ "$DRY_RUN" = 1 ]; then COMPARE_FLAGS=(--dry_run); fi
step compare PYTHON="$PYTHON" "$PYTHON" scripts/compare.py --data_dir "$DATA_DIR" --out_dir "$RUN/compare" \
  --num_samples $N --num_seeds 3 --row "teacher 8 px (Heun 18)=$TEACHER@sampler=heun,steps=18" \
  --row "stage 2 (8 px)=$GEN8" --row "stage 2 + bicubic 2x=$GEN8@upsample=16" \
  --row "chain step 1 (8 -> 16)=$GEN16" --row "chain step 1 + bicubic 2x=$GEN16@upsample=32" \
  --row "chain step 2 (16 -> 32)=$GEN32" --row "one 4x step (8 -> 32)=$GEN4X" \
  --row "stage 2 + bicubic 4x=$GEN8@upsample=32" ${COMPARE_FLAGS[@]+"${COMPARE_FLAGS[@]}"}
if [ "$DRY_RUN" = 1 ]; then echo "}"; fi
