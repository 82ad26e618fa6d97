"""Applications of the one-step generator on your own images: super-resolution, inpainting, colourisation, class
transfer, interpolation.

    python scripts/apply.py --task super_resolve --input my_digits/ --teacher T.pt --generator G32.pt --out_dir out
    python scripts/apply.py --task transfer --input bundled:mnist_test --limit 500 ...
    python scripts/apply.py --task interpolate --input imgs.npz --num_pairs 8 ...
    python scripts/apply.py --task colorize --input bundled:cifar10_test --classifier_data bundled:cifar10 ...

Each image is ADM-resized to the teacher's resolution when it has another size (logged), encoded to its latent z at
sigma_max by the teacher's PF-ODE (Heun, from x + start_sigma n as the bundled latents were made), then decoded by
the generator in one call: at its own resolution (super_resolve), with another label (transfer), or along the
spherical path between two images' latents (interpolate). Inpainting and colourisation search the latent
through G for an image that matches what is observed (the pixels outside the mask; the luminance of the colour
image, given as grey) and compare with a naive output and the teacher's replacement sampler at equal wall time.
With --encoder amortised --encoder_path FILE the latent comes from one call of the amortised encoder E(x, y)
(scripts/train.py --method encoder) instead of the ODE solve.
Labels: --label when you know it, else the data's own with --use_data_labels, else the teacher's null class, else
the domain classifier's prediction; the log and JSON say which. --guidance_scale w reaches a guidance-conditioned
generator G(z, y, w). Writes a PNG grid, an npz (ADM format) and a JSON of scores; images larger than the teacher's
resolution serve as references (PSNR, domain FD against them; with --inception_kid true also the evaluator's
Inception KID, slow on a CPU: Inception runs at 299 px); block scores come with a real-vs-real floor (as many other
images of the input, in the same blocks). Cheap enough not to need resuming: a rerun redoes it all.
"""

import json
import os
import sys
import time

import numpy as np
import torch

from pagoda import applications as app
from pagoda.applications import block_spread
from pagoda import logger, run_lock, script_util
from pagoda.checkpoint import atomic_write_text
from pagoda.image_datasets import center_crop_arr, check_labels, open_source
from pagoda.image_util import from_uint8, psnr, resize_bicubic, save_grid, to_uint8
from pagoda.latent_store import image_subset
from pagoda.model_io import load_encoder, load_generator, load_teacher, real_classes

LABEL_ORIGINS = {"given": "--label, for every image", "data": "the data's own labels (--use_data_labels)",
                 "null": "the teacher's null class", "classifier": "the domain classifier's prediction"}
