#!/usr/bin/env bash
# Classifier-free guidance on the bundled data: a guidance-conditioned one-step generator G(z, y, w) made from a
# quickstart run's generator, and the trade-off curve of the teacher and the generator over w.
#   1. guided pairs: $NUM_PAIRS fresh prior latents decoded by the quickstart's (label-dropout) teacher, Heun 18 steps,
#      at w cycled over 1.5, 2, 3, 4 (w_max = 4): scripts/encode.py --preset mnist16_pairs, the decode direction
#      (sharded, resumable).
#      Each is a guided teacher sample: 2 calls per Heun evaluation, 70 teacher calls a pair (700,000 for 10,000).
#   2. guidance distillation (scripts/train.py --method guidance --preset mnist16): the quickstart's stage-2
#      generator gets a zero-initialised w-embedding and is fitted to the pairs, L_rec(G(z_w, y, w), x_w) censored at
#      the clip bounds (a pair's saturated pixel only says the teacher's value lay beyond), plus the same loss between
#      the two samples' sorted pixel values (their value histograms: the pair's contrast), while w = 1 is anchored to
#      the starting generator on fresh latents at weight 0.3 (the adversarially trained point stays put).
#      24000 steps of 32 pairs.
#      Why a phase of its own rather than a term inside stage 2: see pagoda/methods/guidance.py.
#   3. the curve: scripts/compare.py rows for the teacher (Heun 18 steps, NFE 35 at w = 1 and 70 guided) and the
#      generator (NFE 1) at w in {1, 1.5, 2, 3, 4}, the same seeds and balanced labels, $N samples per seed x 3 seeds;
#      then scripts/guidance_curve.py: guidance.{png,md,json} and guidance_samples.png. No preset for this step:
#      its rows are the table itself.
# In:  $RUN (a quickstart run directory: teacher/, stage2/).  Out: $OUT/pairs/ (the guided pairs), $OUT/guidance/
#      (the generator: exports/generator_ema0.99.pt), $OUT/curve/{compare,guidance}.{md,json,png},
#      $OUT/timings/<stage>.sec.
# Env: NUM_PAIRS (the preset's 10000), STEPS (the preset's 24000 steps), N (1000 samples per seed of every row),
# PRECISION (auto: the guidance run's).
# Extra arguments go to scripts/compare.py. Rerunning resumes every stage (pairs, training, samples).
# --dry_run prints ONE JSON object: {"pairs": ..., "guidance": ..., "curve": ...}, each stage's resolved config.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
source commands/_timed.sh
RUN=${RUN:-runs/quickstart}
OUT=${OUT:-$RUN/guided}
TIMINGS="$OUT/timings"
TEACHER=$RUN/teacher/exports/denoiser_ema0.999.pt
START=$RUN/stage2/exports/generator_ema0.99.pt
GEN=$OUT/guidance/exports/generator_ema0.99.pt
N=${N:-1000}
SCALES="1 1.5 2 3 4"

PAIR_FLAGS="--preset mnist16_pairs --teacher $TEACHER --out_dir $OUT/pairs ${NUM_PAIRS:+--num_pairs $NUM_PAIRS}"
GUIDANCE_FLAGS="--method guidance --preset mnist16 --init_from $START --guided_pairs $OUT/pairs --run_dir $OUT/guidance
  ${STEPS:+--total_steps $STEPS} ${PRECISION:+--precision $PRECISION}"
ROWS=()
for w in $SCALES; do ROWS+=(--row "teacher_w$w=$TEACHER@sampler=heun,steps=18,guidance_scale=$w"); done
for w in $SCALES; do ROWS+=(--row "generator_w$w=$GEN@guidance_scale=$w"); done

DRY_RUN=0
for arg in "$@"; do if [ "$arg" = --dry_run ]; then DRY_RUN=1; fi; done
if [ "$DRY_RUN" = 1 ]; then
  printf '{"pairs": '
  launch scripts/encode.py $PAIR_FLAGS --dry_run
  printf ', "guidance": '
  launch scripts/train.py $GUIDANCE_FLAGS --dry_run
  printf ', "curve": '
  launch scripts/compare.py --data_dir bundled:mnist --out_dir "$OUT/curve" --num_samples "$N" --num_seeds 3 \
    "${ROWS[@]}" "$@"
  echo "}"
  exit 0
fi

echo "== guided pairs =="
timed pairs launch scripts/encode.py $PAIR_FLAGS
echo "== guidance distillation from $START =="
timed guidance launch scripts/train.py $GUIDANCE_FLAGS
echo "== the trade-off curve =="
timed curve launch scripts/compare.py --data_dir bundled:mnist --out_dir "$OUT/curve" --num_samples "$N" --num_seeds 3 \
  "${ROWS[@]}" "$@"
"$PYTHON" scripts/guidance_curve.py --compare "$OUT/curve/compare.json"
