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

launch scripts/train.py --method gdd --preset imagenet64 --init_from "$TEACHER" --data_dir "$IMAGENET_TRAIN" \
  --feature_weights "$DEIT_WEIGHTS,$EFFNET_WEIGHTS" --run_dir "$RUN_DIR" "$@"
