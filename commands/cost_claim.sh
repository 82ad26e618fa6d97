#!/usr/bin/env bash
# No preset: it runs the dataset's stage recipes, each of which passes its own preset.
# PaGoDA's cost claim at 32 px (issue 32), on one dataset's own recipes, every training run timed:
#   (a) a 16 px teacher -> latents -> stage 2 at 16 px -> grown to 32 px (the quickstart's pipeline);
#   (b) a teacher trained at 32 px -> its latents -> its own stage-2 generator at 32 px;
#   (c) that 32 px teacher sampled with Heun (18 steps, NFE 35).
# Out: $RUN/compare (one method table: (a), (b), (c) on the same seeds, with the 32 px floor) and $RUN/cost.md (wall
# seconds and images seen of each training run, and the totals of (a) and (b)).
# Usage: [DATASET=mnist] [RUN=runs/mnist/cost] bash commands/cost_claim.sh [--precision bf16 ...]
# Env: STEPS (every training run's steps; unset: each recipe's own, the quickstart's budgets), ENCODE_LIMIT (2000),
#      ENCODE_STEPS (12), N (500 samples per seed x 3 seeds). Rerunning resumes; the timings add up over reruns
#      (commands/_timed.sh).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
DATASET=${DATASET:-mnist}
RUN=${RUN:-runs/$DATASET/cost}
STEPS=${STEPS:-} ENCODE_LIMIT=${ENCODE_LIMIT:-2000} ENCODE_STEPS=${ENCODE_STEPS:-12} N=${N:-500}
TIMINGS=$RUN/timings
source "$(dirname "$0")/_timed.sh"
pipeline() {  # pipeline NAME SIZE: teacher, latents and stage 2 at SIZE px under $RUN/NAME
  local dir=$RUN/$1 size=$2; shift 2
  timed "$(basename "$dir")_teacher" env IMAGE_SIZE=$size RUN_DIR=$dir/teacher STEPS=$STEPS \
    bash commands/stage1_teacher_$DATASET.sh "$@"
  timed "$(basename "$dir")_encode" env TEACHER=$dir/teacher/exports/denoiser_ema0.999.pt OUT_DIR=$dir/latents \
    LIMIT=$ENCODE_LIMIT ENCODE_STEPS=$ENCODE_STEPS bash commands/encode_$DATASET.sh "$@"
  timed "$(basename "$dir")_stage2" env IMAGE_SIZE=$size TEACHER=$dir/teacher/exports/denoiser_ema0.999.pt \
    LATENTS=$dir/latents RUN_DIR=$dir/stage2 STEPS=$STEPS bash commands/stage2_$DATASET.sh "$@"
}
pipeline a16 16 "$@"
timed a16_stage3 env GENERATOR=$RUN/a16/stage2/exports/generator_ema0.99.pt LATENTS=$RUN/a16/latents \
  RUN_DIR=$RUN/a16/stage3 STEPS=$STEPS bash commands/stage3_$DATASET.sh "$@"
pipeline b32 32 "$@"
DATA_DIR=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data_dir"])' \
  "$RUN/a16/latents/manifest.json")
"$PYTHON" scripts/compare.py --data_dir "$DATA_DIR" --out_dir "$RUN/compare" --num_samples $N --num_seeds 3 \
  --row "(a) 16 px teacher + stage 2 + growth=$RUN/a16/stage3/exports/generator_ema0.99.pt" \
  --row "(b) 32 px teacher + stage 2=$RUN/b32/stage2/exports/generator_ema0.99.pt" \
  --row "(c) 32 px teacher, Heun 18=$RUN/b32/teacher/exports/denoiser_ema0.999.pt@sampler=heun,steps=18"
"$PYTHON" - "$RUN" > "$RUN/cost.md" <<'PY'
import json, os, sys
run = sys.argv[1]
print("| training run | wall (s) | images seen |\n|---|---|---|")
totals = {"a16": [0.0, 0], "b32": [0.0, 0]}
for name in ("a16_teacher", "a16_encode", "a16_stage2", "a16_stage3", "b32_teacher", "b32_encode", "b32_stage2"):
    pipe, stage = name.split("_")
    seconds = float(open(os.path.join(run, "timings", f"{name}.sec")).read())
    if stage == "encode":
        images = json.load(open(os.path.join(run, pipe, "latents", "manifest.json"))).get("num_images", 0)
    else:
        cfg = json.load(open(os.path.join(run, pipe, stage, "config.json")))
        images = cfg["total_steps"] * cfg["global_batch_size"]
    totals[pipe][0] += seconds
    totals[pipe][1] += images
    print(f"| {name} | {seconds:.0f} | {images:,} |")
for pipe, (seconds, images) in totals.items():
    print(f"| **{pipe} total** | {seconds:.0f} | {images:,} |")
PY
cat "$RUN/cost.md"
