"""Domain feature network: a small classifier trained on the user's own labelled images, for evaluation only.

    python -m pagoda.domain --data_dir bundled:mnist [--heldout_dir DIR] [--input_size 32] [--seed 0]
                            [--out PATH] [--cache_dir DIR]

FID's Inception network knows ImageNet, not MNIST digits or clothes. A CNN trained on the dataset itself gives a
feature space in which FD, KID and precision/recall see the domain's own variations, and its logits give class
fidelity: how often a class-conditional sample is recognised as the class it was asked for. The numbers are only
comparable between runs that use the same classifier export (the sidecar's record says which images trained it).

Every image, real or generated and of any resolution, goes through `prepare()` (bilinear, antialiased resize to
the one input size), and half of every training batch is down-sampled to half size and back, so samples from
generators of lower resolution are read as well as full-size ones. The classifier never takes part in training
a generator.

Training is bit-reproducible for a given torch thread count, which the record keeps. On a CPU shared with other
jobs, OMP_NUM_THREADS=1 can be far faster than more threads.
"""

import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evaluations.metrics import FeatureStats, kid, precision_recall

from . import checkpoint, script_util
from .image_datasets import center_crop_arr, heldout_data_dir, open_source, source_identity

KIND = "domain_classifier"
# Part of every cache key: bump it when training changes in a way the settings do not show, so that classifiers
# cached by older code are retrained instead of silently reused.
VERSION = 1
# Two epochs: on the MNIST digits one nearly reaches the test accuracy two give, and the second leaves a margin for
# harder data while training stays a matter of seconds on one CPU thread.
DEFAULTS = dict(input_size=32, epochs=2, batch_size=128, lr=3e-3, seed=0, heldout_fraction=0.1,
                widths=(16, 32, 64), feature_dim=128)
# Settings the first classifiers were made without: recorded only when set, so that their cache keys still hold.
OPTIONAL = dict(batch_norm=False, random_flip=False)
# Datasets whose defaults differ (what an unset setting means for them). Colour photos need a wider network with
# batch norm, more epochs and mirrored copies (a mirrored photo is still the same class; a mirrored digit is not).
DATASET_DEFAULTS = {
    "bundled:cifar10": dict(widths=(32, 64, 128), feature_dim=256, batch_norm=True, random_flip=True, epochs=6),
}
# Independent random streams drawn from one user seed, so e.g. changing the split never changes the init.
_STREAMS = {"init": 0, "split": 1, "batches": 2}


