# Sourced by the application recipes (super_resolve.sh, inpaint.sh, transfer.sh, interpolate.sh) after they set
# TASK, GENERATOR_DEFAULT, LIMIT_DEFAULT and TASK_FLAGS: the input argument, the models (ENCODER=amortised with
# ENCODER_PATH: the amortised encoder instead of the ODE, commands/encoder_mnist.sh), the encoder settings of the
# bundled latents (12 Heun steps from x + 0.1 n) and the output flags they share, then the launch.
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
INPUT=bundled:mnist_test
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INPUT=$1; shift; fi
TEACHER=${TEACHER:-runs/mnist/teacher/exports/denoiser_ema0.999.pt}
GENERATOR=${GENERATOR:-$GENERATOR_DEFAULT}
ENCODER_PATH=${ENCODER_PATH:-runs/mnist/encoder/exports/encoder_ema0.99.pt}  # read only with ENCODER=amortised
OUT_DIR=${OUT_DIR:-runs/mnist/$TASK}

DATA_FLAGS="--task $TASK --input $INPUT --limit ${LIMIT:-$LIMIT_DEFAULT} --batch_size 100"
MODEL_FLAGS="--teacher $TEACHER --generator $GENERATOR --encoder ${ENCODER:-ode} --encoder_path $ENCODER_PATH --num_steps 12 --start_sigma 0.1 --sigma_min 0.002 --sigma_max 80 --rho 7 --seed 0"
OUTPUT_FLAGS="--out_dir $OUT_DIR --num_blocks 5 --grid_images 16"

launch scripts/apply.py $DATA_FLAGS $MODEL_FLAGS $TASK_FLAGS $OUTPUT_FLAGS "$@"
