#!/usr/bin/env bash
# Encode the bundled digits (16 px) to PF-ODE latents with the stage-1 teacher.
# Unflipped only: a mirrored digit is not a digit (the teacher trains without flips too), and flipped pairs taught
# the stage-2 generator to draw mirrored digits. ImageNet encodes both flips (encode_imagenet64.sh).
# --start_sigma 0.1: each digit is noised at sigma 0.1 (seeded per image) before the climb to sigma 80. Started
# from the clean digit (official), whose background is exactly -1, the latents came out far from the prior the
# generator is sampled with: per-channel mean -14, RMS 56 instead of 80, a top covariance eigenvalue of 8.5 (in units
# of 80^2; a Gaussian sample gives 2.6). With 0.1 they are prior-like (RMS 79.4, top eigenvalue 2.66) and stage 2 on
# 2000 digits went from one-step FID 85.9 (5000 clean-start digits) to 56.0 after 600 steps (300 samples each).
# In:  $TEACHER (a teacher export).  Out: $OUT_DIR/{chunk_*.npy,chunk_*.json,index.npz,manifest.json}.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
OUT_DIR=${OUT_DIR:-runs/mnist/latents}

launch scripts/encode.py --preset mnist16 --teacher "$TEACHER" --out_dir "$OUT_DIR" ${FLIPS:+--flips $FLIPS} \
  ${LIMIT:+--limit $LIMIT} ${ENCODE_STEPS:+--num_steps $ENCODE_STEPS} ${START_SIGMA:+--start_sigma $START_SIGMA} "$@"
