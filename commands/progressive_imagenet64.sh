#!/usr/bin/env bash
# Progressive distillation (Salimans & Ho 2022, EDM form: pagoda/methods/progressive.py) of the released EDM ImageNet-64
# teacher (edm_imagenet64_ema.pt, class-conditional, 1000 classes): its 256-step deterministic Euler sampler on the
# Karras rho-7 grid halved 8 times, 256 -> 128 -> ... -> 2 -> 1 steps. PD's ImageNet-64 settings: batch 2048, Adam lr
# 1e-4 annealed linearly to 0 within each round of 50k updates, gradient clipping 1, no EMA, dropout 0.
# START_STEPS=256, not PD's 1024: those were DDIM steps on a cosine-time grid, while the rho-7 grid spends its steps
# where the ODE bends, so fewer Euler steps make a near-converged teacher (8 rounds instead of 10, 400k updates in
# all). Not measured on ImageNet here; START_STEPS=1024 runs PD's count.
# In:  $TEACHER, $IMAGENET_TRAIN.  Out: $RUN/steps<k>/exports/student.pt for k = 128, ..., 1 (Euler on its own grid,
#      NFE k).  Target: PD on this teacher as reported by Consistency Models: FID 15.39 (1 step), 8.95 (2 steps).
# Each round is its own run, initialised from (and distilling) the previous round's export; rerunning resumes (a
# finished round is skipped). Env: STEPS_PER_ROUND (the preset's 50000), START_STEPS (256), ROUNDS (the student step
# counts to train, in order; default every halving), MICROBATCH (per-rank, 0 = whole; e.g. NPROC=8 MICROBATCH=64).
# --dry_run prints ONE JSON object: each round's resolved config under its run name ({"steps128": {...}, ...}).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-https://openaipublic.blob.core.windows.net/consistency/edm_imagenet64_ema.pt}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
RUN=${RUN:-runs/imagenet64/progressive}
START_STEPS=${START_STEPS:-256}

ROUND_FLAGS="--preset imagenet64 --data_dir $IMAGENET_TRAIN ${MICROBATCH:+--microbatch $MICROBATCH}"

source "$(dirname "$0")/_rounds.sh"