TASKS = ("super_resolve", "inpaint", "colorize", "transfer", "interpolate")
ENCODERS = ("ode", "amortised")
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": dict(
        task=F("super_resolve", f"what to do with the images: {', '.join(TASKS)}", _c.one_of(*TASKS)),
        input=F("", "the images: a folder (class sub-folders or flat), an ADM-format .npz or bundled:<name>; "
                "required"),
        limit=F(0, "use this many images of --input, drawn at random (seeded) and sorted; 0: all", _c.at_least(0)),
        label=F(-1, "the class of every image; -1: see --use_data_labels (then the teacher's null class, then the "
                "domain classifier's prediction)", _c.at_least(-1)),
        use_data_labels=F(False, "use the labels --input carries (class folders, npz labels) when --label is -1"),
        batch_size=F(100, "images per encoder / generator / search batch; lower it when memory runs out",
                     _c.at_least(1)),
    ),
    "models": dict(
        teacher=F("", "the teacher export that encodes the images (<run_dir>/exports/denoiser_ema<rate>.pt); "
                  "required"),
        generator=F("", "the generator export that decodes them (stage 2 or 3, a descendant of --teacher); required"),
        encoder=F("ode", f"how images become latents: {' or '.join(ENCODERS)} (ode: the teacher's PF-ODE; amortised: "
                  "one call of --encoder_path)", _c.one_of(*ENCODERS)),
        encoder_path=F("", "the amortised encoder export (<run_dir>/exports/encoder_ema<rate>.pt) for --encoder "
                       "amortised"),
        guidance_scale=F(1.0, "guidance scale w a guidance-conditioned generator G(z, y, w) decodes at; 1: unguided "
                         "(the only value for a generator without a w input)", _c.greater_than(0)),
        num_steps=F(12, "Heun steps of the PF-ODE encoder (Karras grid from start_sigma, or sigma_min, to sigma_max)",
                    _c.at_least(2)),
        start_sigma=F(0.1, "noise level the image is first noised to before the ODE climbs from there (as the "
                      "bundled latents were made); 0: from clean x at sigma_min", _c.at_least(0)),
        sigma_min=F(0.002, "smallest noise level of the ODE grid (and of the teacher's replacement baseline)",
                    _c.greater_than(0)),
        sigma_max=F(80.0, "the latents' noise level: the end of the ODE, the generator's prior", _c.greater_than(0)),
        rho=F(7.0, "rho of the Karras grid (higher: steps denser at small sigma)", _c.greater_than(0)),
        seed=F(0, "seed of the encoder's noise, the random target classes, the strokes masks", _c.at_least(0)),
    ),
    "task": dict(
        target_label=F(-1, "transfer: the class every image is decoded with; -1: a random other class per image "
                       "(seeded)", _c.at_least(-1)),
        num_pairs=F(8, "interpolate: pairs of images (2k, 2k + 1) to interpolate between", _c.at_least(1)),
        num_interp=F(7, "interpolate: points on each spherical path, ends included", _c.at_least(3)),
        mask=F("center", "inpaint: the observed pixels: center (the central box missing), half (the right half "
               "missing), strokes (3 random strokes missing) or a mask file (.npy or grey image, nonzero = observed)"),
        search_steps=F(40, "inpaint: Adam steps of the latent search through the generator", _c.at_least(1)),
        search_lr=F(1.0, "inpaint: learning rate of the latent search", _c.greater_than(0)),
        prior_weight=F(1e-3, "inpaint: weight of the Gaussian prior term on z in the latent search (keeps z typical)",
                       _c.at_least(0)),
        colorize_start=F("fresh_chroma", "colorize: the latent search's start: fresh_chroma (the encoded grey image's "
                         "latent with the chroma of fresh prior noise, seeded per image) or encoded (that latent "
                         "as it is, which already decodes to the grey image)", _c.one_of("fresh_chroma", "encoded")),
        replacement_steps=F(0, "inpaint: Heun steps of the teacher's replacement baseline; 0: as many as fit in the "
                            "latent search's wall time", _c.at_least(0)),
    ),
    "output": dict(
        out_dir=F("runs/apply", "folder for the grid PNG, the npz (ADM format), the JSON of scores and the log"),
        num_blocks=F(5, "blocks the images are split into for the scores' mean +- spread", _c.at_least(1)),
        grid_images=F(16, "images shown in the PNG grid", _c.at_least(1)),
        classifier_data=F("bundled:mnist", "training data of the domain classifier that predicts labels and scores "
                          "(trained once and cached)"),
        inception_kid=F(False, "also score the evaluator's Inception KID against the references (slow on a CPU)"),
        inception=F("", "the evaluator's Inception weights file; '': where evaluations.inception looks"),
    ),
}
CONSTRAINTS = {("sigma_min", "sigma_max"): _c.increasing, ("start_sigma", "sigma_max"): _c.increasing}


