"""Encode a dataset to PF-ODE noise latents with a frozen teacher (PaGoDA's data-to-noise step).

    python scripts/encode.py --teacher runs/teacher/exports/denoiser_ema0.999.pt --data_dir bundled:mnist \
        --image_size 16 --out_dir runs/latents
    mpiexec -n 8 python scripts/encode.py --teacher edm_imagenet64_ema.pt --data_dir /data/imagenet/train ...

Every image is encoded unflipped and flipped (--flips 0,1) by deterministic Heun from sigma_min up to sigma_max on
the Karras grid (official: 40 points, 0.002..80, rho 7, denoised clamped to [-1,1]). One launch over N processes;
the work is split by image index in fixed chunks, so a rerun after a crash finishes what is missing (and redoes a
damaged chunk) without duplicating any id. --limit N encodes N images drawn at random (seeded, so reruns agree)
rather than the first N, which in a dataset stored class by class are a few classes only. --start_sigma S (not in
the official code) climbs from x + S * n instead of clean x at sigma_min, n seeded per (image, flip): clean images
are modes, and modes flow to atypically small latents (see pagoda/encoding.start_state). --verify N decodes N
latents back and reports reconstruction PSNR (also written to verify.json).

--direction decode runs it the other way (pagoda/guided_pairs.py): --num_pairs fresh prior latents, decoded by the
teacher's Heun at the guidance scales of --guidance_scales (cycled over the pair index), stored in the same chunks;
the training pairs of a guidance-conditioned generator (train.py --method guidance). --data_dir, --flips, --limit,
--start_sigma and --verify do not apply to it.
"""

import json
import os
import time

import numpy as np

from pagoda import dist_util, logger, script_util
from pagoda.amp import PRECISION_CHOICES, MixedPrecision, resolve_precision
from pagoda.checkpoint import atomic_write_text
from pagoda import guided_pairs
from pagoda.encoding import encode_chunks, pending_chunks, verify_round_trip
from pagoda.image_datasets import ImageDataset, check_labels, open_source, source_identity
from pagoda.latent_store import LATENTS_FORMAT, LatentStore, image_subset, num_chunks, work_items
from pagoda.model_io import load_teacher
from pagoda.sampling import karras_sigmas
from pagoda.compile_util import compile_forward

F, _c = script_util.Flag, script_util
GROUPS = {
    "data": dict(
        data_dir=F("bundled:mnist", "the images to encode: bundled:<name>, a folder (class sub-folders or flat) or an "
                   "ADM .npz"),
        image_size=F(0, "side in pixels of the ADM centre crop; 0: the teacher's resolution (the only other valid "
                     "value)", _c.at_least(0)),
        flips=F((0, 1), "comma list of the orientations encoded per image: 0 as is, 1 flipped horizontally",
                _c.each(_c.one_of(0, 1), nonempty=True, distinct=True)),
        on_error=F("raise", "files that fit no class while indexing: raise stops with an error naming the file, "
                   "skip leaves them out", _c.one_of("raise", "skip")),
        limit=F(0, "encode this many images drawn at random (seeded) and sorted; 0: all", _c.at_least(0)),
    ),
    "teacher": dict(
        teacher=F("", "the teacher export (<run_dir>/exports/denoiser_ema<rate>.pt) or the released "
                  "edm_imagenet64_ema.pt; required"),
        num_steps=F(40, "points of the Karras grid the deterministic Heun ODE climbs (official: 40)", _c.at_least(2)),
        sigma_min=F(0.002, "where the grid starts for clean images (--start_sigma 0)", _c.greater_than(0)),
        sigma_max=F(80.0, "where it ends: the latents' noise level, the generator's prior", _c.greater_than(0)),
        rho=F(7.0, "rho of the Karras grid (higher: steps denser at small sigma)", _c.greater_than(0)),
        clamp_denoised=F(True, "clamp the teacher's denoised estimates to [-1, 1] on the way (official)"),
        start_sigma=F(0.0, "climb from x + start_sigma n (n seeded per image and flip) instead of clean x at "
                      "sigma_min; clean images are modes, which flow to atypically small latents", _c.at_least(0)),
        precision=F("auto", "autocast precision of the teacher: fp32, bf16, fp16 or auto (bf16 where the device "
                    "computes it natively, else fp32)", _c.one_of(*PRECISION_CHOICES)),
        # not in the chunks' settings: compiled latents equal eager ones within float rounding
        compile=F(False, "torch.compile the teacher's forward after two eager calls; logs the compile time, the "
                  "speed-up and after how many calls it pays for itself. Minutes of compiling for a fraction of "
                  "every call (each image takes 2 * (num_steps - 1) calls): for ImageNet-size sets, not the "
                  "bundled recipes. Needs a C++ compiler on CPU", resume="free"),
    ),
    "output": dict(
        out_dir=F("runs/latents", "folder of the latent chunks and their manifest (resumable: a rerun finishes what "
                  "is missing)"),
        storage=F("fp16", "dtype the latents are stored in: fp16 or fp32", _c.one_of("fp16", "fp32")),
        chunk_size=F(256, "images (or pairs) per chunk file, the unit work is split and resumed by", _c.at_least(1)),
        batch_size=F(64, "images per teacher batch; lower it when memory runs out", _c.at_least(1)),
        verify=F(0, "decode this many latents back and report the reconstruction PSNR (verify.json); 0: none",
                 _c.at_least(0)),
    ),
    "decode": dict(
        direction=F("encode", "encode: data -> latents; decode: fresh prior latents -> guided teacher samples, the "
                    "guided pairs of train.py --method guidance", _c.one_of("encode", "decode")),
        num_pairs=F(0, "decode: guided pairs to make (required with --direction decode)", _c.at_least(0)),
        guidance_scales=F((1.5, 2.0, 3.0, 4.0), "decode: comma list of guidance scales w, cycled over the pair index "
                          "(w > 1 needs a teacher trained with label dropout)",
                          _c.each(_c.at_least(1), nonempty=True, distinct=True)),
        seed=F(0, "decode: seed of the prior latents and labels", _c.at_least(0)),
    ),
}
_BUNDLED = dict(data_dir="bundled:mnist", flips=(0,), num_steps=18, start_sigma=0.1, chunk_size=500, batch_size=250,
                verify=64)
