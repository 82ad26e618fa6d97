#!/usr/bin/env bash
# Stage 3 on ImageNet: grow the 128 px generator to 256 px (input latents stay 64 px), training output_blocks[9:] and
# the head (official activate_from 9); w_D 1.0, separate update, adaptive weight false; batch 360.
# Loads the 128 px export (the official recipe's --pretrained_output_size 256 cannot load it).
# In:  $GENERATOR (the 128 px export), $LATENTS, $IMAGENET_TRAIN, backbone weights.  Out: $RUN_DIR/exports.
# Target: FID 1.56 (paper, NFE 1).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
GENERATOR=${GENERATOR:-runs/imagenet64/stage3_128/exports/generator_ema0.999.pt}
LATENTS=${LATENTS:-runs/imagenet64/latents}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
DEIT_WEIGHTS=${DEIT_WEIGHTS:-}
EFFNET_WEIGHTS=${EFFNET_WEIGHTS:-}
RUN_DIR=${RUN_DIR:-runs/imagenet64/stage3_256}

DATA_FLAGS="--latent_dir $LATENTS --data_dir $IMAGENET_TRAIN --image_size 256 --num_workers 8 --cache_images false"
MODEL_FLAGS="--init_from $GENERATOR --grow_factor 2 --activate_from 9"
LOSS_FLAGS="--recon_loss feature --feature_networks deit_base_distilled_patch16_224,tf_efficientnet_lite0 --feature_weights $DEIT_WEIGHTS,$EFFNET_WEIGHTS --discriminator_weight 1.0 --adaptive_weight false --separate_update true --gan_loss hinge"
TRAIN_FLAGS="--global_batch_size 360 --lr_generator 8e-6 --lr_discriminator 2e-3 --ema_rates 0.999 --precision bf16 --total_steps 600000 --save_interval 10000 --preview_interval 10000"

launch scripts/train.py --method pagoda --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
