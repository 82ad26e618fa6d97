#!/usr/bin/env bash
# Super-resolve your own low-resolution images: each is encoded by the teacher's PF-ODE (12 Heun steps from
# x + 0.1 n, as the bundled latents were made) and decoded in one call by the grown generator, at its resolution.
# Images of another size are ADM-resized to the teacher's resolution first (logged). Cheap (~40 ms an image on one
# CPU thread for the bundled 16 -> 32 px models), so it does not resume: a rerun redoes everything.
#   bash commands/super_resolve.sh INPUT_DIR_OR_NPZ [--label 3 | --use_data_labels true] [--limit N]
# In:  $1 (a folder of images, an ADM .npz or bundled:<name>; default the held-out bundled:mnist_test digits),
#      $TEACHER, $GENERATOR (the grown generator distilled from that teacher).
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png (inputs, bicubic, outputs, references), scores.json}.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
INPUT=bundled:mnist_test
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INPUT=$1; shift; fi
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
GENERATOR=${GENERATOR:-runs/mnist/stage3/exports/generator_ema0.99.pt}
OUT_DIR=${OUT_DIR:-runs/mnist/super_resolve}

DATA_FLAGS="--task super_resolve --input $INPUT --limit ${LIMIT:-0} --batch_size 100"
MODEL_FLAGS="--teacher $TEACHER --generator $GENERATOR --encoder ${ENCODER:-ode} --num_steps 12 --start_sigma 0.1 --sigma_min 0.002 --sigma_max 80 --rho 7 --seed 0"
OUTPUT_FLAGS="--out_dir $OUT_DIR --num_blocks 5 --grid_images 16"

launch scripts/apply.py $DATA_FLAGS $MODEL_FLAGS $OUTPUT_FLAGS "$@"
