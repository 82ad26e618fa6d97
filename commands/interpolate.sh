#!/usr/bin/env bash
# Interpolation: pairs of images (2k, 2k+1) are encoded by the teacher's PF-ODE and the spherical path between
# their latents is decoded in one call per point (the label of the nearer end); one PNG strip per pair in strips/.
# Scores the rate of outputs the domain classifier gives confidence >= 0.9 against the same rate for the real images.
# Cheap (seconds for hundreds of bundled digits on one CPU thread), so it does not resume: a rerun redoes it.
#   bash commands/interpolate.sh INPUT_DIR_OR_NPZ [--label 3 | --use_data_labels true] [--limit N]
# In:  $1 (folder, ADM .npz or bundled:<name>; default bundled:mnist_test), $TEACHER, $GENERATOR.
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png, scores.json, strips/pair_*.png}.
# No preset: the encoder settings must be those of the generator's latents; _apply.sh holds them for all four
# applications, and the task's own flags are set below.
set -euo pipefail
TASK=interpolate
GENERATOR_DEFAULT=runs/mnist/stage3/exports/generator_ema0.99.pt
LIMIT_DEFAULT=16
TASK_FLAGS="--num_pairs 8 --num_interp 7"
source "$(dirname "$0")/_apply.sh"
