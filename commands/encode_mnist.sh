#!/usr/bin/env bash
# Encode the bundled digits (16 px) to PF-ODE latents with the stage-1 teacher.
# Unflipped only: a mirrored digit is not a digit (the teacher trains without flips too), and flipped pairs taught
# the stage-2 generator to draw mirrored digits. ImageNet encodes both flips (encode_imagenet64.sh).
# In:  $TEACHER (a teacher export).  Out: $OUT_DIR/{chunk_*.npy,chunk_*.json,index.npz,manifest.json}.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
OUT_DIR=${OUT_DIR:-runs/mnist/latents}

DATA_FLAGS="--data_dir bundled:mnist --flips ${FLIPS:-0} --limit ${LIMIT:-0}"
SOLVER_FLAGS="--teacher $TEACHER --num_steps ${ENCODE_STEPS:-18} --sigma_min 0.002 --sigma_max 80 --rho 7 --clamp_denoised true"
OUTPUT_FLAGS="--out_dir $OUT_DIR --storage fp16 --chunk_size 500 --batch_size 250 --verify 64"

launch scripts/encode.py $DATA_FLAGS $SOLVER_FLAGS $OUTPUT_FLAGS "$@"
