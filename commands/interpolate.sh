#!/usr/bin/env bash
# Interpolation: pairs of images (2k, 2k+1) are encoded by the teacher's PF-ODE and the spherical path between
# their latents is decoded in one call per point (the label of the nearer end); one PNG strip per pair in strips/.
# Scores the rate of outputs the domain classifier gives confidence >= 0.9 against the same rate for the real images.
# Cheap (seconds for hundreds of bundled digits on one CPU thread), so it does not resume: a rerun redoes it.
#   bash commands/interpolate.sh INPUT_DIR_OR_NPZ [--label 3 | --use_data_labels true] [--limit N]
# In:  $1 (folder, ADM .npz or bundled:<name>; default bundled:mnist_test), $TEACHER, $GENERATOR.
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png, scores.json, strips/pair_*.png}.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
INPUT=bundled:mnist_test
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INPUT=$1; shift; fi
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
GENERATOR=${GENERATOR:-runs/mnist/stage3/exports/generator_ema0.99.pt}
OUT_DIR=${OUT_DIR:-runs/mnist/interpolate}

DATA_FLAGS="--task interpolate --input $INPUT --limit ${LIMIT:-16} --batch_size 100"
MODEL_FLAGS="--teacher $TEACHER --generator $GENERATOR --encoder ${ENCODER:-ode} --num_steps 12 --start_sigma 0.1 --sigma_min 0.002 --sigma_max 80 --rho 7 --seed 0"
TASK_FLAGS="--num_pairs 8 --num_interp 7"
OUTPUT_FLAGS="--out_dir $OUT_DIR --num_blocks 5 --grid_images 16"

launch scripts/apply.py $DATA_FLAGS $MODEL_FLAGS $TASK_FLAGS $OUTPUT_FLAGS "$@"