def read_images(source, indices, teacher_size, out_size):
    """(low-res uint8 NHWC at the teacher's size, references at the output size or None, number resized).
    References exist when every image is larger than the teacher's resolution (e.g. 28 px digits for a 16 px
    teacher: their ADM crop at 32 px is what the grown generator was trained on)."""
    low, refs, resized = [], [], 0
    for i in logger.progress(indices, desc="read", unit="img"):
        pil = source.load_pil(i)
        resized += pil.size != (teacher_size, teacher_size)
        low.append(center_crop_arr(pil, teacher_size))
        refs.append(center_crop_arr(pil, out_size) if min(pil.size) > teacher_size else None)
    refs = np.stack(refs) if all(r is not None for r in refs) else None
    return np.stack(low), refs, resized


def load_models(args):
    """(teacher, generator, amortised encoder or None), refused unless they belong together."""
    teacher = load_teacher(args.teacher)
    generator = load_generator(args.generator)
    app.check_models(teacher, generator, teacher_path=args.teacher, generator_path=args.generator)
    if args.guidance_scale != 1.0 and not generator.guidance_input:
        raise ValueError(f"--guidance_scale {args.guidance_scale:g} needs a guidance-conditioned generator G(z, y, w) "
                         f"(train.py --method guidance); {args.generator} has no w input")
    if args.encoder == "ode":
        return teacher, generator, None
    if not args.encoder_path:
        raise ValueError("--encoder amortised needs --encoder_path: an encoder export "
                         "(<run_dir>/exports/encoder_ema<rate>.pt from commands/encoder_mnist.sh)")
    encoder = load_encoder(args.encoder_path)
    app.check_encoder(encoder, teacher, teacher_path=args.teacher, encoder_path=args.encoder_path)
    logger.log(f"encoder: amortised {args.encoder_path} (one call; trained on latents of "
               f"{encoder.sidecar['latent_settings']}); the ODE flags are unused")
    return teacher, generator, encoder


def choose_labels(args, teacher, source, indices, low, classifier, seen=None):
    """`seen`: what the classifier may look at when it predicts (the observation when inpainting), else `low`."""
    data_labels = [source.labels[i] for i in indices] if args.use_data_labels else None
    if data_labels is not None and not source.conditional:
        raise ValueError(f"--use_data_labels: {args.input} has no labels")
    labels, origin = app.pick_labels(n=len(low), given=args.label, data_labels=data_labels,
                                     null_class=getattr(teacher, "null_class", None),
                                     predict=lambda: app.classify(classifier(), low if seen is None else seen)[0])
    check_labels(labels.tolist(), teacher.backbone.config["num_classes"] or 0, data=args.input,
                 model=f"the teacher {args.teacher}")
    logger.log(f"labels: {LABEL_ORIGINS[origin]}")
    return labels, origin


def encode_all(args, teacher, low, labels, encoder=None):
    """Latents of every low-resolution image, in batches, with a progress bar: by the teacher's PF-ODE (seeds are
    the image positions), or in one call each by the amortised `encoder`."""
    sigmas = app.ode_sigmas(num_steps=args.num_steps, start_sigma=args.start_sigma, sigma_min=args.sigma_min,
                            sigma_max=args.sigma_max, rho=args.rho)
    z = []
    for b in logger.progress(range(0, len(low), args.batch_size), desc="encode", unit="batch"):
        x = from_uint8(low[b:b + args.batch_size])
        y = torch.from_numpy(labels[b:b + args.batch_size])
        seeds = [args.seed * 1_000_003 + b + k for k in range(len(x))]
        if encoder is not None:  # the same input noise as the ODE path: the two differ only in the encoder
            z.append(encoder.encode(x, y, seeds=seeds))
            continue
        z.append(app.encode_ode(teacher, x, y, sigmas, start_sigma=args.start_sigma, seeds=seeds))
    return torch.cat(z)


def decode_all(args, generator, z, labels):
    """uint8 images G(z, y) in batches; a guidance-conditioned G also gets w = --guidance_scale."""
    out = []
    for b in range(0, len(z), args.batch_size):
        zb = z[b:b + args.batch_size]
        w = torch.full((len(zb),), args.guidance_scale) if generator.guidance_input else None
        out.append(to_uint8(app.decode(generator, zb, torch.from_numpy(np.asarray(labels[b:b + args.batch_size])),
                                       w)))
    return np.concatenate(out)


