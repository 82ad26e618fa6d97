#!/usr/bin/env bash
# Progressive distillation (Salimans & Ho 2022, EDM form: pagoda/methods/progressive.py) on the bundled data: the 16 px
# stage-1 teacher's 32-step deterministic Euler sampler halved round by round, 32 -> 16 -> 8 -> 4 -> 2 -> 1 steps.
# In:  $TEACHER.  Out: $RUN/steps<k>/exports/student.pt (+ .json: its k-step grid) for k = 16, 8, 4, 2, 1; sample one
#      with scripts/sample.py --model ... (Euler on its own grid, NFE k; no sampler flags apply).
# Target: PD's claim: the k-step student close to the teacher's 32-step Euler sampler down to a few steps.
# --lr 1e-3: of 1e-4 to 3e-3 it gives the best 4- and 2-step students; a round of 200 updates is a short CPU job.
# Each round is its own run, initialised from (and distilling) the previous round's export. Rerunning resumes: a
# finished round (its export at its last step) is skipped, an interrupted one continues from its last state.
# Env: STEPS_PER_ROUND (the preset's 200), START_STEPS (32: the teacher's Euler steps), ROUNDS (the student step
# counts to train, in order; default every halving of START_STEPS, e.g. ROUNDS=4 trains only 8 -> 4 from
# $RUN/steps8), DATA_DIR (the bundled digits).
# --dry_run prints ONE JSON object: each round's resolved config under its run name ({"steps16": {...}, ...}).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
RUN=${RUN:-runs/mnist/progressive}
START_STEPS=${START_STEPS:-32}

ROUND_FLAGS="--preset mnist16 ${DATA_DIR:+--data_dir $DATA_DIR}"

source "$(dirname "$0")/_rounds.sh"
