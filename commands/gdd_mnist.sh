#!/usr/bin/env bash
# GDD on the bundled data (Zheng & Yang 2024): the stage-1 teacher's own denoiser at sigma 80, fine-tuned by the
# projected GAN alone (no reconstruction, no latents: real digits only), the discriminator that works on the
# digits (EfficientNet-lite0 features at 64 px, GroupNorm heads at a quarter width, as stage2_mnist.sh), the
# non-saturating loss, lazy R1 (gamma 1e-4 every 16 D steps), Adam betas (0, 0.99), no DiffAugment.
# GDD-I: pass `--freeze convs` (and another RUN_DIR): the residual blocks' 3x3 convs and the attention output
# projections stay the teacher's.
# In:  $TEACHER.  Out: $RUN_DIR/exports/generator_ema0.99.pt.  Budget: 500 steps of one G and one D update each on
# batches of 32, PaGoDA stage 2's 1,000 alternating steps (stage2_mnist.sh).  Target: the teacher's domain FD.
# G's learning rate 1e-5 (LR_G) scored best of 3e-6 to 1e-3, with or without DiffAugment (not GDD's setting). Every
# setting collapses towards one digit per class (recall far below the teacher's): GAN-only fine-tuning has nothing
# that maps each z to its own image.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
RUN_DIR=${RUN_DIR:-runs/mnist/gdd}

launch scripts/train.py --method gdd --preset mnist16 --init_from "$TEACHER" --run_dir "$RUN_DIR" \
  ${LR_G:+--lr_generator $LR_G} ${STEPS:+--total_steps $STEPS} "$@"
