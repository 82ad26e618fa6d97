#!/usr/bin/env bash
# The method table on the bundled digits: the teacher at several sampler budgets, the one-step generators and the
# bicubic baseline, all on the same seeds, balanced labels and held-out reals, scored in the digits' own classifier
# (pagoda/domain.py: trained once on the 60,000 training digits, cached) as FD, KID, precision/recall and class
# fidelity, each mean +- std over 3 seeds beside the real-vs-real floor (5,000 of the 10,000 test digits are the
# reference, the other 5,000 the floor). Other methods add a row: EXTRA_ROWS=("--row" "GDD=path/to/export.pt").
# In:  $RUN (a quickstart run directory: teacher/, stage2/, stage3/).  Out: $OUT_DIR/compare.{md,json,png}.
# Rerunning resumes: samples are kept under $OUT_DIR/samples and only missing ones are made.
# No preset: scripts/compare.py's settings here are the table itself (its rows, seeds and sample counts).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
RUN=${RUN:-runs/quickstart}
OUT_DIR=${OUT_DIR:-$RUN/compare_table}
TEACHER=${TEACHER:-$RUN/teacher/exports/denoiser_ema0.999.pt}
GEN2=${GEN2:-$RUN/stage2/exports/generator_ema0.99.pt}
GEN3=${GEN3:-$RUN/stage3/exports/generator_ema0.99.pt}
N=${N:-5000}  # samples per seed of every row (the teacher's NFE-35 row dominates the time)

DATA_FLAGS="--data_dir bundled:mnist --split_seed 0"
PROTOCOL_FLAGS="--num_samples $N --num_seeds 3 --seed 0 --kid_subsets 100 --kid_subset_size 1000"
OUTPUT_FLAGS="--out_dir $OUT_DIR --batch_size 250 --chunk_size 500 --gap_row stage_2+bicubic"
ROWS=(--row "teacher_heun_35=$TEACHER@sampler=heun,steps=18" --row "teacher_heun_11=$TEACHER@sampler=heun,steps=6"
      --row "teacher_heun_5=$TEACHER@sampler=heun,steps=3" --row "teacher_euler_1=$TEACHER@sampler=euler,steps=1"
      --row "stage_2=$GEN2" --row "stage_3=$GEN3" --row "stage_2+bicubic=$GEN2@upsample=32")

launch scripts/compare.py $DATA_FLAGS $PROTOCOL_FLAGS $OUTPUT_FLAGS "${ROWS[@]}" ${EXTRA_ROWS[@]+"${EXTRA_ROWS[@]}"} "$@"
