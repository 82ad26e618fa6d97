#!/usr/bin/env bash
# Stage 3 on ImageNet: grow the 64 px generator to 128 px (input latents stay 64 px), training output_blocks[9:] and
# the head (official activate_from 9); w_D 1.0, joint update, adaptive weight true; batch 256.
# The official 64->128 recipe (joint update, adaptive weight), unchanged in substance.
# In:  $GENERATOR (the 64 px export), $LATENTS, $IMAGENET_TRAIN, backbone weights.  Out: $RUN_DIR/exports.
# Target: FID 1.48 (paper, NFE 1).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
GENERATOR=${GENERATOR:-runs/imagenet64/stage2/exports/generator_ema0.999.pt}
LATENTS=${LATENTS:-runs/imagenet64/latents}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
DEIT_WEIGHTS=${DEIT_WEIGHTS:-}
EFFNET_WEIGHTS=${EFFNET_WEIGHTS:-}
RUN_DIR=${RUN_DIR:-runs/imagenet64/stage3_128}

DATA_FLAGS="--latent_dir $LATENTS --data_dir $IMAGENET_TRAIN --image_size 128 --num_workers 8 --cache_images false"
MODEL_FLAGS="--init_from $GENERATOR --grow_factor 2 --activate_from 9"
LOSS_FLAGS="--recon_loss feature --feature_networks deit_base_distilled_patch16_224,tf_efficientnet_lite0 --feature_weights $DEIT_WEIGHTS,$EFFNET_WEIGHTS --discriminator_weight 1.0 --adaptive_weight true --separate_update false --gan_loss hinge"
TRAIN_FLAGS="--global_batch_size 256 --lr_generator 8e-6 --lr_discriminator 2e-3 --ema_rates 0.999 --precision bf16 --total_steps 600000 --save_interval 10000 --preview_interval 10000"

launch scripts/train.py --method pagoda --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
