#!/usr/bin/env bash
# GDD on ImageNet 64x64 from the released EDM teacher (GDD's train.sh for ImageNet-64): G = D(80 z; 80), GAN only,
# DeiT-B + EfficientNet-lite0 features at 224 px, non-saturating loss, lazy R1 gamma 1e-4 every 16, Adam betas
# (0, 0.99), lr G 8e-6 / D 4e-5 (D's with the lazy-R1 correction), batch 512, 10 Mimg (19,532 steps), no DiffAugment.
# GDD-I: `--freeze convs` (GDD's best ImageNet-64 result, FID 1.16).
# In:  $TEACHER (edm_imagenet64_ema.pt), $IMAGENET_TRAIN, timm weights ($DEIT_WEIGHTS, $EFFNET_WEIGHTS, or the
#      timm/HF cache).  Out: $RUN_DIR/exports/generator_ema0.9999.pt.  Target: FID 1.42 (GDD), 1.16 (GDD-I).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-https://openaipublic.blob.core.windows.net/consistency/edm_imagenet64_ema.pt}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
DEIT_WEIGHTS=${DEIT_WEIGHTS:-}
EFFNET_WEIGHTS=${EFFNET_WEIGHTS:-}
RUN_DIR=${RUN_DIR:-runs/imagenet64/gdd}

DATA_FLAGS="--data_dir $IMAGENET_TRAIN --image_size 64 --random_flip true --num_workers 8 --cache_images false"
MODEL_FLAGS="--init_from $TEACHER"
LOSS_FLAGS="--feature_networks deit_base_distilled_patch16_224,tf_efficientnet_lite0 --feature_weights $DEIT_WEIGHTS,$EFFNET_WEIGHTS --gan_loss nonsaturating --r1_gamma 1e-4 --r1_interval 16 --diffaug false"
TRAIN_FLAGS="--global_batch_size 512 --lr_generator 8e-6 --lr_discriminator 4e-5 --adam_beta1 0 --adam_beta2 0.99 --lazy_r1_adam true --ema_rates 0.9999 --precision bf16 --total_steps 19532 --save_interval 1000 --preview_interval 1000"

launch scripts/train.py --method gdd --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
