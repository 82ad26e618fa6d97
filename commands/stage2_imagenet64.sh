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

launch scripts/train.py --method pagoda --preset imagenet64 --init_from "$TEACHER" --latent_dir "$LATENTS" \
  --data_dir "$IMAGENET_TRAIN" --feature_weights "$DEIT_WEIGHTS,$EFFNET_WEIGHTS" --run_dir "$RUN_DIR" "$@"
