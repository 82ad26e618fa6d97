#!/usr/bin/env bash
# Super-resolve your own low-resolution images: each is encoded by the teacher's PF-ODE (12 Heun steps from
# x + 0.1 n, as the bundled latents were made) and decoded in one call by the grown generator, at its resolution.
# Images of another size are ADM-resized to the teacher's resolution first (logged). Cheap (one short ODE encoding
# and one generator call an image), so it does not resume: a rerun redoes everything.
#   bash commands/super_resolve.sh INPUT_DIR_OR_NPZ [--label 3 | --use_data_labels true] [--limit N]
# In:  $1 (a folder of images, an ADM .npz or bundled:<name>; default the held-out bundled:mnist_test digits),
#      $TEACHER, $GENERATOR (the grown generator distilled from that teacher).
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png (inputs, bicubic, outputs, references), scores.json}.
# No preset: the encoder settings must be those of the generator's latents; _apply.sh holds them for all four
# applications, and the task's own flags are set below.
set -euo pipefail
TASK=super_resolve
GENERATOR_DEFAULT=runs/mnist/stage3/exports/generator_ema0.99.pt
LIMIT_DEFAULT=0
TASK_FLAGS=""
source "$(dirname "$0")/_apply.sh"
