#!/usr/bin/env bash
# Classifier-free guidance on the bundled data: a guidance-conditioned one-step generator G(z, y, w) trained from a
# quickstart run, and the trade-off curve of the teacher and the generator over w.
#   1. guided pairs: $NUM_PAIRS fresh prior latents decoded by the quickstart's (label-dropout) teacher, Heun 18 steps,
#      at w cycled over 1.5, 2, 3, 4 (w_max = 4): encode_mnist.sh run in the decode direction (sharded, resumable).
#      2000 pairs, 500 per w: as many targets as the 2000 data latents of stage 2's reconstruction term. Each is a
#      guided teacher sample: 2 calls per Heun evaluation, 70 teacher calls a pair, 140,000 for the set.
#   2. stage 2 with the guided pairs (stage2_mnist.sh, its budget, extra flags only: --guided_pairs, --guided_weight 1,
#      --guided_gan): the w-embedding and the distillation term L_rec(G(z_w, y, w), x_w); data reconstruction at w = 1.
#      GUIDED_GAN=false (option (a)): the GAN at w = 1 only (reals: the data). GUIDED_GAN=true (option (b)): a
#      discriminator D(x, y, w) whose reals are the data at w = 1 and the pairs' x_w at their w, fakes G(z, y, w).
#      Measured on the quickstart's teacher and pairs (N = 1000 x 3 seeds, domain FD at w = 1 / 1.5 / 2 / 3 / 4):
#      teacher 16.3 / 8.3 / 18.6 / 47.9 / 73.7; (a) 15.9 / 7.9 / 13.3 / 32.6 / 49.1; (b) 18.4 / 7.9 / 13.8 / 34.2 /
#      51.8. Both tie the teacher at w <= 1.5 only and have the same verdicts on every score; (b) is ~2-3 FD nearer
#      the teacher at w = 4 and costs ~1.4x per step, so (a) is the default. 2000 steps move G further (w = 4:
#      (a) 57.8, (b) 59.9) than the option, --guided_weight 4 or 4000 pairs (51.8, 48.1) do.
#   3. the curve: scripts/compare.py rows for the teacher (Heun 18 steps, NFE 35 at w = 1 and 70 guided) and the
#      generator (NFE 1) at w in {1, 1.5, 2, 3, 4}, the same seeds and balanced labels, $N samples per seed x 3 seeds;
#      then scripts/guidance_curve.py: guidance.{png,md,json} (the scores against w, the rank correlations over w,
#      the generator against the teacher at each w).
# In:  $RUN (a quickstart run directory: teacher/, latents/).  Out: $OUT/pairs/ (the guided pairs), $OUT/stage2/ (the
#      generator: exports/generator_ema0.99.pt), $OUT/curve/{compare,guidance}.{md,json,png}, $OUT/timings/<stage>.sec.
# Env: NUM_PAIRS (2000), STEPS (stage 2's 1000), N (1000 samples per seed of every row), PRECISION (auto),
#      GUIDED_GAN (false).
# Extra arguments go to scripts/compare.py. Rerunning resumes every stage (pairs, training, samples).
# --dry_run prints ONE JSON object: {"pairs": ..., "stage2": ..., "curve": ...}, each stage's resolved config.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
source commands/_timed.sh
RUN=${RUN:-runs/quickstart}
OUT=${OUT:-$RUN/guided}
TIMINGS="$OUT/timings"
TEACHER=$RUN/teacher/exports/denoiser_ema0.999.pt
GEN=$OUT/stage2/exports/generator_ema0.99.pt
NUM_PAIRS=${NUM_PAIRS:-2000}
N=${N:-1000}
SCALES="1 1.5 2 3 4"
PRECISION=${PRECISION:-auto}

PAIR_FLAGS="--direction decode --num_pairs $NUM_PAIRS --guidance_scales 1.5,2,3,4 --seed 0"
GUIDED_FLAGS="--guided_pairs $OUT/pairs --guided_weight 1 --guided_gan ${GUIDED_GAN:-false}"
ROWS=()
for w in $SCALES; do ROWS+=(--row "teacher_w$w=$TEACHER@sampler=heun,steps=18,guidance=$w"); done
for w in $SCALES; do ROWS+=(--row "generator_w$w=$GEN@guidance=$w"); done

DRY_RUN=0
for arg in "$@"; do if [ "$arg" = --dry_run ]; then DRY_RUN=1; fi; done
if [ "$DRY_RUN" = 1 ]; then
  printf '{"pairs": '
  env TEACHER="$TEACHER" OUT_DIR="$OUT/pairs" bash commands/encode_mnist.sh $PAIR_FLAGS --dry_run
  printf ', "stage2": '
  env TEACHER="$TEACHER" LATENTS="$RUN/latents" RUN_DIR="$OUT/stage2" bash commands/stage2_mnist.sh $GUIDED_FLAGS \
    --precision "$PRECISION" --dry_run
  printf ', "curve": '
  launch scripts/compare.py --data_dir bundled:mnist --out_dir "$OUT/curve" --num_samples "$N" --num_seeds 3 \
    "${ROWS[@]}" "$@"
  echo "}"
  exit 0
fi

echo "== guided pairs: $NUM_PAIRS at w in {1.5, 2, 3, 4} =="
timed pairs env TEACHER="$TEACHER" OUT_DIR="$OUT/pairs" bash commands/encode_mnist.sh $PAIR_FLAGS
echo "== stage 2 with the guided pairs =="
timed stage2 env TEACHER="$TEACHER" LATENTS="$RUN/latents" RUN_DIR="$OUT/stage2" bash commands/stage2_mnist.sh \
  $GUIDED_FLAGS --precision "$PRECISION"
echo "== the trade-off curve =="
timed curve launch scripts/compare.py --data_dir bundled:mnist --out_dir "$OUT/curve" --num_samples "$N" --num_seeds 3 \
  "${ROWS[@]}" "$@"
"$PYTHON" scripts/guidance_curve.py --compare "$OUT/curve/compare.json"
