#!/usr/bin/env bash
# Stage 2 on ImageNet 64x64 (PaGoDA 64->64): G = copy of the EDM teacher, reconstruction (DeiT-B + EfficientNet-lite0
# features) + projected GAN with w_D 0.2 and the adaptive weight; RAdam G 8e-6 / D 2e-3; EMA 0.999; batch 96.
# The official recipe passes --training_mode=ours and trains nothing; this one trains.
# In:  $TEACHER, $LATENTS, $IMAGENET_TRAIN, timm weights for the two backbones ($DEIT_WEIGHTS, $EFFNET_WEIGHTS,
#      or the timm/HF cache).  Out: $RUN_DIR/exports/generator_ema0.999.pt.  Target: FID 1.21 (paper, NFE 1).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-https://openaipublic.blob.core.windows.net/consistency/edm_imagenet64_ema.pt}
LATENTS=${LATENTS:-runs/imagenet64/latents}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
DEIT_WEIGHTS=${DEIT_WEIGHTS:-}
EFFNET_WEIGHTS=${EFFNET_WEIGHTS:-}
RUN_DIR=${RUN_DIR:-runs/imagenet64/stage2}

DATA_FLAGS="--latent_dir $LATENTS --data_dir $IMAGENET_TRAIN --image_size 64 --num_workers 8 --cache_images false"
MODEL_FLAGS="--init_from $TEACHER"
LOSS_FLAGS="--recon_loss feature --feature_networks deit_base_distilled_patch16_224,tf_efficientnet_lite0 --feature_weights $DEIT_WEIGHTS,$EFFNET_WEIGHTS --discriminator_weight 0.2 --adaptive_weight true --separate_update false --gan_loss hinge"
TRAIN_FLAGS="--global_batch_size 96 --lr_generator 8e-6 --lr_discriminator 2e-3 --ema_rates 0.999 --precision bf16 --total_steps 600000 --save_interval 10000 --preview_interval 10000"

launch scripts/train.py --method pagoda --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
