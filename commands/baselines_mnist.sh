#!/usr/bin/env bash
# PaGoDA against the other one-step methods on the bundled data, on one method table: the same stage-1 teacher, the
# same 60,000 training digits, the same training budget, the same seeds and held-out reals for every row.
#   GDD and GDD-I (gdd_mnist.sh), progressive distillation 32 -> 16 -> 8 -> 4 -> 2 -> 1 steps (progressive_mnist.sh),
#   beside the quickstart's teacher (Heun 35 NFE, and Euler 32: the sampler PD distils), PaGoDA stage 2 and stage 3.
# Budget: 32,000 images drawn from the data stream for every method's training: PaGoDA stage 2 1,000 alternating
# steps x 32 (500 G and 500 D updates; its encoding pass over 2,000 digits comes on top, timed by the quickstart),
# GDD and GDD-I 500 steps of one G and one D update x 32, PD 5 rounds x 200 student updates x 32.
# In:  $RUN (a quickstart run directory: teacher/, stage2/, stage3/).  Out: $OUT/{gdd,gdd_i,progressive}/ (runs),
#      $OUT/table/compare.{md,json,png} (the table), $OUT/timings/<method>.sec (training wall time).
# Rerunning resumes every run and the table.
# No preset: it runs the other recipes (each with its preset) and one scripts/compare.py table of their rows.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
source commands/_timed.sh
RUN=${RUN:-runs/quickstart}
OUT=${OUT:-$RUN/baselines}
TIMINGS="$OUT/timings"
TEACHER=$RUN/teacher/exports/denoiser_ema0.999.pt
GEN2=$RUN/stage2/exports/generator_ema0.99.pt
GEN3=$RUN/stage3/exports/generator_ema0.99.pt
N=${N:-1000}  # samples per seed of every row

timed gdd env TEACHER="$TEACHER" RUN_DIR="$OUT/gdd" bash commands/gdd_mnist.sh
timed gdd_i env TEACHER="$TEACHER" RUN_DIR="$OUT/gdd_i" bash commands/gdd_mnist.sh --freeze convs
timed progressive env TEACHER="$TEACHER" RUN="$OUT/progressive" bash commands/progressive_mnist.sh

PD=$OUT/progressive
ROWS=(--row "teacher (Heun)=$TEACHER@sampler=heun,steps=18" --row "teacher (Euler 32)=$TEACHER@sampler=euler,steps=32"
      --row "PD 8 steps=$PD/steps8/exports/student.pt" --row "PD 4 steps=$PD/steps4/exports/student.pt"
      --row "PD 2 steps=$PD/steps2/exports/student.pt" --row "PD 1 step=$PD/steps1/exports/student.pt"
      --row "GDD=$OUT/gdd/exports/generator_ema0.99.pt" --row "GDD-I=$OUT/gdd_i/exports/generator_ema0.99.pt"
      --row "PaGoDA stage 2=$GEN2" --row "PaGoDA stage 3 (2x)=$GEN3")
launch scripts/compare.py --data_dir bundled:mnist --out_dir "$OUT/table" --num_samples "$N" --num_seeds 3 "${ROWS[@]}" "$@"
