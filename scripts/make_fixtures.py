"""Regenerate the small trained fixtures of tests/fixtures/apps from a quickstart run: its teacher, its grown
(stage-3) generator and an amortised encoder trained on its latents, each re-exported with fp16 weights (half the
size; loading upcasts them to fp32) and a sidecar whose `fp16_of` names the fp32 export's content hash. The
generator's and the encoder's `teacher_sha256` are rewritten to the fp16 teacher's hash, so the three still check
as one family.

    python scripts/make_fixtures.py --run runs/quickstart --encoder runs/quickstart/encoder/exports/encoder_ema0.99.pt
"""

import json
import os

from pagoda import checkpoint, script_util

F = script_util.Flag
GROUPS = {"main": dict(
    run=F("", "a quickstart run folder (its teacher and stage-3 generator are copied); required"),
    encoder=F("", "an amortised encoder export trained on that run's latents; required"),
    out_dir=F("tests/fixtures/apps", "where teacher.pt, generator32.pt and encoder.pt (+ .json sidecars) go"),
)}
FILES = {"teacher": "teacher/exports/denoiser_ema0.999.pt", "generator32": "stage3/exports/generator_ema0.99.pt"}


def half_copy(src, dst, *, teacher_sha256=None):
    """Re-export `src` with fp16 floating-point tensors; returns the new content hash."""
    state, side = checkpoint.load_export(src)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    side = {k: v for k, v in side.items() if k != checkpoint.CONTENT_HASH} | {"fp16_of": side[checkpoint.CONTENT_HASH]}
    if teacher_sha256:
        side["teacher_sha256"] = teacher_sha256
    checkpoint.export_network(state, side, dst)
    with open(checkpoint.sidecar_path(dst)) as f:
        return json.load(f)[checkpoint.CONTENT_HASH]


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"run": "a quickstart run folder", "encoder": "an encoder export"})
    os.makedirs(args.out_dir, exist_ok=True)
    teacher = half_copy(os.path.join(args.run, FILES["teacher"]), os.path.join(args.out_dir, "teacher.pt"))
    half_copy(os.path.join(args.run, FILES["generator32"]), os.path.join(args.out_dir, "generator32.pt"),
              teacher_sha256=teacher)
    half_copy(args.encoder, os.path.join(args.out_dir, "encoder.pt"), teacher_sha256=teacher)
    print(f"wrote {args.out_dir}/{{teacher,generator32,encoder}}.pt (+ .json); fp16 teacher {teacher[:12]}")


if __name__ == "__main__":
    main()
