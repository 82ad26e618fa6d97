#!/usr/bin/env bash
# Inpainting by latent search through the one-step generator: the observation (image x mask, missing pixels set to
# the mean of the visible ones) is encoded by the teacher's PF-ODE, then z is refined by 40 Adam steps on the
# masked consistency error plus a N(0, sigma_max^2 I) prior term. Compared with the naive fill and, for a generator
# at the teacher's resolution, with the teacher's replacement sampler given the same wall time. Labels predicted
# by the domain classifier see the observation only. Cheap (about a minute for 100 digits on one CPU thread with the
# replacement baseline), so it does not resume.
#   bash commands/inpaint.sh INPUT_DIR_OR_NPZ [--mask center|half|strokes|MASK.png|MASK.npy] [--limit N]
# In:  $1 (folder, ADM .npz or bundled:<name>; default bundled:mnist_test), $TEACHER, $GENERATOR (default: the
#      stage-2 generator, at the teacher's resolution, so the replacement baseline runs too).
# Out: $OUT_DIR/{images/*.png, samples_NxHxWx3.npz, grid.png, scores.json}.
# No preset: the encoder settings must be those of the generator's latents; _apply.sh holds them for all four
# applications, and the task's own flags are set below.
set -euo pipefail
TASK=inpaint
GENERATOR_DEFAULT=runs/mnist/stage2/exports/generator_ema0.99.pt
LIMIT_DEFAULT=500
TASK_FLAGS="--mask ${MASK:-center} --search_steps 40 --search_lr 1.0 --prior_weight 1e-3 --replacement_steps 0"
source "$(dirname "$0")/_apply.sh"
