#!/usr/bin/env bash
# Class transfer: encode each image with its label (PF-ODE of the teacher), decode the same latent in one call with
# another label (--target_label N for all, else a seeded random other class per image).
# Scores the rate of outputs the domain classifier gives confidence >= 0.9 against the same rate for the real images.
# Cheap (seconds for hundreds of bundled digits on one CPU thread), so it does not resume: a rerun redoes it.
#   bash commands/transfer.sh INPUT_DIR_OR_NPZ [--label 3 | --use_data_labels true] [--limit N]
# In:  $1 (folder, ADM .npz or bundled:<name>; default bundled:mnist_test), $TEACHER, $GENERATOR.
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png, scores.json}.
# No preset: the encoder settings must be those of the generator's latents; _apply.sh holds them for all four
# applications, and the task's own flags are set below.
set -euo pipefail
TASK=transfer
GENERATOR_DEFAULT=runs/mnist/stage3/exports/generator_ema0.99.pt
LIMIT_DEFAULT=1000
TASK_FLAGS="--target_label -1"
source "$(dirname "$0")/_apply.sh"
