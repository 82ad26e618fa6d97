#!/usr/bin/env bash
# Progressive distillation (Salimans & Ho 2022, EDM form: pagoda/methods/progressive.py) on the bundled data: the 16 px
# stage-1 teacher's 32-step deterministic Euler sampler halved round by round, 32 -> 16 -> 8 -> 4 -> 2 -> 1 steps.
# In:  $TEACHER.  Out: $RUN/steps<k>/exports/student.pt (+ .json: its k-step grid) for k = 16, 8, 4, 2, 1; sample one
#      with scripts/sample.py --model ... (Euler on its own grid, NFE k; no sampler flags apply).
# Target: PD's claim: the k-step student close to the teacher's 32-step Euler sampler down to a few steps.
# --lr 1e-3: of 1e-4 to 3e-3 it gives the best 4- and 2-step students; a round of 200 updates is a short CPU job.
# Each round is its own run, initialised from (and distilling) the previous round's export. Rerunning resumes: a
# finished round (its export at $STEPS_PER_ROUND steps) is skipped, an interrupted one continues from its last state.
# Env: STEPS_PER_ROUND (200), START_STEPS (32: the teacher's Euler steps), ROUNDS (the student step counts to train, in
# order; default every halving of START_STEPS, e.g. ROUNDS=4 trains only 8 -> 4 from $RUN/steps8).
# --dry_run prints ONE JSON object: each round's resolved config under its run name ({"steps16": {...}, ...}).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
RUN=${RUN:-runs/mnist/progressive}
DATA_DIR=${DATA_DIR:-bundled:mnist}
START_STEPS=${START_STEPS:-32}
STEPS_PER_ROUND=${STEPS_PER_ROUND:-200}

DATA_FLAGS="--data_dir $DATA_DIR --image_size 16"
TRAIN_FLAGS="--global_batch_size 32 --lr 1e-3 --lr_schedule linear --grad_clip 1 --total_steps $STEPS_PER_ROUND --save_interval 100 --log_interval 50 --preview_interval $STEPS_PER_ROUND"

source "$(dirname "$0")/_rounds.sh"
