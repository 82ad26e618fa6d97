#!/usr/bin/env bash
# The amortised one-step encoder E(x, y) -> z on the bundled data (pagoda/methods/encoder.py): the teacher's UNet,
# initialised from its weights, regresses the stored ODE latents z / sigma_max of the 2000 encoded digits (MSE + L1)
# from the image the ODE started from, x + 0.1 n with the latent's own n, at sigma 0.1 (--encoder_sigma is the level
# for clean inputs: --noised_input false, or latents encoded with start_sigma 0). Rerunning the same command
# resumes from the latest state in $RUN_DIR. Measured on 500 held-out digits (scripts/encoder_error.py, qs18_final):
# 2000 pairs, 2000 steps (~5 min): latent error 0.107 relative, G(E) vs G(z_ode) 24.9 dB; 10000 pairs, 4000 steps:
# 0.087 and 27.6 dB; 8000 steps: 0.079 and 28.0 dB (6000 steps on the 2000 pairs: 0.100 and 24.6 dB, it overfits).
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