PRESETS = {
    # commands/encode_mnist.sh: the bundled digits, unflipped, from x + 0.1 n (pagoda/encoding.start_state)
    "mnist16": _BUNDLED,
    # commands/guided_mnist.sh: 10,000 guided pairs of the bundled teacher (--direction decode)
    "mnist16_pairs": dict(_BUNDLED, direction="decode", num_pairs=10000),
    # commands/encode_imagenet64.sh: the official job's solver (40-point grid, denoised clamped), both flips
    "imagenet64": dict(image_size=64, precision="fp16", chunk_size=2600, batch_size=1300, verify=256),
}
CONSTRAINTS = {("sigma_min", "sigma_max"): _c.increasing, ("start_sigma", "sigma_max"): _c.increasing}


def manifest(args, teacher_side_image_size, num_images, chunks, source, settings):
    data_dir = os.path.abspath(args.data_dir) if os.path.exists(args.data_dir) else args.data_dir
    return {"teacher": os.path.abspath(args.teacher), "teacher_sha256": settings["teacher_sha256"],
            "settings": settings, "data_dir": data_dir, "image_size": teacher_side_image_size,
            "dataset": source_identity(source), "source_images": len(source),
            "flips": list(args.flips), "num_images": num_images,
            "limit": args.limit, "num_chunks": chunks, "num_steps": args.num_steps,
            "sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "rho": args.rho,
            "clamp_denoised": args.clamp_denoised, "start_sigma": args.start_sigma, "storage": args.storage,
            "chunk_size": args.chunk_size, "format": LATENTS_FORMAT}


def encoding_settings(args, teacher, source):
    """What determines a latent besides its image: a chunk made with other settings (or from another dataset whose
    ids happen to match, or by another teacher: its content hash) is redone, not reused."""
    return {"dataset_digest": source_identity(source)["digest"], "teacher_sha256": teacher.backbone.content_sha256,
            "num_steps": args.num_steps, "sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "rho": args.rho,
            "clamp_denoised": args.clamp_denoised, "start_sigma": args.start_sigma, "storage": args.storage,
            "precision": args.precision, "teacher_image_size": teacher.backbone.config["image_size"]}


def encoder_sigmas(args, device):
    """The Karras grid the encoder climbs: from sigma_min (clean data, official) or from --start_sigma."""
    return karras_sigmas(args.num_steps, args.start_sigma or args.sigma_min, args.sigma_max, args.rho, device=device)


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__, constraints=CONSTRAINTS, presets=PRESETS,
                                    required={"teacher": "a teacher export or the released edm_imagenet64_ema.pt"})
    with script_util.locked_job(args.out_dir, "latent folder") as device:
        run(args, device)


