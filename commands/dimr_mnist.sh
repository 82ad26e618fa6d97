#!/usr/bin/env bash
# No preset: it runs the digits' stage recipes, each of which passes its preset (mnist16, mnist16_dimr).
# DiMR against the ADM UNet on the bundled digits (issue 34), every training run timed:
#   1. teachers at 16 px: the UNet (mnist16), DiMR P16-2R (mnist16_dimr) and DiMR's two ablations, the multi-scale
#      loss off and the TD norms replaced by the UNet's scale-shift time embedding. Each DiMR teacher trains for
#      STEPS_DIMR steps, the steps that take the UNet's STEPS_UNET on this machine: a DiMR step costs 2.24x a UNet
#      step on the 2-core CPU (0.96 against 0.43 s), so 180 for 400 (docs/dimr.md); measure both on yours. One
#      method table: Heun 18 and 6 steps (35 and 11 NFE), the 16 px floor; $RUN/teachers/cost.md: parameters, MACs
#      per forward and training seconds of each.
#   2. PaGoDA on the UNet and the DiMR teacher, the same budgets: latents, stage 2 (the generator initialised from
#      its teacher), one growth step to 32 px (the UNet: new up-sampling levels; DiMR: a ConvNeXt branch fed by the
#      cascade of the finest branch, pagoda.dimr.grow). One method table at 32 px with stage 2 + bicubic and floors.
# Usage: [RUN=runs/mnist/dimr] [STEPS_UNET=400] [STEPS_DIMR=...] [STAGE_STEPS=200] [N=200] bash commands/dimr_mnist.sh
#        [--fast]   (the defaults fit about 35 minutes of a 2-core CPU; the quickstart's budgets are 1000 / 1000 / 850)
# --fast: tiny budgets, the same code path. Rerunning resumes every run; timings add up over reruns.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
RUN=${RUN:-runs/mnist/dimr}
if [ "${1:-}" = --fast ]; then
  shift
  STEPS_UNET=4 STEPS_DIMR=4 STAGE_STEPS=3 ENCODE_LIMIT=64 ENCODE_STEPS=4 N=16 HEUN=4 FEW_HEUN=2
else
  STEPS_UNET=${STEPS_UNET:-400} STEPS_DIMR=${STEPS_DIMR:-180} STAGE_STEPS=${STAGE_STEPS:-200}
  ENCODE_LIMIT=${ENCODE_LIMIT:-600} ENCODE_STEPS=${ENCODE_STEPS:-12} N=${N:-200} HEUN=18 FEW_HEUN=6
fi
TIMINGS=$RUN/timings
source "$(dirname "$0")/_timed.sh"

teacher() {  # teacher NAME PRESET STEPS [flags...]
  local name=$1 preset=$2 steps=$3; shift 3
  timed "teacher_$name" env PRESET=$preset RUN_DIR=$RUN/teachers/$name STEPS=$steps \
    bash commands/stage1_teacher_mnist.sh "$@"
}
teacher unet mnist16 "$STEPS_UNET" "$@"
teacher dimr mnist16_dimr "$STEPS_DIMR" "$@"
teacher dimr_single_scale mnist16_dimr "$STEPS_DIMR" --multiscale_loss false "$@"
teacher dimr_scale_shift mnist16_dimr "$STEPS_DIMR" --dimr_time scale_shift "$@"

T=$RUN/teachers
rows=()
for name in unet dimr dimr_single_scale dimr_scale_shift; do
  export_path=$T/$name/exports/denoiser_ema0.999.pt
  rows+=(--row "$name (Heun $((2 * HEUN - 1)) NFE)=$export_path@sampler=heun,steps=$HEUN"
         --row "$name (Heun $((2 * FEW_HEUN - 1)) NFE)=$export_path@sampler=heun,steps=$FEW_HEUN")
done
"$PYTHON" scripts/compare.py --data_dir bundled:mnist --out_dir "$T/compare" --num_samples $N --num_seeds 3 "${rows[@]}"
"$PYTHON" scripts/model_cost.py --models "$(printf "$T/%s/exports/denoiser_ema0.999.pt," unet dimr \
  dimr_single_scale dimr_scale_shift | sed 's/,$//')" --out "$T/cost.json" > "$T/cost.md"
for name in unet dimr dimr_single_scale dimr_scale_shift; do
  echo "- $name: $(cat "$TIMINGS/teacher_$name.sec") s of training" >> "$T/cost.md"
done
cat "$T/cost.md"

pipeline() {  # pipeline NAME [stage-3 flags...]: latents, stage 2 and one growth step on teachers/NAME
  local name=$1 dir=$RUN/pagoda_$1; shift
  timed "encode_$name" env TEACHER=$T/$name/exports/denoiser_ema0.999.pt OUT_DIR=$dir/latents LIMIT=$ENCODE_LIMIT \
    ENCODE_STEPS=$ENCODE_STEPS bash commands/encode_mnist.sh
  timed "stage2_$name" env TEACHER=$T/$name/exports/denoiser_ema0.999.pt LATENTS=$dir/latents \
    RUN_DIR=$dir/stage2 STEPS=$STAGE_STEPS bash commands/stage2_mnist.sh
  timed "stage3_$name" env GENERATOR=$dir/stage2/exports/generator_ema0.99.pt LATENTS=$dir/latents \
    RUN_DIR=$dir/stage3 STEPS=$STAGE_STEPS bash commands/stage3_mnist.sh "$@"
}
pipeline unet
pipeline dimr --activate_from 1  # DiMR's "top level + new levels": its 16 px branch and the grown one
rows=()
for name in unet dimr; do
  g2=$RUN/pagoda_$name/stage2/exports/generator_ema0.99.pt
  g3=$RUN/pagoda_$name/stage3/exports/generator_ema0.99.pt
  rows+=(--row "$name stage 2 (16 px)=$g2" --row "$name stage 3 (32 px)=$g3" --row "$name stage 2 + bicubic 2x=$g2@upsample=32")
done
"$PYTHON" scripts/compare.py --data_dir bundled:mnist --out_dir "$RUN/pagoda_compare" --num_samples $N --num_seeds 3 \
  "${rows[@]}"
