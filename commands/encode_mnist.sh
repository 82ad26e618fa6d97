#!/usr/bin/env bash
# Encode the bundled digits (16 px) to PF-ODE latents with the stage-1 teacher.
# Unflipped only: a mirrored digit is not a digit (the teacher trains without flips too), and flipped pairs taught
# the stage-2 generator to draw mirrored digits. ImageNet encodes both flips (encode_imagenet64.sh).
# --start_sigma 0.1: each digit is noised at sigma 0.1 (seeded per image) before the climb to sigma 80. Started
# from the clean digit (official), whose background is exactly -1, the latents come out far from the prior the
# generator is sampled with (off-centre, too small, one dominant covariance direction); from sigma 0.1 they are
# prior-like, and stage 2 reaches a much lower one-step FID on them.
# In:  $TEACHER (a teacher export).  Out: $OUT_DIR/{chunk_*.npy,chunk_*.json,index.npz,manifest.json}.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
OUT_DIR=${OUT_DIR:-runs/mnist/latents}

launch scripts/encode.py --preset mnist16 --teacher "$TEACHER" --out_dir "$OUT_DIR" ${FLIPS:+--flips $FLIPS} \
  ${LIMIT:+--limit $LIMIT} ${ENCODE_STEPS:+--num_steps $ENCODE_STEPS} ${START_SIGMA:+--start_sigma $START_SIGMA} "$@"
