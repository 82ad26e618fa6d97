#!/usr/bin/env bash
# Stage 3 on the bundled data: grow the 16 px stage-2 generator to 32 px (latents stay 16 px; targets are the real
# digits at 32 px), training output_blocks[4:] (the 16 px level and the new 32 px level) and the head.
# In:  $GENERATOR (stage-2 export), $LATENTS.  Out: $RUN_DIR/exports/generator_ema0.99.pt (32 px).
# Target: one-step 32 px samples with a lower FID than the stage-2 samples up-sampled bicubically.
# --refit_head true: the trained 3x3 output head does not commute with up-sampling, so the grown network starts far
# (in PSNR) from its bicubically up-sampled parent; a least-squares re-fit of that head on prior latents starts it
# close, and training ends at a lower FID than without it. The generator lr is high for a fine-tune (1e-3): lower
# rates move too little in the budget. Training only the new 32 px level (--activate_from 6) does worse than
# output_blocks[4:]. The adversarial term reads random_conv features at weight 1: its discriminator stays near
# chance, yet on the full quickstart base the grown samples end closer to the reals than with stage 2's stronger
# discriminator (EfficientNet-lite0 at 64 px), which wins outright and pulls the generator away (docs/growth.md).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
GENERATOR=${GENERATOR:-runs/mnist/stage2/exports/generator_ema0.99.pt}
LATENTS=${LATENTS:-runs/mnist/latents}
RUN_DIR=${RUN_DIR:-runs/mnist/stage3}
# IMAGE_SIZE (32): the grown output size; GROW (2): the growth factor; ACTIVATE_FROM (4): the first trained output
# block (the parent's top level onwards). The chain of commands/growth_chain.sh sets all three.

launch scripts/train.py --method pagoda --preset mnist16to32 --init_from "$GENERATOR" --latent_dir "$LATENTS" \
  --run_dir "$RUN_DIR" ${IMAGE_SIZE:+--image_size $IMAGE_SIZE} ${GROW:+--grow_factor $GROW} \
  ${ACTIVATE_FROM:+--activate_from $ACTIVATE_FROM} ${STEPS:+--total_steps $STEPS} "$@"
