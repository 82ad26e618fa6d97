#!/usr/bin/env bash
# Stage 3 on the bundled data: grow the 16 px stage-2 generator to 32 px (latents stay 16 px; targets are the real
# digits at 32 px), training output_blocks[4:] (the 16 px level and the new 32 px level) and the head.
# In:  $GENERATOR (stage-2 export), $LATENTS.  Out: $RUN_DIR/exports/generator_ema0.99.pt (32 px).
# Target: one-step 32 px samples with a lower FID than the stage-2 samples up-sampled bicubically.
# --refit_head true: the trained 3x3 output head does not commute with up-sampling, so the grown network started
# 10 dB (PSNR) from its bicubically up-sampled parent; a least-squares re-fit of that head on prior latents starts it
# at 28.5 dB from it (21.9 dB against the real digits, bicubic 23.1). From the runs/quickstart3 stage-2 generator,
# 1000 steps: FID 73.3 with the re-fit, 77.4 without (bicubic 92.6); after 400 steps it is 93.2, at the bicubic level.
# The generator lr is high for a fine-tune (1e-3); without the re-fit, 200 steps gave 21.1 dB vs 15.8 at 2e-4.
# Discriminator heads at a quarter width, as in stage 2. Steps, measured from one stage-2 generator (300 samples,
# FID at 32 px; its bicubic 2x scores 137.5): 300 steps 165.4 (PSNR 25.3 dB) | 600 steps 136.6 (28.7 dB). Training
# only the new 32 px level (--activate_from 6) is worse: 208.9 after 300 steps.
# The adversarial term is stage 2's (issue 32, docs/growth.md): EfficientNet-lite0 features of the 32 px images
# resized to 64 px, GroupNorm heads, --discriminator_weight 6. Over random_conv its D went from inert (batch accuracy
# 0.55 over the second half, the adaptive weight at its clamp in 40% of G steps) to 0.995 (clamp only while D
# warms up), and the domain FD after 150 steps from 272.3 +- 3.8 to 129.3 +- 6.0 (bicubic 2x 211.3 +- 4.7). A step costs
# 8% more FLOPs (38.2 vs 35.3 GFLOP), so 850 steps instead of 1000 keep stage 3's budget.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
GENERATOR=${GENERATOR:-runs/mnist/stage2/exports/generator_ema0.99.pt}
LATENTS=${LATENTS:-runs/mnist/latents}
RUN_DIR=${RUN_DIR:-runs/mnist/stage3}
# IMAGE_SIZE (32): the grown output size; GROW (2): the growth factor; ACTIVATE_FROM (4): the first trained output
# block (the parent's top level onwards). The chain of commands/growth_chain.sh sets all three.

DATA_FLAGS="--latent_dir $LATENTS --image_size ${IMAGE_SIZE:-32}"
MODEL_FLAGS="--init_from $GENERATOR --grow_factor ${GROW:-2} --activate_from ${ACTIVATE_FROM:-4} --refit_head true"
LOSS_FLAGS="--recon_loss pseudo_huber --feature_networks tf_efficientnet_lite0 --feature_resolution 64 --d_norm group --discriminator_weight 6 --adaptive_weight true --gan_loss hinge --d_channel_scale 0.25"
TRAIN_FLAGS="--global_batch_size 32 --lr_generator 1e-3 --lr_discriminator 1e-3 --ema_rates 0.99 --total_steps ${STEPS:-850} --save_interval 200 --log_interval 50 --preview_interval 200 --monitor_interval 100 --monitor_samples 200"

launch scripts/train.py --method pagoda --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
