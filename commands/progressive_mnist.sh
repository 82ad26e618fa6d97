#!/usr/bin/env bash
# Progressive distillation (Salimans & Ho 2022, EDM form: pagoda/methods/progressive.py) on the bundled data: the 16 px
# stage-1 teacher's 32-step deterministic Euler sampler halved round by round, 32 -> 16 -> 8 -> 4 -> 2 -> 1 steps.
# In:  $TEACHER.  Out: $RUN/steps<k>/exports/student.pt (+ .json: its k-step grid) for k = 16, 8, 4, 2, 1; sample one
#      with scripts/sample.py --model ... (Euler on its own grid, NFE k; no sampler flags apply).
# Target: PD's claim: the k-step student close to the teacher's 32-step Euler sampler down to a few steps.
# Measured on the quickstart's teacher (2-core CPU, bf16): a round of 200 updates takes ~31 s (0.14 s an update), all
# five 2.6 min. scripts/compare.py, domain FD, 1000 samples x 3 seeds (spread +- 1.8; real-vs-real floor 7.70):
# teacher Euler 32 steps 13.36 | PD 16 steps 14.12, 8: 15.25, 4: 16.73, 2: 17.53, 1: 22.41 | the teacher's own Euler
# at 16 / 8 / 4 / 1 steps 14.02 / 19.41 / 47.64 / 219.38. --lr, FD of the 4 / 2 / 1-step students on the same seeds:
# 1e-4: 18.09 / 19.41 / 27.33, 3e-4: 16.95 / 18.05 / 23.71, 1e-3: 16.73 / 17.53 / 22.41, 3e-3: 17.47 / 18.38 / 21.59.
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