def default_cache_dir():
    """$XDG_CACHE_HOME (or ~/.cache) / pagoda / domain, read at call time so tests can redirect it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pagoda" / "domain"


def _stream_seed(seed, stream):
    # SeedSequence mixes (seed, stream) so nearby seeds and the different streams give unrelated numbers.
    return int(np.random.SeedSequence([seed, _STREAMS[stream]]).generate_state(1, dtype=np.uint64)[0])


# --- the network ------------------------------------------------------------------------------------------------

class DomainClassifier(nn.Module):
    """conv3x3 (+ batch norm) + ReLU + 2x2 max pool per width, then the flattened map -> Linear + ReLU to
    `feature_dim` (the features) -> Linear to the classes. Input: (N, 3, input_size, input_size) in [-1, 1], as
    `prepare()` makes.

    The final map is flattened rather than averaged: with global average pooling the same network is clearly less
    accurate, since a digit is told apart by where its strokes are. Channels-last layout because the CPU max pool
    and convolutions run faster in it.
    """

    def __init__(self, num_classes, *, input_size=32, widths=(16, 32, 64), feature_dim=128, batch_norm=False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a domain classifier needs labelled data with >= 2 classes, got {num_classes}")
        if input_size % 2 ** len(widths):
            raise ValueError(f"input_size {input_size} must be divisible by 2^{len(widths)} (one pool per width)")
        self.config = dict(num_classes=int(num_classes), input_size=int(input_size),
                           widths=[int(w) for w in widths], feature_dim=int(feature_dim), batch_norm=bool(batch_norm))
        layers, channels = [], 3
        for width in widths:
            if batch_norm:  # the convolution's bias would be cancelled by the norm's mean
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1)]
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.trunk = nn.Sequential(*layers)
        final_side = input_size // 2 ** len(widths)
        self.embed = nn.Linear(channels * final_side ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.to(memory_format=torch.channels_last)

    @property
    def input_size(self):
        return self.config["input_size"]

    def features(self, x):
        """(penultimate features (N, feature_dim) float32, logits (N, num_classes))."""
        size = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"expected (N, 3, {size}, {size}) input from prepare(), got {tuple(x.shape)}")
        trunk = self.trunk(x.contiguous(memory_format=torch.channels_last))
        feats = F.relu(self.embed(trunk.flatten(1)))
        return feats.float(), self.head(feats)

    def forward(self, x):
        return self.features(x)[1]


def _resize(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def prepare(images, input_size):
    """uint8 NHWC (or grey NHW, or 1-channel) images of any size -> float NCHW RGB in [-1, 1] at input_size.

    The one resize every image goes through (bilinear, antialiased when shrinking), so rows of 16 px and 32 px
    samples are read the same way. Grey is repeated to 3 channels.
    """
    if not torch.is_tensor(images):
        images = np.asarray(images)
        # Sources share read-only arrays; torch warns on wrapping those, and a uint8 copy is cheap.
        x = torch.from_numpy(images if images.flags.writeable else images.copy())
    else:
        x = images
    if x.dtype != torch.uint8:
        raise ValueError(f"prepare() takes uint8 images in [0, 255], got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = _resize(x, input_size)
    return x.contiguous()


def _round_trip(x, factor):
    """Down to 1/factor of the size and back up: how a generator of that lower resolution looks after prepare()."""
    size = x.shape[-1]
    return _resize(_resize(x, size // factor), size)


def _half_round_trip(x):
    return _round_trip(x, 2)


# --- features and scores ----------------------------------------------------------------------------------------

@torch.no_grad()
def _run(model, images, *, batch, transform=None):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for start in range(0, len(images), batch):
        x = prepare(images[start:start + batch], model.input_size).to(device)
        f, z = model.features(transform(x) if transform else x)
        feats.append(f.double().cpu())
        logits.append(z.float().cpu())
    model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def domain_features(model, images_uint8_nhwc, *, batch=500):
    """(features float64 (N, D), logits float32 (N, classes)) as numpy arrays of uint8 images in any form
    prepare() takes; no gradients, eval mode, `batch` images at a time."""
    if len(images_uint8_nhwc) == 0:
        raise ValueError("domain_features needs at least one image")
    return _run(model, images_uint8_nhwc, batch=batch)


def class_fidelity(logits, labels):
    """Fraction of samples whose most likely class is the label they were generated for."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (len(logits),) or len(labels) == 0:
        raise ValueError(f"need (N, classes) logits and N labels, got {logits.shape} and {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))


def domain_scores(real_feats, fake_feats, fake_logits=None, fake_labels=None, *, kid_subsets=100,
                  kid_subset_size=1000, seed=0):
    """fd, kid, kid_std, precision, recall (k=3) in the domain feature space, and class_fidelity when the
    samples' logits and requested labels are given."""
    if (fake_logits is None) != (fake_labels is None):
        raise ValueError("class fidelity needs both fake_logits and fake_labels")
    real_feats, fake_feats = np.asarray(real_feats), np.asarray(fake_feats)
    scores = {"fd": FeatureStats.from_features(real_feats).frechet_distance(FeatureStats.from_features(fake_feats))}
    scores["kid"], scores["kid_std"] = kid(real_feats, fake_feats, num_subsets=kid_subsets,
                                           subset_size=kid_subset_size, seed=seed)
    scores["precision"], scores["recall"] = precision_recall(real_feats, fake_feats, k=3)
    if fake_labels is not None:
        scores["class_fidelity"] = class_fidelity(fake_logits, fake_labels)
    scores.update(num_real=len(real_feats), num_fake=len(fake_feats))
    return scores


# --- training -----------------------------------------------------------------------------------------------------

def cropped_images(source, image_size, indices=None):
    """uint8 NHWC RGB ADM centre crops of the source's items (all, or `indices`), as training data is cropped."""
    indices = range(len(source)) if indices is None else indices
    out = np.empty((len(indices), image_size, image_size, 3), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = center_crop_arr(source.load_pil(index), image_size)
    return out


def _split(num_images, fraction, seed):
    """(train indices, held-out indices), sorted: a seeded `fraction` of the source is held out."""
    count = round(num_images * fraction)
    if not 0 < count < num_images:
        raise ValueError(f"heldout_fraction {fraction} of {num_images} images leaves no training or held-out image")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(_stream_seed(seed, "split")))
    return sorted(order[count:].tolist()), sorted(order[:count].tolist())


def _ids_digest(source, indices):
    return hashlib.sha1(json.dumps([source.ids[i] for i in indices]).encode()).hexdigest()


def _resolve_heldout(data_dir, heldout_dir):
    """The held-out data actually used: an explicit folder, the bundled test split, or None (a fraction)."""
    return os.fspath(heldout_dir) if heldout_dir else heldout_data_dir(data_dir)


def _settings(data_dir, overrides):
    """Every setting that changes the weights or the record, JSON-normalised (tuples as lists) so that a
    sidecar read back compares equal."""
    unknown = sorted(set(overrides) - set(DEFAULTS) - set(OPTIONAL) - {"heldout_dir"})
    if unknown:
        raise TypeError(f"unknown domain classifier settings {unknown}; known: {sorted({**DEFAULTS, **OPTIONAL})} "
                        "and heldout_dir")
    settings = {**DEFAULTS, **DATASET_DEFAULTS.get(os.fspath(data_dir), {}),
                **{k: v for k, v in overrides.items() if k != "heldout_dir"}}
    for key, default in OPTIONAL.items():
        if settings.get(key, default) == default:
            settings.pop(key, None)
    settings["heldout_dir"] = _resolve_heldout(data_dir, overrides.get("heldout_dir"))
    if settings["heldout_dir"] is not None:
        settings["heldout_fraction"] = None  # unused, so it must not make a cached classifier look different
    settings["data_dir"] = os.fspath(data_dir)
    return json.loads(json.dumps(settings))


def _open_data(settings):
    """(train source, train indices, held-out source, held-out indices, held-out description)."""
    source = open_source(settings["data_dir"])
    if not source.conditional or source.num_classes < 2:
        raise ValueError(f"{settings['data_dir']} has no class labels; a domain classifier needs labelled data")
    if settings["heldout_dir"] is None:
        train, held = _split(len(source), settings["heldout_fraction"], settings["seed"])
        spec = {"kind": "fraction of data_dir", "fraction": settings["heldout_fraction"], "seed": settings["seed"],
                "identity": source_identity(source), "ids_digest": _ids_digest(source, held)}
        return source, train, source, held, spec
    heldout = open_source(settings["heldout_dir"])
    if heldout.num_classes > source.num_classes or not heldout.conditional:
        raise ValueError(f"held-out data {settings['heldout_dir']} has {heldout.num_classes} classes "
                         f"(conditional={heldout.conditional}); {settings['data_dir']} has {source.num_classes}")
    spec = {"kind": "data_dir", "data_dir": settings["heldout_dir"], "identity": source_identity(heldout)}
    return source, list(range(len(source))), heldout, list(range(len(heldout))), spec


def _fit(model, images, labels, *, epochs, batch_size, lr, seed, progress, random_flip=False):
    """Adam with a one-cycle schedule; order and augmentation (random_flip: a seeded half mirrored) from one seeded
    generator.
    Returns (wall seconds, CPU seconds of this process): on a shared machine the wall time alone misleads."""
    generator = torch.Generator().manual_seed(_stream_seed(seed, "batches"))
    steps_per_epoch = -(-len(images) // batch_size)  # the last, smaller batch is kept: tiny sets still train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    with tqdm(total=epochs * steps_per_epoch, desc="domain classifier", disable=None if progress else True) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for batch in torch.split(order, batch_size):
                x = prepare(images[batch.numpy()], model.input_size)
                if random_flip:
                    mirrored = torch.rand(len(batch), generator=generator) < 0.5
                    x[mirrored] = x[mirrored].flip(-1)
                # A seeded half of the batch looks like a half-resolution sample, so those are read well too.
                small = torch.randperm(len(batch), generator=generator)[:len(batch) // 2]
                if len(small):
                    x[small] = _half_round_trip(x[small])
                loss = F.cross_entropy(model(x), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _heldout_accuracy(model, source, indices):
    """Accuracy at input_size, with the half-size round trip, and on half-size ADM crops read by prepare()."""
    size = model.input_size
    labels = np.asarray(source.labels)[indices]
    full = cropped_images(source, size, indices)
    half = cropped_images(source, size // 2, indices)
    # domain_features' batch size, so that recomputing these numbers from an export gives them exactly.
    return {"accuracy": class_fidelity(_run(model, full, batch=500)[1], labels),
            "accuracy_half_round_trip": class_fidelity(_run(model, full, batch=500,
                                                            transform=_half_round_trip)[1], labels),
            "accuracy_half_crop": class_fidelity(_run(model, half, batch=500)[1], labels),
            "accuracy_quarter_round_trip": class_fidelity(_run(model, full, batch=500, transform=lambda x:
                                                               _round_trip(x, 4))[1], labels)}


def train_domain_classifier(data_dir, *, progress=True, **settings):
    """Train a DomainClassifier on `data_dir`'s labelled images; returns (model in eval mode, record).

    settings (defaults in DEFAULTS and OPTIONAL, for some datasets DATASET_DEFAULTS): input_size, epochs, batch_size,
    lr, seed, widths, feature_dim, batch_norm, random_flip, heldout_dir (default: heldout_data_dir(data_dir)) and
    heldout_fraction (used only without a held-out dir: that seeded fraction of data_dir is held out and never
    trained on). Deterministic: the same settings and
    thread count give torch.equal weights on CPU.
    """
    settings = _settings(data_dir, settings)
    source, train, heldout, held, heldout_spec = _open_data(settings)
    size = settings["input_size"]
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's global RNG alone
        torch.manual_seed(_stream_seed(settings["seed"], "init"))
        model = DomainClassifier(source.num_classes, input_size=size, widths=settings["widths"],
                                 feature_dim=settings["feature_dim"], batch_norm=settings.get("batch_norm", False))
    images, labels = cropped_images(source, size, train), np.asarray(source.labels)[train]
    seconds, cpu_seconds = _fit(model, images, labels, epochs=settings["epochs"],
                                batch_size=settings["batch_size"], lr=settings["lr"], seed=settings["seed"],
                                progress=progress, random_flip=settings.get("random_flip", False))
    model.eval()
    record = {
        "version": VERSION, "settings": settings, "config": model.config,
        "train_data": {"data_dir": settings["data_dir"], "identity": source_identity(source),
                       "num_images": len(train),
                       "images": "all" if heldout is not source else "all but the held-out fraction"},
        "heldout": {**heldout_spec, "num_images": len(held)}, "half_size": size // 2,
        **_heldout_accuracy(model, heldout, held),
        "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
    }
    return model, record


# --- export, loading and the cache --------------------------------------------------------------------------------

def export_domain_classifier(model, record, path):
    """The project's export format: a plain state dict at `path` and a JSON sidecar beside it (kind, constructor
    config, the settings it was trained with and its record), both written atomically."""
    sidecar = {"kind": KIND, "config": model.config, "settings": record["settings"], "record": record}
    checkpoint.export_network(model.state_dict(), sidecar, os.fspath(path))


def load_domain_classifier(path):
    """A DomainClassifier in eval mode from an export (strict load, content hash checked); its sidecar record is
    `model.record`."""
    path = os.fspath(path)
    sidecar = checkpoint.read_sidecar(path)
    if sidecar is None or sidecar.get("kind") != KIND:
        found = "no sidecar" if sidecar is None else f"a {sidecar.get('kind')!r} sidecar"
        raise ValueError(f"{path} has {found}; a {KIND!r} export (from python -m pagoda.domain) is needed")
    state_dict, sidecar = checkpoint.load_export(path, expect_kind=KIND)
    model = DomainClassifier(**sidecar["config"])
    checkpoint.load_state_dict_strict(model, state_dict, source=path)
    model.record = sidecar["record"]
    return model.eval()


def cache_path(data_dir, *, cache_dir=None, **settings):
    """Where load_or_train keeps the classifier for these data and settings. The key hashes the training and
    held-out data identities (their digests: the same name with other images is another key) and the settings."""
    settings = _settings(data_dir, settings)
    source, _, heldout, _, heldout_spec = _open_data(settings)
    key = json.dumps({"version": VERSION, "train": source_identity(source)["digest"],
                      "heldout": heldout_spec["identity"]["digest"], "settings": settings}, sort_keys=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.fspath(data_dir).rstrip("/\\")) or "data")
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    return folder / f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt", settings


def _cached(path, settings):
    """The cached classifier, or None when absent, made with other settings, or unreadable (warned)."""
    if not path.is_file():
        return None
    sidecar = checkpoint.read_sidecar(os.fspath(path))
    if sidecar is None or sidecar.get("kind") != KIND or sidecar.get("settings") != settings:
        return None
    try:
        return load_domain_classifier(path)
    except Exception as exc:  # a truncated file fails inside torch.load in several ways; never use it
        warnings.warn(f"ignoring the unreadable cached domain classifier {path} ({type(exc).__name__}: {exc}); "
                      "training a new one", stacklevel=3)
        return None


def load_or_train(data_dir, *, cache_dir=None, progress=True, **settings):
    """The classifier for `data_dir` and these settings: from the cache when a matching export is there,
    else trained (train_domain_classifier) and exported to the cache. cache_dir defaults to
    default_cache_dir(). The model's sidecar record is `model.record`, its file `model.path`, and `model.cached`
    says whether it came from the cache."""
    path, resolved = cache_path(data_dir, cache_dir=cache_dir, **settings)
    model = _cached(path, resolved)
    cached = model is not None
    if not cached:
        model, record = train_domain_classifier(data_dir, progress=progress, **settings)
        export_domain_classifier(model, record, path)
        model.record = record
    model.path, model.cached = os.fspath(path), cached
    return model


# --- command line -------------------------------------------------------------------------------------------------

def flag_groups():
    """The command line's flags (a function: --cache_dir's default reads the environment at call time)."""
    F, _c = script_util.Flag, script_util
    return {"domain": dict(
        data_dir=F("bundled:mnist", "the labelled training images: bundled:<name>, a folder or an ADM .npz"),
        heldout_dir=F("", "labelled images never trained on, for the accuracy; '': the held-out split of a bundled "
                      "--data_dir, else --heldout_fraction of --data_dir"),
        heldout_fraction=F(DEFAULTS["heldout_fraction"], "without a held-out folder: the seeded fraction of "
                           "--data_dir held out and never trained on", _c.in_range(0, 1)),
        input_size=F(DEFAULTS["input_size"], "side in pixels every image is resized to before the classifier",
                     _c.at_least(8)),
        epochs=F(0, "passes over the training images; 0: the data's default (DATASET_DEFAULTS, else DEFAULTS), so "
                 "the command caches what compare.py uses", _c.at_least(0)),
        batch_size=F(DEFAULTS["batch_size"], "images per training step", _c.at_least(1)),
        lr=F(DEFAULTS["lr"], "learning rate of the classifier", _c.greater_than(0)),
        seed=F(DEFAULTS["seed"], "seed of the initial weights, the held-out split and the batch order",
               _c.at_least(0)),
        out=F("", "also export the classifier to this file (required with --cache_dir '')"),
        cache_dir=F(str(default_cache_dir()), "cache of trained classifiers, keyed by data and settings (a cached "
                    "one is reused); '': no cache"),
    )}


def describe(record):
    """A few lines on what trained the classifier and how accurate it is on the held-out images."""
    heldout, size = record["heldout"], record["settings"]["input_size"]
    where = heldout.get("data_dir") or f"{heldout['fraction']:g} of the training data (seed {heldout['seed']})"
    return "\n".join([
        f"trained on {record['train_data']['num_images']} images of {record['train_data']['data_dir']} "
        f"in {record['train_seconds']:.1f} s (CPU {record['train_cpu_seconds']:.1f} s, torch threads: "
        f"{record['torch_threads']})",
        f"held-out accuracy on {heldout['num_images']} images of {where}: {record['accuracy']:.4f} at {size} px, "
        f"{record['accuracy_half_round_trip']:.4f} after {size} -> {record['half_size']} -> {size} px, "
        f"{record['accuracy_half_crop']:.4f} for {record['half_size']} px crops"
        + (f", {record['accuracy_quarter_round_trip']:.4f} after {size} -> {size // 4} -> {size} px"
           if "accuracy_quarter_round_trip" in record else "")])


def main(argv=None):
    parser = script_util.create_parser(flag_groups(), description=__doc__.split("\n")[0])
    args = script_util.parse_args(parser, None, argv)
    script_util.handle_dry_run(args)
    script_util.resolve_paths(args)
    if not args.cache_dir and not args.out:
        parser.error("with --cache_dir '' (no cache) --out is required, or the classifier would be lost")
    settings = dict(heldout_dir=args.heldout_dir or None, heldout_fraction=args.heldout_fraction,
                    input_size=args.input_size, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    **({"epochs": args.epochs} if args.epochs else {}))
    if args.cache_dir:
        model = load_or_train(args.data_dir, cache_dir=args.cache_dir, **settings)
        print(f"{'found in the cache' if model.cached else 'cached'}: {model.path}")
    else:
        model, model.record = train_domain_classifier(args.data_dir, **settings)
    print(describe(model.record))
    if args.out:
        export_domain_classifier(model, model.record, args.out)
        print(f"wrote {args.out} and {checkpoint.sidecar_path(args.out)}")
    return model


if __name__ == "__main__":
    main()