def block_distances(features, distance, refs, candidates, num_blocks):
    """`distance`(reference features, block features) of each of `num_blocks` disjoint blocks of each candidate set
    against all references: {name: {mean, std, blocks}}; the spread is over the blocks."""
    ref = features(refs)
    out = {}
    for name, images in candidates.items():
        values = [distance(ref, part) for part in np.array_split(features(images), num_blocks)]
        out[name] = {"mean": float(np.mean(values)),
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                     "blocks": [float(v) for v in values]}
    return out


def fd_blocks(classifier, refs, candidates, num_blocks):
    """Domain FD (the digit classifier's features) per block against all references."""
    from pagoda.domain import domain_features
    from evaluations.metrics import FeatureStats

    def fd(ref, part):
        return FeatureStats.from_features(ref).frechet_distance(FeatureStats.from_features(part))
    return block_distances(lambda images: domain_features(classifier, images)[0], fd, refs, candidates, num_blocks)


def kid_blocks(inception, refs, candidates, num_blocks, *, batch_size=100):
    """Inception KID (the evaluator's network and kid(): 100 subsets of a block's size) per block against all
    references. Inception works at 299 px whatever the images' size, so this is the slow score (opt in)."""
    from evaluations.inception import to_inception_input
    from evaluations.metrics import kid

    def features(images):
        with torch.no_grad():
            return torch.cat([inception(to_inception_input(images[b:b + batch_size]))["pool"].float()
                              for b in logger.progress(range(0, len(images), batch_size), desc="inception",
                                                       unit="batch")]).numpy()
    return block_distances(features, lambda ref, part: kid(ref, part, subset_size=len(part))[0], refs, candidates,
                           num_blocks)


def super_resolve(args, teacher, generator, low, refs, labels, classifier, encoder=None):
    size = generator.output_size
    t0 = time.time()
    z = encode_all(args, teacher, low, labels, encoder)
    out = decode_all(args, generator, z, labels)
    seconds = time.time() - t0
    bicubic = resize_bicubic(low, size)
    back = app.adm_resize(out, low.shape[1])
    scores = {"seconds_per_image": seconds / len(low), "consistency_psnr_db": block_spread(
        psnr(from_uint8(back), from_uint8(low)).numpy(), args.num_blocks)}
    if refs is not None:
        ref_t = from_uint8(refs)
        scores["psnr_db"] = {"super_resolved": block_spread(psnr(from_uint8(out), ref_t).numpy(), args.num_blocks),
                             "bicubic": block_spread(psnr(from_uint8(bicubic), ref_t).numpy(), args.num_blocks)}
        scores["domain_fd"] = fd_blocks(classifier(), refs, {"super_resolved": out, "bicubic": bicubic},
                                        args.num_blocks)
        if args.inception_kid:
            scores["inception_kid"] = kid_blocks(inception(args), refs, {"super_resolved": out, "bicubic": bicubic},
                                                 args.num_blocks)
    rows = [app.nearest_enlarge(low, size), bicubic, out] + ([refs] if refs is not None else [])
    return out, scores, rows, labels, None


def inpaint_truth(generator, low, refs):
    """The complete images at the generator's resolution, which the masks are applied to."""
    size = generator.output_size
    if size == low.shape[1]:
        return low
    if refs is None:
        raise ValueError(f"inpainting with a {size} px generator needs images larger than the teacher's "
                         f"{low.shape[1]} px resolution")
    return refs


