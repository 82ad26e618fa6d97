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

launch scripts/train.py --method pagoda --preset imagenet64to256 --init_from "$GENERATOR" --latent_dir "$LATENTS" \
  --data_dir "$IMAGENET_TRAIN" --feature_weights "$DEIT_WEIGHTS,$EFFNET_WEIGHTS" --run_dir "$RUN_DIR" "$@"
