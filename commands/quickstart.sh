#!/usr/bin/env bash
# The whole PaGoDA pipeline on the bundled dataset (the 60,000 MNIST training digits; the 10,000 test digits are
# held out as the FID reference), on a CPU:
#   stage 1 teacher at 16 px -> PF-ODE latents -> stage 2 one-step generator at 16 px -> stage 3 grown to 32 px
#   -> the method table of every model (+ the bicubic baseline) -> report ($RUN_DIR/report.md).
# Usage: bash commands/quickstart.sh [--fast]      (--fast: tiny budgets, same code path, for CI)
# Sets up .venv first if needed. Rerunning resumes every stage instead of starting over.
# PRECISION=auto (default: bf16 where the CPU or GPU has it natively, else fp32; pagoda/amp.py) or fp32 / bf16 for
# the networks trained, encoded with and sampled; the Inception of the scores is fp32 either way.
# No preset: it runs the stage recipes (each with its preset) at its budgets, then the table and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/_quickstart.sh "$@"

if [ "$FAST" = 1 ]; then
  RUN=${RUN_DIR:-runs/quickstart_fast}
  TEACHER_STEPS=20 ENCODE_LIMIT=128 ENCODE_STEPS=6 STAGE2_STEPS=20 STAGE3_STEPS=10 NUM=16 NPER=20 HEUN_STEPS=6 SPEED_BATCH=16
else
  RUN=${RUN_DIR:-runs/quickstart}
  TEACHER_STEPS=1000 ENCODE_LIMIT=2000 ENCODE_STEPS=12 STAGE2_STEPS=1000 STAGE3_STEPS=850 NUM=300 NPER=500 HEUN_STEPS=18 SPEED_BATCH=50
fi
TIMINGS="$RUN/timings"
source commands/_timed.sh

echo "== stage 1: teacher =="
timed teacher env RUN_DIR="$RUN/teacher" STEPS=$TEACHER_STEPS bash commands/stage1_teacher_mnist.sh \
  --precision $PRECISION
TEACHER="$RUN/teacher/exports/denoiser_ema0.999.pt"

echo "== encode: PF-ODE latents =="
timed encode env TEACHER="$TEACHER" OUT_DIR="$RUN/latents" LIMIT=$ENCODE_LIMIT ENCODE_STEPS=$ENCODE_STEPS \
  bash commands/encode_mnist.sh --precision $PRECISION

echo "== stage 2: one-step generator =="
timed stage2 env TEACHER="$TEACHER" LATENTS="$RUN/latents" RUN_DIR="$RUN/stage2" STEPS=$STAGE2_STEPS \
  bash commands/stage2_mnist.sh --precision $PRECISION
GEN2="$RUN/stage2/exports/generator_ema0.99.pt"

echo "== stage 3: grow to 32 px =="
timed stage3 env GENERATOR="$GEN2" LATENTS="$RUN/latents" RUN_DIR="$RUN/stage3" STEPS=$STAGE3_STEPS \
  bash commands/stage3_mnist.sh --precision $PRECISION
GEN3="$RUN/stage3/exports/generator_ema0.99.pt"

echo "== sampling and the method table =="
# Every model on the same seeds and balanced labels, $NPER samples per seed x 3 seeds, scored with the digits' own
# classifier (trained once on the 60,000 training digits and cached); scripts/compare.py, see compare/compare.md.
timed compare "$PYTHON" scripts/compare.py --data_dir bundled:mnist --out_dir "$RUN/compare" --num_samples $NPER \
  --num_seeds 3 --row "teacher (Heun)=$TEACHER@sampler=heun,steps=$HEUN_STEPS" --row "stage 2 generator (1 step)=$GEN2" \
  --row "stage 3 generator (1 step, 2x)=$GEN3" --row "stage 2 + bicubic 2x (baseline)=$GEN2@upsample=32" \
  --gap_row "stage 2 + bicubic 2x (baseline)"
for size in 16 32; do  # Inception references: $NUM held-out test digits, and $NUM others for the floor
  [ -f "$RUN/ref$size.npz" ] || "$PYTHON" scripts/make_reference.py --data_dir bundled:mnist_test --image_size $size \
    --num_images $NUM --out "$RUN/ref$size.npz"
  [ -f "$RUN/ref${size}_floor.npz" ] || "$PYTHON" scripts/make_reference.py --data_dir bundled:mnist_test \
    --image_size $size --num_images $NUM --skip $NUM --out "$RUN/ref${size}_floor.npz"
done

echo "== evaluation and report =="
"$PYTHON" scripts/quickstart_report.py --run_dir "$RUN" --speed_batch $SPEED_BATCH --num_inception $NUM