def inpaint_observation(args, generator, low, refs):
    """(complete images, masks (N, 1, H, W), the naive fill of the observation as uint8)."""
    truth = inpaint_truth(generator, low, refs)
    size = truth.shape[1]
    m = (app.builtin_mask(args.mask, size, len(truth), seed=args.seed) if args.mask in app.MASKS
         else app.load_mask(args.mask, size, len(truth)))
    return truth, m, to_uint8(app.naive_fill(from_uint8(truth) * m, m))


def inpaint(args, teacher, generator, low, refs, labels, classifier, encoder=None):
    """Latent search through G from the encoded observation, against the naive fill and the teacher's replacement
    method at equal wall time (when the generator works at the teacher's resolution)."""
    truth, m, _ = inpaint_observation(args, generator, low, refs)
    size = truth.shape[1]
    x_true = from_uint8(truth)
    fill = app.naive_fill(x_true * m, m)
    observed = app.adm_resize(to_uint8(fill), teacher.backbone.config["image_size"])
    z0 = encode_all(args, teacher, observed, labels, encoder)
    raw, seconds = app.search_batches(generator, z0, labels, x_true, m, batch_size=args.batch_size,
                                      steps=args.search_steps, lr=args.search_lr, prior_weight=args.prior_weight)
    results = {"latent_search": raw * (1 - m) + x_true * m, "naive_fill": fill}
    scores = {"consistency_psnr_db": block_spread(app.masked_psnr(raw, x_true, m).numpy(), args.num_blocks),
              "search_seconds": seconds}
    if size == teacher.backbone.config["image_size"]:
        steps = args.replacement_steps or app.replacement_steps_for(teacher, x_true * m, labels,
                                                                    batch_size=args.batch_size, seconds=seconds)
        rep, rep_seconds = app.replacement_batches(teacher, x_true * m, m, labels, batch_size=args.batch_size,
                                                   steps=steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                                                   rho=args.rho)
        results["replacement"] = rep * (1 - m) + x_true * m
        scores.update(replacement_steps=steps, replacement_seconds=rep_seconds)
    scores["psnr_in_mask_db"] = {k: block_spread(app.masked_psnr(v, x_true, 1 - m).numpy(), args.num_blocks)
                                 for k, v in results.items()}
    images = {k: to_uint8(v) for k, v in results.items()}
    scores["domain_fd"] = fd_blocks(classifier(), truth, images, args.num_blocks)
    rows = [truth, to_uint8(x_true * m - (1 - m)), images["naive_fill"], images["latent_search"]] + \
        ([images["replacement"]] if "replacement" in images else [])
    return images["latent_search"], scores, rows, labels, None


def colorize_observation(generator, low, refs):
    """(colour images at the generator's resolution, the grey observation: their luminance as uint8, replicated to
    three channels: also the naive colourisation)."""
    truth = inpaint_truth(generator, low, refs)
    grey = to_uint8(app.luminance(from_uint8(truth)).expand(-1, 3, -1, -1))
    return truth, grey


