#!/usr/bin/env bash
# No preset of its own: every teacher is --preset cifar16 with its shape overridden.
# The CIFAR-10 teacher's size, chosen by measurement (issue 31): teachers of four shapes at 16 px, each trained for
# the same compute (training steps x MACs per forward, scripts/model_cost.py), then one method table (Heun 18 steps,
# NFE 35) on the same seeds, and each teacher's parameters, MACs and seconds.
#   base   32 ch, channel_mult 1,2,2, 1 res block    80.0 M MACs   1200 steps (the recipe's teacher)
#   small  32 ch, channel_mult 1,1,2, 1 res block    46.6 M MACs   2059 steps (the digits' teacher)
#   deep   32 ch, channel_mult 1,2,2, 2 res blocks  111.5 M MACs    861 steps
#   wide8  32 ch, channel_mult 1,2,4, 1 res block   119.8 M MACs    801 steps (128 channels at 4 px)
# Widths must be multiples of 32 (GroupNorm(32)), so 48 channels is not a candidate.
# Usage: [RUN=runs/cifar10/teacher_sweep] [FRACTION=1] [N=500] bash commands/teacher_sweep_cifar10.sh [--fast]
#   FRACTION scales every teacher's steps (0.5: half the recipe's compute each); N: samples per seed x 3 seeds.
# Rerunning resumes every run; the timings add up over reruns (commands/_timed.sh).
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
RUN=${RUN:-runs/cifar10/teacher_sweep}
FRACTION=${FRACTION:-1} N=${N:-500} HEUN=18 EPOCHS=0
if [ "${1:-}" = --fast ]; then shift; FRACTION=0.005 N=8 HEUN=3 EPOCHS=1; fi
TIMINGS=$RUN/timings
source "$(dirname "$0")/_timed.sh"
SHAPES=("base:1,2,2:1:1200" "small:1,1,2:1:2059" "deep:1,2,2:2:861" "wide8:1,2,4:1:801")
rows=() exports=()
for shape in "${SHAPES[@]}"; do
  IFS=: read -r name mult blocks steps <<< "$shape"
  steps=$("$PYTHON" -c "import sys; print(max(2, round(float(sys.argv[1]) * int(sys.argv[2]))))" "$FRACTION" "$steps")
  timed "teacher_$name" launch scripts/train.py --method diffusion --preset cifar16 --run_dir "$RUN/$name" \
    --channel_mult "$mult" --num_res_blocks "$blocks" --total_steps "$steps" "$@"
  export_path=$RUN/$name/exports/denoiser_ema0.999.pt
  rows+=(--row "$name: mult $mult, $blocks block(s), $steps steps (Heun $((2 * HEUN - 1)) NFE)=$export_path@sampler=heun,steps=$HEUN")
  exports+=("$export_path")
done
"$PYTHON" scripts/compare.py --data_dir bundled:cifar10 --out_dir "$RUN/compare" --num_samples "$N" --num_seeds 3 \
  --domain_epochs $EPOCHS "${rows[@]}"
"$PYTHON" scripts/model_cost.py --models "$(IFS=,; echo "${exports[*]}")" --out "$RUN/cost.json" > "$RUN/cost.md"
for shape in "${SHAPES[@]}"; do
  name=${shape%%:*}
  echo "- $name: $(cat "$TIMINGS/teacher_$name.sec") s of training" >> "$RUN/cost.md"
done
cat "$RUN/cost.md"
