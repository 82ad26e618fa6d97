#!/usr/bin/env bash
# Sample any export into an ADM-format npz (arr_0 uint8 NHWC, arr_1 labels) + grid for the evaluator:
# a one-step generator at any grown size (NFE 1) or a teacher with Heun (NFE 2*steps-1). 50k uniform labels, as the
# paper's tables; per-sample seeds make the file identical for any NPROC and batch size; reruns complete it.
# GUIDANCE=w: classifier-free guidance scale (a teacher with a null class: 2 calls per step; a generator with a
# w input: still 1 call; any other model refuses w != 1).
# In:  $MODEL.  Out: $OUT_DIR/samples_<N>x<H>x<W>x3.npz.  Score with: python -m evaluations.evaluator REF.npz SAMPLES.npz
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
MODEL=${MODEL:-runs/imagenet64/stage2/exports/generator_ema0.999.pt}
OUT_DIR=${OUT_DIR:-runs/samples}

launch scripts/sample.py --preset fid50k --model "$MODEL" --out_dir "$OUT_DIR" ${PRECISION:+--precision $PRECISION} \
  ${STEPS:+--num_steps $STEPS} ${GUIDANCE:+--guidance_scale $GUIDANCE} ${NUM_SAMPLES:+--num_samples $NUM_SAMPLES} \
  ${BATCH:+--batch_size $BATCH} "$@"