def run(args, device):
    """The job in its locked folder: load the teacher, encode (or decode guided pairs), report --compile."""
    teacher = load_teacher(args.teacher, device=device)
    meter = compile_forward(teacher.backbone, "teacher", device=device) if args.compile else None
    if args.direction == "decode":
        decode_main(args, teacher, device)
    else:
        encode_main(args, teacher, device)
    if meter:
        meter.report()
    dist_util.cleanup()


def encode_main(args, teacher, device):
    args.precision = resolve_precision(args.precision, device, log=logger.log)
    image_size = args.image_size or teacher.backbone.config["image_size"]
    if image_size != teacher.backbone.config["image_size"]:
        raise ValueError(f"--image_size {image_size} differs from the teacher's resolution "
                         f"{teacher.backbone.config['image_size']}")
    # on_error governs indexing only: an unreadable image is left out of its chunk (skip) rather than replaced by
    # another one, whose latent would then be stored under its id
    dataset = ImageDataset(open_source(args.data_dir, on_error=args.on_error), image_size=image_size)
    indices = image_subset(len(dataset), args.limit)
    if teacher.backbone.config["num_classes"] is not None:
        check_labels([dataset.labels[i] for i in indices], teacher_classes(teacher), data=args.data_dir,
                     model=f"the teacher {args.teacher}")
    n = len(indices)
    items = work_items(indices, [bool(f) for f in args.flips])
    store = LatentStore(args.out_dir)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    settings = encoding_settings(args, teacher, dataset.source)
    chunks = num_chunks(len(items), args.chunk_size)
    if dist_util.is_main() and store.begin(manifest(args, image_size, n, chunks, dataset.source, settings)):
        logger.log(f"{args.out_dir}: no finished latents with these settings; it is unusable until this encode "
                   "finishes")
    dist_util.barrier()  # no rank writes a chunk before a finished folder of other settings is invalidated
    todo = pending_chunks(store, dataset, items, args.chunk_size, shard=rank, num_shards=world, settings=settings)
    logger.log(f"encoding {len(items)} (image, flip) items in {chunks} chunks; rank {rank}: {len(todo)} chunks to do")
    sigmas = encoder_sigmas(args, device)
    mp = MixedPrecision(precision=args.precision, device=device)
    start = time.time()
    done = encode_chunks(teacher, dataset, store, items, todo, chunk_size=args.chunk_size, sigmas=sigmas,
                         batch_size=args.batch_size, clamp_denoised=args.clamp_denoised,
                         dtype=np.float16 if args.storage == "fp16" else np.float32, autocast=mp.autocast,
                         class_cond=teacher.backbone.config["num_classes"] is not None, settings=settings,
                         start_sigma=args.start_sigma, skip_unreadable=args.on_error == "skip")
    elapsed = time.time() - start
    if done:
        logger.log(f"rank {rank}: encoded {done} images in {elapsed:.1f}s ({done / elapsed:.2f} img/s, "
                   f"{2 * (args.num_steps - 1)} NFE each)")
    dist_util.barrier()
    if dist_util.is_main():
        finish(args, store, dataset, items, image_size, n, teacher, sigmas)
    dist_util.barrier()


