#!/usr/bin/env bash
# Stage 1 on ImageNet 64x64: EDM's class-conditional ImageNet-64 teacher on the ADM architecture (295.9M params),
# trained with EDM's settings (Karras et al. 2022, table 7). Most users load the released teacher instead
# (edm_imagenet64_ema.pt, from the openai/consistency_models release): every later recipe takes it as TEACHER.
# In:  $IMAGENET_TRAIN (ILSVRC-2012 train, class folders).  Out: $RUN_DIR/exports/denoiser_ema0.99994.pt.
# Target: EDM ImageNet-64 FID 2.44 (deterministic) / 1.36 (stochastic, 511 NFE) as reported by EDM.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
RUN_DIR=${RUN_DIR:-runs/imagenet64/teacher}

DATA_FLAGS="--data_dir $IMAGENET_TRAIN --image_size 64 --random_flip true --num_workers 8 --cache_images false"
MODEL_FLAGS="--model_channels 192 --channel_mult 1,2,3,4 --num_res_blocks 3 --attention_resolutions 2,4,8 --num_head_channels 64 --dropout 0.1"
LOSS_FLAGS="--P_mean -1.2 --P_std 1.2 --sigma_data 0.5"
TRAIN_FLAGS="--global_batch_size 4096 --lr 2e-4 --warmup_steps 2441 --ema_rates 0.99994 --precision fp16 --total_steps 610352 --save_interval 5000 --preview_interval 5000"

launch scripts/train.py --method diffusion --run_dir "$RUN_DIR" $DATA_FLAGS $MODEL_FLAGS $LOSS_FLAGS $TRAIN_FLAGS "$@"
