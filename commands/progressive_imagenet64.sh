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
# finished round is skipped). Env: STEPS_PER_ROUND (50000), START_STEPS (256), ROUNDS (the student step counts to
# train, in order; default every halving), MICROBATCH (per-rank, 0 = whole; e.g. NPROC=8 MICROBATCH=64).
# --dry_run prints ONE JSON object: each round's resolved config under its run name ({"steps128": {...}, ...}).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-https://openaipublic.blob.core.windows.net/consistency/edm_imagenet64_ema.pt}
IMAGENET_TRAIN=${IMAGENET_TRAIN:-/path/to/imagenet/train}
RUN=${RUN:-runs/imagenet64/progressive}
START_STEPS=${START_STEPS:-256}
STEPS_PER_ROUND=${STEPS_PER_ROUND:-50000}

DATA_FLAGS="--data_dir $IMAGENET_TRAIN --image_size 64 --random_flip true --num_workers 8 --cache_images false"
TRAIN_FLAGS="--global_batch_size 2048 --microbatch ${MICROBATCH:-0} --lr 1e-4 --lr_schedule linear --grad_clip 1 --precision bf16 --total_steps $STEPS_PER_ROUND --save_interval 5000 --log_interval 100 --preview_interval 5000"

source "$(dirname "$0")/_rounds.sh"