def colorize(args, teacher, generator, low, refs, labels, classifier, encoder=None):
    """Latent search through G for an image whose luminance is the grey input (from the encoded grey image), its
    luminance then set to the input's exactly; against the grey itself and the teacher's replacement method at equal
    wall time (when the generator works at the teacher's resolution). Class fidelity is against `labels`."""
    truth, grey = colorize_observation(generator, low, refs)
    size, t_size = truth.shape[1], teacher.backbone.config["image_size"]
    x_true, x_grey = from_uint8(truth), from_uint8(grey)
    y_obs = x_grey[:, :1]
    z0 = encode_all(args, teacher, app.adm_resize(grey, t_size), labels, encoder)
    if args.colorize_start == "fresh_chroma":  # a seed stream apart from the encoder's (seed * 1_000_003 + i)
        z0 = app.fresh_chroma(z0, sigma_max=generator.sigma_max,
                              seeds=[args.seed * 1_000_003 + 500_009 + i for i in range(len(z0))])
    raw, seconds = app.search_batches(generator, z0, labels, y_obs, torch.ones_like(y_obs),
                                      batch_size=args.batch_size, steps=args.search_steps, lr=args.search_lr,
                                      prior_weight=args.prior_weight, observe=app.luminance)
    results = {"latent_search": app.with_luminance(raw, y_obs).clamp(-1, 1), "grey": x_grey}
    scores = {"consistency_psnr_db": block_spread(psnr(app.luminance(raw), y_obs).numpy(), args.num_blocks),
              "search_seconds": seconds, "search_start": args.colorize_start}
    if size == t_size:
        steps = args.replacement_steps or app.replacement_steps_for(teacher, x_grey, labels,
                                                                    batch_size=args.batch_size, seconds=seconds)
        rep, rep_seconds = app.replacement_batches(
            teacher, x_grey, torch.ones_like(y_obs), labels, batch_size=args.batch_size, steps=steps,
            sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho,
            impose=lambda x, target: app.with_luminance(x, app.luminance(target)))
        results["replacement"] = app.with_luminance(rep, y_obs).clamp(-1, 1)
        scores.update(replacement_steps=steps, replacement_seconds=rep_seconds)
    images = {k: to_uint8(v) for k, v in results.items()}
    scores["psnr_db"] = {k: block_spread(psnr(from_uint8(v), x_true).numpy(), args.num_blocks)
                         for k, v in images.items()}
    scores["class_fidelity"] = {k: block_spread((app.classify(classifier(), v)[0] == labels).astype(np.float64),
                                                args.num_blocks) for k, v in images.items()}
    scores["domain_fd"] = fd_blocks(classifier(), truth, images, args.num_blocks)
    rows = [truth, grey, images["latent_search"]] + ([images["replacement"]] if "replacement" in images else [])
    return images["latent_search"], scores, rows, labels, None


def reals_rate(classifier, refs_or_low, labels=None):
    """Rate of real images classified with confidence >= 0.9 (as their own label when `labels` is given)."""
    pred, conf = app.classify(classifier, refs_or_low)
    hit = conf >= 0.9 if labels is None else (conf >= 0.9) & (pred == labels)
    return hit.astype(np.float64)


def transfer(args, teacher, generator, low, refs, labels, classifier, encoder=None):
    """Encode with the image's label, decode the same latent with another one."""
    num_classes = real_classes(teacher.backbone.config["num_classes"], getattr(teacher, "null_class", None))
    if not num_classes:
        raise ValueError(f"class transfer needs class-conditional models; {args.teacher} is unconditional")
    targets = app.transfer_targets(labels, num_classes, target_label=args.target_label, seed=args.seed)
    z = encode_all(args, teacher, low, labels, encoder)
    out = decode_all(args, generator, z, targets)
    kept = decode_all(args, generator, z, labels)
    pred, conf = app.classify(classifier(), out)
    reals = refs if refs is not None else low
    scores = {"target_confident_rate": block_spread(((pred == targets) & (conf >= 0.9)).astype(np.float64),
                                             args.num_blocks),
              # as their own class when the labels are real classes (not the null class)
              "real_confident_rate": block_spread(reals_rate(classifier(), reals, labels if (labels < num_classes).all()
                                                      else None), args.num_blocks),
              "targets": targets.tolist()}
    size = generator.output_size
    return out, scores, [app.nearest_enlarge(low, size), kept, out], targets, None


