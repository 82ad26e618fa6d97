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

launch scripts/train.py --method diffusion --preset imagenet64 --data_dir "$IMAGENET_TRAIN" --run_dir "$RUN_DIR" "$@"
