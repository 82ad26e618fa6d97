"""Draw samples from any export into an ADM-format npz (arr_0 uint8 NHWC, arr_1 labels) plus a PNG grid.

    python scripts/sample.py --model runs/stage2/exports/generator_ema0.999.pt --num_samples 1000 --out_dir runs/s2
    python scripts/sample.py --model runs/teacher/exports/denoiser_ema0.999.pt --sampler heun --num_steps 18 ...
    mpiexec -n 8 python scripts/sample.py --model edm_imagenet64_ema.pt --num_samples 50000 ...

The export's sidecar says what it is (a one-step generator at any grown size, or a teacher); no architecture
flags. A distilled k-step denoiser (progressive distillation: its sidecar has `sigmas`) samples with Euler on its own
grid, NFE k; --sampler and --num_steps do not apply to it (logged). Per-sample seeds: the output is identical for any
process count and batch size; a rerun completes the missing samples.
"""

import json
import os
import sys

from pagoda import checkpoint, dist_util, logger, script_util
from pagoda.amp import PRECISION_CHOICES, MixedPrecision, resolve_precision
from pagoda.compile_util import compile_forward
from pagoda.sample_util import (assemble, claim_parts, model_identity, run_sampling, sampler_classes,
                                sampler_for_export)

F, _c = script_util.Flag, script_util
GROUPS = {
    "model": dict(
        model=F("", "the export to sample: a generator or denoiser export .pt, or a released checkpoint; required"),
        kind=F("auto", "what --model is: generator (one step), denoiser (multi-step sampler) or auto (its sidecar "
               "says; a file without one is a denoiser)", _c.one_of("auto", "generator", "denoiser")),
        precision=F("auto", "autocast precision of the network: fp32, bf16, fp16 or auto (bf16 where the device "
                    "computes it natively, else fp32)", _c.one_of(*PRECISION_CHOICES)),
    ),
    "sampler": dict(
        sampler=F("heun", "denoiser sampler: heun (EDM's deterministic 2nd order), euler, or stochastic (EDM's "
                  "churn sampler, see --s_churn)", _c.one_of("heun", "euler", "stochastic")),
        num_steps=F(40, "denoiser steps on the Karras grid (heun: 2 * steps - 1 network evaluations)",
                    _c.at_least(1)),
        rho=F(7.0, "rho of the Karras grid (higher: steps denser at small sigma)", _c.greater_than(0)),
        s_churn=F(0.0, "stochastic sampler: total noise added back over the steps (EDM's S_churn)", _c.at_least(0)),
        s_tmin=F(0.0, "stochastic sampler: add noise only at sigma >= s_tmin", _c.at_least(0)),
        s_tmax=F(1e9, "stochastic sampler: add noise only at sigma <= s_tmax", _c.at_least(0)),
        s_noise=F(1.0, "stochastic sampler: scale of the added noise (EDM's S_noise)", _c.at_least(0)),
        guidance_scale=F(1.0, "guidance scale w: classifier-free guidance of a teacher trained with label dropout, "
                         "or the w input of a guidance-conditioned generator; 1: unguided", _c.at_least(0)),
    ),
    "output": dict(
        out_dir=F("runs/samples", "folder of the samples (parts/ while sampling, then samples_<N>x<H>x<W>x3.npz) "
                  "and a PNG grid; a rerun completes missing parts"),
        num_samples=F(1000, "samples to draw", _c.at_least(1)),
        labels=F("uniform", "class labels: uniform (each drawn from its sample's seed) or balanced (sample i gets "
                 "class i mod the number of classes)", _c.one_of("uniform", "balanced")),
        seed=F(0, "base seed: sample i uses seed + i for its noise (and uniform label)", _c.at_least(0)),
        chunk_size=F(100, "samples per part file (the unit a rerun resumes from)", _c.at_least(1)),
        batch_size=F(100, "samples per forward batch; lower it when memory runs out (the samples do not change)",
                     _c.at_least(1)),
    ),
    # not part of sampling_identity: compiled samples replace eager ones within float rounding
    "speed": dict(compile=F(
        False, "torch.compile the network's forward after two eager calls; logs the compile time, the speed-up and "
        "after how many calls it pays for itself. Minutes of compiling for a fraction of every call: for tens of "
        "thousands of samples (FID sets on ImageNet), not the bundled recipes. Needs a C++ compiler on CPU",
        resume="free")),
}

# commands/sampling.sh: the paper's tables' sample count (50,000, uniform labels) in resumable chunks
PRESETS = {"fid50k": dict(num_samples=50000, chunk_size=500, batch_size=250)}


def build_sampler(args, device):
    return sampler_for_export(args.model, kind=args.kind, device=device, sampler=args.sampler,
                              num_steps=args.num_steps, rho=args.rho, s_churn=args.s_churn, s_tmin=args.s_tmin,
                              s_tmax=args.s_tmax, s_noise=args.s_noise, guidance_scale=args.guidance_scale)


def sampling_identity(args):
    """Everything the parts depend on (not num_samples or batch_size: chunks are per-sample seeded)."""
    settings = {k: getattr(args, k) for group in ("model", "sampler") for k in GROUPS[group] if k != "model"}
    settings.update(labels=args.labels, seed=args.seed, chunk_size=args.chunk_size)
    return {**model_identity(args.model), **settings}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__, presets=PRESETS,
                                    required={"model": "an export .pt, or a released checkpoint"})
    with script_util.locked_job(args.out_dir, "sample folder") as device:
        sample_main(args, device)


def sample_main(args, device):
    sampler = build_sampler(args, device)
    network = getattr(sampler, "generator", None) or sampler.denoiser
    meter = compile_forward(network.backbone, "sampler network", device=device) if args.compile else None
    num_classes = sampler_classes(sampler)
    args.precision = resolve_precision(args.precision, device, log=logger.log)
    mp = MixedPrecision(precision=args.precision, device=device)

    def sample_fn(rng, y):
        with mp.autocast():
            return sampler(rng, y).float()

    if dist_util.is_main():
        try:
            claim_parts(args.out_dir, sampling_identity(args))
        except FileExistsError as exc:  # another model's samples: a user error, not a crash
            sys.exit(f"error: {exc}")
    dist_util.barrier()
    made, seconds = run_sampling(sample_fn, out_dir=args.out_dir, num_samples=args.num_samples,
                                 num_classes=num_classes, label_mode=args.labels, base_seed=args.seed,
                                 chunk_size=args.chunk_size, batch_size=args.batch_size,
                                 shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(), device=device)
    if meter:
        meter.report()
    rates = dist_util.all_gather_objects((made, seconds))
    dist_util.barrier()
    if dist_util.is_main():
        path = assemble(args.out_dir, args.num_samples, args.chunk_size)
        made_all = sum(m for m, _ in rates)
        speed = made_all / max(max(s for _, s in rates), 1e-9) if made_all else float("nan")
        stats = {"samples": path, "num_samples": args.num_samples, "nfe": sampler.nfe, "images_per_s": speed,
                 "made_now": made_all, **model_identity(args.model)}
        stats_path = os.path.join(args.out_dir, "sampling.json")
        if made_all or not os.path.exists(stats_path):  # a rerun with nothing to do keeps the measured speed
            checkpoint.atomic_write_text(json.dumps(stats, indent=1), stats_path)
        logger.log(f"wrote {path} ({args.num_samples} samples, NFE {sampler.nfe}, {speed:.2f} img/s)")
    dist_util.cleanup()


if __name__ == "__main__":
    main()
