#!/usr/bin/env bash
# Stage 3 on ImageNet: grow the 256 px generator to 512 px (input latents stay 64 px), training output_blocks[9:] and
# the head (official activate_from 9); w_D 1.0, separate update, adaptive weight false; batch 512.
# The official "512" recipe trains at 256; this one appends a real 512 level. It keeps 192 channels (so growth stays
# function-preserving and the output head is reused) and uses gradient checkpointing; by our estimate ~1.3 GB of
# activations per 512 px image in bf16, i.e. a per-GPU batch of about 32 on an 80 GB GPU (not measured on a GPU yet).
# As the official 512 setting, a reconstruction discriminator (weight 0.5) separates G(z_data) from reals.
# In:  $GENERATOR (the 256 px export), $LATENTS, $IMAGENET_TRAIN, backbone weights.  Out: $RUN_DIR/exports.
# Target: FID 1.80 (paper, NFE 1).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
GENERATOR=${GENERATOR:-runs/imagenet64/stage3_256/exports/generator_ema0.999.pt}
LATENTS=${LATENTS:-runs/imagenet64/latents}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
DEIT_WEIGHTS=${DEIT_WEIGHTS:-}
EFFNET_WEIGHTS=${EFFNET_WEIGHTS:-}
RUN_DIR=${RUN_DIR:-runs/imagenet64/stage3_512}

launch scripts/train.py --method pagoda --preset imagenet64to512 --init_from "$GENERATOR" --latent_dir "$LATENTS" \
  --data_dir "$IMAGENET_TRAIN" --feature_weights "$DEIT_WEIGHTS,$EFFNET_WEIGHTS" --run_dir "$RUN_DIR" "$@"
