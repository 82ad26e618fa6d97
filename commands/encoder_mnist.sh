#!/usr/bin/env bash
# The amortised one-step encoder E(x, y) -> z on the bundled data (pagoda/methods/encoder.py): the teacher's UNet,
# initialised from its weights, regresses the stored ODE latents z / sigma_max of the 2000 encoded digits (MSE + L1)
# from the image the ODE started from, x + 0.1 n with the latent's own n, at sigma 0.1 (--encoder_sigma is the level
# for clean inputs: --noised_input false, or latents encoded with start_sigma 0). Rerunning the same command
# resumes from the latest state in $RUN_DIR. More pairs help more than more steps: on 2000 pairs the encoder starts
# to overfit soon after 2000 steps (scripts/encoder_error.py scores it on held-out digits).
# In:  $RUN with teacher/exports/denoiser_ema0.999.pt and latents/ (the quickstart's layout; $LATENTS another folder
#      of that teacher's latents).
# Out: $RUN_DIR (default $RUN/encoder)/exports/encoder_ema0.99.pt (+ .json: the teacher's hash, the latents' solver
#      settings), used by the applications with --encoder amortised --encoder_path FILE (ENCODER=amortised
#      ENCODER_PATH=FILE in the application recipes).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
RUN=${RUN:-runs/mnist}
RUN_DIR=${RUN_DIR:-$RUN/encoder}
LATENTS=${LATENTS:-$RUN/latents}  # more pairs help: LIMIT=10000 bash commands/encode_mnist.sh (~7 min) to a folder

launch scripts/train.py --method encoder --preset mnist16 --init_from "$RUN/teacher/exports/denoiser_ema0.999.pt" \
  --latent_dir "$LATENTS" --run_dir "$RUN_DIR" ${STEPS:+--total_steps $STEPS} "$@"