def interpolate(args, teacher, generator, low, refs, labels, classifier, encoder=None):
    """Pairs (2k, 2k + 1) of the images: slerp between their latents, each point decoded in one call with the
    label of the nearer end; the midpoint's class confidence is scored against real images'."""
    pairs = min(args.num_pairs, len(low) // 2)
    if pairs < 1:
        raise ValueError(f"interpolation needs at least 2 images, got {len(low)}")
    low, labels = low[:2 * pairs], labels[:2 * pairs]
    z = encode_all(args, teacher, low, labels, encoder)
    ts = np.linspace(0, 1, args.num_interp)
    strips = []
    for t in ts:
        zt = app.slerp(z[0::2], z[1::2], float(t))
        strips.append(decode_all(args, generator, zt, labels[0::2] if t <= 0.5 else labels[1::2]))
    strips = np.stack(strips, 1)  # (pairs, num_interp, H, W, C)
    os.makedirs(os.path.join(args.out_dir, "strips"), exist_ok=True)
    for k in range(pairs):
        save_grid(strips[k], os.path.join(args.out_dir, "strips", f"pair_{k:03d}.png"), ncols=args.num_interp,
                  scale=max(1, 128 // strips.shape[2]))
    mid = strips[:, args.num_interp // 2]
    _, conf = app.classify(classifier(), mid)
    reals = refs if refs is not None else low
    scores = {"midpoint_t": float(ts[args.num_interp // 2]),
              "midpoint_confident_rate": block_spread((conf >= 0.9).astype(np.float64), min(args.num_blocks, pairs)),
              "real_confident_rate": block_spread(reals_rate(classifier(), reals), args.num_blocks)}
    size = generator.output_size
    rows = [app.nearest_enlarge(low[0::2], size)] + [strips[:, j] for j in range(args.num_interp)] + \
        [app.nearest_enlarge(low[1::2], size)]
    ids = [f"pair_{k:03d}_t{j}" for k in range(pairs) for j in range(args.num_interp)]
    out_labels = np.repeat(labels[0::2], args.num_interp)
    return strips.reshape(-1, *strips.shape[2:]), scores, rows, out_labels, ids


def write_outputs(args, images, labels, rows, scores, ids):
    os.makedirs(os.path.join(args.out_dir, "images"), exist_ok=True)
    from PIL import Image
    for image, image_id in zip(images, ids):
        Image.fromarray(image).save(os.path.join(args.out_dir, "images", f"{image_id}.png"))
    n, h, w, c = images.shape
    path = os.path.join(args.out_dir, f"samples_{n}x{h}x{w}x{c}.npz")
    np.savez(path + ".tmp.npz", arr_0=images, arr_1=np.asarray(labels))
    os.replace(path + ".tmp.npz", path)
    k = min(args.grid_images, len(rows[0]))
    save_grid(np.concatenate([r[:k] for r in rows]), os.path.join(args.out_dir, "grid.png"), ncols=k,
              scale=max(1, 128 // h))
    atomic_write_text(json.dumps(scores, indent=1), os.path.join(args.out_dir, "scores.json"))
    logger.log(f"wrote {path}, grid.png (rows: {', '.join(scores['grid_rows'])}) and scores.json")


def safe_id(image_id):
    return os.path.splitext(str(image_id))[0].replace(os.sep, "_").replace(" ", "_")


def summary(scores):
    lines = []
    for key, value in scores.items():
        if isinstance(value, dict) and "mean" in value:
            lines.append(f"{key}: {value['mean']:.4g} +- {value['std'] or 0:.2g}")
        elif isinstance(value, dict):  # significant digits: KID is of order 1e-3
            lines += [f"{key} {k}: {v['mean']:.4g} +- {v['std'] or 0:.2g}" for k, v in value.items()
                      if isinstance(v, dict) and "mean" in v]
    return "\n".join(lines)


def inception(args):
    """The evaluator's FID Inception (--inception FILE, else where evaluations.inception looks), loaded once."""
    if not hasattr(inception, "model"):
        from evaluations.inception import load_inception
        inception.model = load_inception(args.inception or None)
    return inception.model


def real_floor_images(args, source, indices, size):
    """As many other images of the input as were used (not among them, seeded), at `size`: the real-vs-real floor
    of the block scores; None (logged) when the input is too small."""
    used = set(indices)
    others = [i for i in range(len(source)) if i not in used]
    if len(others) < len(indices):
        logger.log(f"no real-vs-real FD floor: {args.input} has fewer than {2 * len(indices)} images")
        return None
    pick = [others[k] for k in image_subset(len(others), len(indices), seed=1)]
    return np.stack([center_crop_arr(source.load_pil(i), size) for i in pick])


def add_real_floors(args, scores, source, indices, reference, classifier):
    """What a block of real images scores against the same references, next to every block score."""
    reals = real_floor_images(args, source, indices, reference.shape[1])
    if reals is None:
        return
    scores["domain_fd"]["real_floor"] = fd_blocks(classifier, reference, {"real": reals}, args.num_blocks)["real"]
    if "inception_kid" in scores:
        scores["inception_kid"]["real_floor"] = kid_blocks(inception(args), reference, {"real": reals},
                                                           args.num_blocks)["real"]


def run(args):
    logger.configure(args.out_dir)
    teacher, generator, encoder = load_models(args)
    source = open_source(args.input)
    indices = image_subset(len(source), args.limit)
    t_size, o_size = teacher.backbone.config["image_size"], generator.output_size
    low, refs, resized = read_images(source, indices, t_size, o_size)
    if resized:
        logger.log(f"{resized} of {len(low)} images are not {t_size} px: ADM-resized to the teacher's {t_size} px")
    cache = {}

    def classifier():
        if "model" not in cache:
            from pagoda.domain import load_or_train
            cache["model"] = load_or_train(args.classifier_data, progress=False)
        return cache["model"]

    # inpainting, colourisation: a predicted label must come from the observation, never from the complete image
    seen = {"inpaint": lambda: inpaint_observation(args, generator, low, refs)[2],
            "colorize": lambda: colorize_observation(generator, low, refs)[1]}.get(args.task, lambda: None)()
    labels, origin = choose_labels(args, teacher, source, indices, low, classifier, seen)
    images, scores, rows, out_labels, ids = TASK_RUNNERS[args.task](args, teacher, generator, low, refs, labels,
                                                                    classifier, encoder)
    if "domain_fd" in scores:
        reference = refs if args.task == "super_resolve" else inpaint_truth(generator, low, refs)
        add_real_floors(args, scores, source, indices, reference, classifier())
    scores.update(task=args.task, num_images=len(low), resized_to_teacher=resized, label_source=origin,
                  guidance_scale=args.guidance_scale if generator.guidance_input else None,
                  encoder=args.encoder, grid_rows=GRID_ROWS[args.task] + (["references"] if refs is not None
                                                                           and args.task == "super_resolve" else []))
    logger.log(summary(scores))
    write_outputs(args, images, out_labels, rows, scores, ids or [safe_id(source.ids[i]) for i in indices])
    return scores


TASK_RUNNERS = {"super_resolve": super_resolve, "inpaint": inpaint, "colorize": colorize, "transfer": transfer,
                "interpolate": interpolate}
GRID_ROWS = {"super_resolve": ["inputs (enlarged)", "bicubic", "super-resolved"],
             "inpaint": ["references", "observed (missing black)", "naive fill", "latent search",
                         "teacher replacement (equal wall time, teacher-resolution generators only)"],
             "colorize": ["references", "grey input (the naive output)", "latent search",
                          "teacher replacement (equal wall time, teacher-resolution generators only)"],
             "transfer": ["inputs (enlarged)", "decoded with their own label", "decoded with the target label"],
             "interpolate": ["first images (enlarged)", "slerp t = 0 .. 1, one row per t", "second images (enlarged)"]}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__, constraints=CONSTRAINTS,
                                    required={"input": "a folder of images or an ADM .npz",
                                              "teacher": "the teacher export", "generator": "a generator export"})
    try:
        with run_lock.hold(args.out_dir, what="output folder"):
            return run(args)
    except (ValueError, FileNotFoundError, run_lock.FolderLockedError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