def decode_main(args, teacher, device):
    """--direction decode: the guided pairs (pagoda/guided_pairs.py), sharded and resumable like the latents."""
    if not args.num_pairs:
        raise ValueError("--direction decode needs --num_pairs N (the number of guided pairs to make)")
    if any(w != 1 for w in args.guidance_scales) and teacher.null_class is None:
        raise ValueError(f"--guidance_scales {','.join(map(str, args.guidance_scales))} needs a teacher trained with "
                         f"label dropout (a null class); {args.teacher} has none, so it can only decode at w = 1")
    num_classes = teacher_classes(teacher)
    sigmas = karras_sigmas(args.num_steps, args.sigma_min, args.sigma_max, args.rho, device=device)
    settings = {"teacher_sha256": teacher.backbone.content_sha256, "num_steps": args.num_steps, "rho": args.rho,
                "sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "storage": args.storage, "seed": args.seed,
                "guidance_scales": [float(w) for w in args.guidance_scales], "num_classes": num_classes}
    chunks = num_chunks(args.num_pairs, args.chunk_size)
    manifest_ = dict(settings, settings=settings, teacher=os.path.abspath(args.teacher), num_pairs=args.num_pairs,
                     num_chunks=chunks, chunk_size=args.chunk_size, image_size=teacher.backbone.config["image_size"],
                     format=guided_pairs.FORMAT)
    store, rank, world = LatentStore(args.out_dir), dist_util.get_rank(), dist_util.get_world_size()
    if dist_util.is_main():
        store.begin(manifest_)
    dist_util.barrier()
    todo = guided_pairs.pending(store, args.num_pairs, args.chunk_size, shard=rank, num_shards=world,
                                settings=settings)
    calls = sum(2 * (2 * args.num_steps - 1) if w != 1 else 2 * args.num_steps - 1 for w in args.guidance_scales)
    logger.log(f"decoding {args.num_pairs} guided pairs in {chunks} chunks ({calls / len(args.guidance_scales):.0f} "
               f"teacher calls per pair on average); rank {rank}: {len(todo)} chunks to do")
    start = time.time()
    done = guided_pairs.decode_chunks(teacher, store, todo, num_pairs=args.num_pairs, chunk_size=args.chunk_size,
                                      batch_size=args.batch_size, sigmas=sigmas, guidance_scales=args.guidance_scales,
                                      seed=args.seed, num_classes=num_classes, settings=settings,
                                      dtype=np.float16 if args.storage == "fp16" else np.float32)
    if done:
        logger.log(f"rank {rank}: decoded {done} pairs in {time.time() - start:.1f}s")
    dist_util.barrier()
    if dist_util.is_main():
        bad = [c for c in range(chunks) if store.check_chunk(c, expected_settings=settings) is not None]
        if bad:
            raise RuntimeError(f"chunks {bad[:10]} are incomplete after decoding; rerun the same command")
        store.write_index(range(chunks))
        store.write_manifest(manifest_)
        logger.log(f"guided pairs complete: {args.out_dir} ({args.num_pairs} pairs)")
    dist_util.barrier()


def teacher_classes(teacher):
    """The classes a teacher's labels may take (a label-dropout teacher's null class is not one of them)."""
    num_classes = teacher.backbone.config["num_classes"]
    return num_classes - 1 if getattr(teacher, "null_class", None) is not None else num_classes


def report_skipped(args, indexing, unreadable):
    """`unreadable`: the ids of the images left out of the latents, as their chunks record them."""
    if args.on_error != "skip":
        return
    example = f", e.g. {unreadable[0]}" if unreadable else ""
    logger.log(f"on_error=skip: skipped {indexing + len(unreadable)} files ({indexing} while indexing "
               f"{args.data_dir}, {len(unreadable)} unreadable{example})")


def finish(args, store, dataset, items, image_size, n, teacher, sigmas):
    chunks = num_chunks(len(items), args.chunk_size)
    settings = encoding_settings(args, teacher, dataset.source)
    bad = [c for c in range(chunks) if store.check_chunk(c, expected_settings=settings) is not None]
    if bad:
        raise RuntimeError(f"chunks {bad[:10]} are incomplete after encoding; rerun the same command")
    store.write_index(range(chunks))
    store.write_manifest(manifest(args, image_size, n, chunks, dataset.source, settings))
    skipped = store.skipped(range(chunks))
    report_skipped(args, dataset.source.num_skipped, sorted({image_id for image_id, _ in skipped}))
    logger.log(f"latents complete: {args.out_dir} ({len(items) - len(skipped)} items)")
    if args.verify:
        index = store.index()
        keys = [(i, f) for i, f in items if (dataset.ids[i], f) in index][:args.verify]
        psnr = verify_round_trip(teacher, dataset, store, index, keys, sigmas=sigmas,
                                 clamp_denoised=args.clamp_denoised,
                                 class_cond=teacher.backbone.config["num_classes"] is not None,
                                 start_sigma=args.start_sigma)
        logger.log(f"verify: decoded {len(keys)} latents; reconstruction PSNR mean {psnr.mean():.2f} dB, "
                   f"min {psnr.min():.2f} dB")
        result = {"num_decoded": len(keys), "psnr_mean_db": float(psnr.mean()), "psnr_min_db": float(psnr.min())}
        atomic_write_text(json.dumps(result, indent=1), os.path.join(args.out_dir, "verify.json"))


if __name__ == "__main__":
    main()
