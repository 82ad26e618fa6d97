#!/usr/bin/env bash
# The whole PaGoDA pipeline on CIFAR-10 (bundled:cifar10: the 50,000 training photos; the 10,000 test photos are held
# out as the references), on a CPU:
#   stage 1 teacher at 16 px -> PF-ODE latents -> stage 2 one-step generator at 16 px -> stage 3 grown to 32 px
#   -> the method table (teacher Heun at 35 and 11 NFE, both generators, stage 2 + bicubic, real-vs-real floors; domain
#   scores from the CIFAR-10 classifier of pagoda/domain.py) -> report ($RUN_DIR/report.md, with Inception
#   FID/KID beside the domain columns).
# Data: $PAGODA_CIFAR10 (the official cifar-10-python.tar.gz, its extracted cifar-10-batches-py folder, or the JPEG
# archive cifar10-jpeg.tar.gz), else ../shared/data/cifar10/cifar10-jpeg.tar.gz beside the repository.
# Usage: bash commands/quickstart_cifar10.sh [--fast]   (--fast: tiny budgets, same code path, for CI)
# Every stage takes its settings from a preset (cifar16, cifar16to32); this file passes paths and budgets only.
# Rerunning resumes every stage instead of starting over. PRECISION as in commands/quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/_quickstart.sh "$@"

if [ "$FAST" = 1 ]; then
  # DOMAIN_EPOCHS=1: the classifier's one epoch instead of six (cached apart from the full one).
  RUN=${RUN_DIR:-runs/quickstart_cifar10_fast}
  TEACHER_STEPS=20 ENCODE_LIMIT=128 ENCODE_STEPS=6 STAGE2_STEPS=20 STAGE3_STEPS=10 NUM=16 NPER=20 SPEED_BATCH=16
  HEUN_STEPS=6 FEW_HEUN_STEPS="" DOMAIN_EPOCHS=1
else
  RUN=${RUN_DIR:-runs/quickstart_cifar10}
  TEACHER_STEPS=1200 ENCODE_LIMIT=1500 ENCODE_STEPS=10 STAGE2_STEPS=700 STAGE3_STEPS=600 NUM=1000 NPER=1000
  SPEED_BATCH=50 HEUN_STEPS=18 FEW_HEUN_STEPS=6 DOMAIN_EPOCHS=0
fi
TIMINGS="$RUN/timings"
source commands/_timed.sh

echo "== stage 1: teacher =="
timed teacher "$PYTHON" scripts/train.py --method diffusion --preset cifar16 --run_dir "$RUN/teacher" \
  --total_steps $TEACHER_STEPS --precision $PRECISION
TEACHER="$RUN/teacher/exports/denoiser_ema0.999.pt"

echo "== encode: PF-ODE latents =="
# Unflipped photos only, from the clean image (--start_sigma 0, the official encoder): the teacher trains on both
# flips, so either is in its distribution; one flip halves the encoding time.
timed encode "$PYTHON" scripts/encode.py --teacher "$TEACHER" --data_dir bundled:cifar10 --out_dir "$RUN/latents" \
  --flips 0 --limit $ENCODE_LIMIT --num_steps $ENCODE_STEPS --storage fp16 --chunk_size 500 --batch_size 250 \
  --verify 64 --precision $PRECISION

echo "== stage 2: one-step generator =="
timed stage2 "$PYTHON" scripts/train.py --method pagoda --preset cifar16 --init_from "$TEACHER" \
  --latent_dir "$RUN/latents" --run_dir "$RUN/stage2" --total_steps $STAGE2_STEPS --precision $PRECISION
GEN2="$RUN/stage2/exports/generator_ema0.99.pt"

echo "== stage 3: grow to 32 px =="
timed stage3 "$PYTHON" scripts/train.py --method pagoda --preset cifar16to32 --init_from "$GEN2" \
  --latent_dir "$RUN/latents" --run_dir "$RUN/stage3" --total_steps $STAGE3_STEPS --precision $PRECISION
GEN3="$RUN/stage3/exports/generator_ema0.99.pt"

echo "== sampling and the method table =="
# Every model on the same seeds and balanced labels, $NPER samples per seed x 3 seeds, scored with the CIFAR-10
# classifier (trained once on the 50,000 training photos and cached); scripts/compare.py, see compare/compare.md.
# Heun takes 2 * steps - 1 evaluations: 35 NFE, and 11 NFE for the few-step comparison.
TEACHER_ROWS=(--row "teacher (Heun)=$TEACHER@sampler=heun,steps=$HEUN_STEPS")
[ -z "$FEW_HEUN_STEPS" ] ||
  TEACHER_ROWS+=(--row "teacher (Heun, few steps)=$TEACHER@sampler=heun,steps=$FEW_HEUN_STEPS")
timed compare "$PYTHON" scripts/compare.py --data_dir bundled:cifar10 --out_dir "$RUN/compare" --num_samples $NPER \
  --num_seeds 3 --domain_epochs $DOMAIN_EPOCHS "${TEACHER_ROWS[@]}" --row "stage 2 generator (1 step)=$GEN2" \
  --row "stage 3 generator (1 step, 2x)=$GEN3" --row "stage 2 + bicubic 2x (baseline)=$GEN2@upsample=32" \
  --gap_row "stage 2 + bicubic 2x (baseline)"
# Inception references: $NUM held-out test photos, and 3 x $NUM others for the floor's three blocks
for size in 16 32; do
  [ -f "$RUN/ref$size.npz" ] || "$PYTHON" scripts/make_reference.py --data_dir bundled:cifar10_test \
    --image_size $size --num_images $NUM --out "$RUN/ref$size.npz"
  [ -f "$RUN/ref${size}_floor.npz" ] || "$PYTHON" scripts/make_reference.py --data_dir bundled:cifar10_test \
    --image_size $size --num_images $((3 * NUM)) --skip $NUM --out "$RUN/ref${size}_floor.npz"
done

echo "== evaluation and report =="
"$PYTHON" scripts/quickstart_report.py --run_dir "$RUN" --speed_batch $SPEED_BATCH --num_inception $NUM \
  --inception_seeds 3
