"""ADM evaluator protocol, PyTorch port: FID, sFID, KID, Inception Score and precision/recall of a sample batch.

    python -m evaluations.evaluator REF.npz SAMPLE.npz [--json out.json] [--inception PATH] [--batch 100]
                                    [--device cpu|cuda] [--cache_dir DIR]

REF and SAMPLE are ADM-format npz files (`arr_0`: uint8 NHWC images; `arr_1` labels are ignored); SAMPLE may be a
folder of npz files, concatenated in sorted order. A reference batch with precomputed `mu, sigma, mu_s, sigma_s`
(the ADM VIRTUAL_* batches) is used as-is for FID/sFID; its images are still needed for KID and precision/recall,
which are skipped (None) when they are absent. Inception features and statistics of each side are cached under
--cache_dir, keyed by the files' paths, sizes and mtimes and the Inception weights.

Protocol details that match the TF evaluator: TF-legacy bilinear resize to 299 and (x-128)/128 (inside the
network), FID on pool_3, sFID on mixed_6/conv[..., :7], IS from softmax(pool_3 @ W) over 1008 classes in splits
of 5000, precision/recall with k=3 against the reference images. KID is not in the TF evaluator: it follows
torch-fidelity (cubic kernel on pool_3, 100 subsets of up to 1000, mean and ddof-0 std).
"""

import argparse
import hashlib
import json
import math
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


from .inception import load_inception
from .metrics import FeatureStats, inception_score, kid, load_reference_stats, precision_recall

PROTOCOL = "ADM evaluator protocol, PyTorch port"
IMAGE_KEYS = ("arr_0", "data")
IS_SPLIT_SIZE = 5000
INCEPTION_PRECISIONS = ("fp32", "bf16")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pagoda" / "evaluator"


# --- reading ADM npz batches ------------------------------------------------------------------------------------

def npz_files(path):
    """The npz files behind a batch argument: the file itself, or a folder's *.npz in sorted order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"no .npz files in the folder {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"batch not found: {path}")
    return [path]


def image_key(path):
    """The images' member name in an npz (`arr_0`, or `data` as some samplers write), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} cannot be read as an npz ({exc}); the file is truncated or damaged: write it "
                         "again") from exc
    return next((key for key in IMAGE_KEYS if f"{key}.npy" in names), None)


@contextmanager
def _open_npy(path, key):
    """(shape, dtype, reader) of an npz member; reader(count) streams the next `count` images."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            array = np.load(path)[key]
            yield array.shape, array.dtype, _array_reader(array)
            return
        shape, fortran_order, dtype = read_header[version](f)
        if fortran_order:
            array = np.load(path)[key]
            yield array.shape, array.dtype, _array_reader(array)
            return
        item_bytes = dtype.itemsize * int(np.prod(shape[1:]))
        # bytearray keeps the batch writable, which torch.from_numpy wants.
        yield shape, dtype, lambda count: np.frombuffer(bytearray(f.read(count * item_bytes)), dtype).reshape(
            count, *shape[1:])


def _array_reader(array):
    position = [0]

    def read(count):
        batch = array[position[0]:position[0] + count]
        position[0] += count
        return batch
    return read


def _check_images(path, shape, dtype):
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{path}: images must be uint8 NHWC with 3 channels (ADM format), "
                         f"got {dtype} array of shape {tuple(shape)}")


def iter_image_batches(files, batch):
    """uint8 NHWC batches over every image of `files`, streamed (never the whole array in memory)."""
    for path in files:
        key = image_key(path)
        if key is None:
            raise ValueError(f"{path} has no images (expected one of {IMAGE_KEYS})")
        with _open_npy(path, key) as (shape, dtype, read):
            _check_images(path, shape, dtype)
            for start in range(0, shape[0], batch):
                yield read(min(batch, shape[0] - start))


def count_images(files):
    total = 0
    for path in files:
        key = image_key(path)
        if key is None:
            return 0
        with _open_npy(path, key) as (shape, dtype, _):
            _check_images(path, shape, dtype)
            total += shape[0]
    return total


def image_resolution(files):
    """(H, W) of the images of `files`, or None when they hold none; files of mixed resolutions are an error."""
    sizes = {}
    for path in files:
        key = image_key(path)
        if key is not None:
            with _open_npy(path, key) as (shape, dtype, _):
                _check_images(path, shape, dtype)
                sizes.setdefault(tuple(int(s) for s in shape[1:3]), path)
    if len(sizes) > 1:
        (a, path_a), (b, path_b) = list(sizes.items())[:2]
        raise ValueError(f"the batch mixes image resolutions: {path_a} holds {a[0]}x{a[1]}, {path_b} holds "
                         f"{b[0]}x{b[1]}; evaluate one resolution at a time")
    return next(iter(sizes), None)


def check_same_resolution(ref, sample):
    """Refuse to compare images of two resolutions (the metrics would measure the resize, not the model)."""
    ref_size, sample_size = image_resolution(npz_files(ref)), image_resolution(npz_files(sample))
    if ref_size is not None and sample_size is not None and ref_size != sample_size:
        (h, w), (rh, rw) = sample_size, ref_size
        raise ValueError(f"the sample batch {sample} holds {h}x{w} images but the reference batch {ref} holds "
                         f"{rh}x{rw}: compare one resolution, i.e. sample at {rh}x{rw} or make a {h}x{w} reference "
                         f"(scripts/make_reference.py --image_size {h})")


def check_finite_stats(stats, path, source):
    """Refuse statistics holding NaN or inf (they would print `FID nan` as if it were a score)."""
    names = [name for name, s in zip(("pool (mu, sigma)", "spatial (mu_s, sigma_s)"), stats)
             if not (np.isfinite(s.mu).all() and np.isfinite(s.sigma).all())]
    if names:
        raise ValueError(f"the statistics of {path} ({source}) hold NaN or inf values in {', '.join(names)}: the "
                         "file is damaged; recreate it (or delete the feature cache entry)")


# --- features, statistics and their cache -----------------------------------------------------------------------

def cache_file(files, weights_id, cache_dir):
    """Cache path for the features of `files`: keyed by path, size, mtime and the Inception weights."""
    signature = [(str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
    digest = hashlib.sha1(json.dumps([signature, weights_id]).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{Path(files[0]).stem}-{digest}.npz"


def compute_features(model, files, *, batch, desc="features", precision="fp32"):
    """Inception pool features (float32) and (pool, spatial) FeatureStats over every image of `files`; with
    precision 'bf16' the network's convolutions run under bf16 autocast (statistics stay float64)."""
    total = count_images(files)
    pool, spatial = [], []
    device_type = next(model.parameters()).device.type
    for images in tqdm(iter_image_batches(files, batch), total=math.ceil(total / batch), desc=desc, disable=None):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(images)
        pool.append(out["pool"].float().cpu())
        spatial.append(out["spatial"].float().cpu())
    pool, spatial = torch.cat(pool), torch.cat(spatial)
    return pool.numpy(), (FeatureStats.from_features(pool), FeatureStats.from_features(spatial))


def side_features(path, model, *, batch, cache_dir=None, desc="features", precision="fp32"):
    """Everything the metrics need from one side: {"pool", "stats", "num_images", "stats_source"}.

    `pool` is None when the npz has no images; `stats` are the npz's precomputed ones when present.
    """
    files = npz_files(path)
    precomputed = load_reference_stats(files[0]) if len(files) == 1 else None
    side = {"pool": None, "stats": precomputed, "num_images": count_images(files),
            "stats_source": "precomputed in the npz" if precomputed else "computed from the images"}
    if side["num_images"] == 0:
        if precomputed is None:
            raise ValueError(f"{path} has neither images ({' or '.join(IMAGE_KEYS)}) nor statistics (mu, sigma, ...)")
        return side
    weights_id = model.weights_id if precision == "fp32" else f"{model.weights_id}:{precision}"
    cached = cache_file(files, weights_id, cache_dir) if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached) as npz:
            pool, stats = npz["pool"], load_reference_stats(npz)
    else:
        pool, stats = compute_features(model, files, batch=batch, desc=desc, precision=precision)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temp = cached.with_suffix(".tmp.npz")
            np.savez(temp, pool=pool, mu=stats[0].mu, sigma=stats[0].sigma, mu_s=stats[1].mu, sigma_s=stats[1].sigma)
            os.replace(temp, cached)
    side["pool"] = pool
    side["stats"] = precomputed or stats
    return side


# --- the evaluation ---------------------------------------------------------------------------------------------

def _resolve_inception(inception, device):
    if isinstance(inception, torch.nn.Module):
        return inception.to(device).eval()
    return load_inception(inception, device=device)


def evaluate(ref, sample, *, inception=None, batch=100, device="cpu", cache_dir=None, precision="fp32"):
    """All ADM metrics of `sample` against `ref` as a dict (None for a metric that cannot be computed, see notes).

    `inception`: None (default weight search), a weight-file path, or a ready FIDInceptionV3 module.
    `precision`: 'fp32' (scores of record) or 'bf16' (Inception under bf16 autocast, both sides; see
    bench/inception_precision.py for how far that moves FID and KID).
    """
    if precision not in INCEPTION_PRECISIONS:
        raise ValueError(f"Inception precision must be one of {list(INCEPTION_PRECISIONS)}, got {precision!r}")
    check_same_resolution(ref, sample)
    model = _resolve_inception(inception, device)
    ref_side = side_features(ref, model, batch=batch, cache_dir=cache_dir, desc="reference", precision=precision)
    check_finite_stats(ref_side["stats"], ref, ref_side["stats_source"])
    sample_side = side_features(sample, model, batch=batch, cache_dir=cache_dir, desc="samples", precision=precision)
    check_finite_stats(sample_side["stats"], sample, sample_side["stats_source"])
    if sample_side["pool"] is None:
        raise ValueError(f"the sample batch {sample} has no images; IS and precision/recall need them")
    notes = [f"reference statistics {ref_side['stats_source']}"]
    result = {
        "protocol": PROTOCOL,
        "inception_weights": model.weights_id,
        "inception_precision": precision,
        "num_ref_images": ref_side["num_images"],
        "num_sample_images": sample_side["num_images"],
        "fid": ref_side["stats"][0].frechet_distance(sample_side["stats"][0]),
        "sfid": ref_side["stats"][1].frechet_distance(sample_side["stats"][1]),
        "kid": None, "kid_std": None, "inception_score": None, "precision": None, "recall": None,
    }
    if model.fc is not None:
        logits = model.logits_from_pool(torch.from_numpy(sample_side["pool"]).to(model.fc.weight.device))
        result["inception_score"] = inception_score(logits.cpu(), split_size=IS_SPLIT_SIZE)
    else:
        notes.append("Inception Score skipped: these weights have no classifier (use the pytorch-fid file)")
    if ref_side["pool"] is not None:
        result["precision"], result["recall"] = precision_recall(ref_side["pool"], sample_side["pool"], device=device)
        result["kid"], result["kid_std"] = kid(ref_side["pool"], sample_side["pool"])
    else:
        notes.append("precision/recall and KID skipped: the reference npz has statistics but no images")
    result["notes"] = notes
    return result


def format_report(result):
    def number(value):
        return "n/a" if value is None else f"{value:.4f}"

    # KID is of order 1e-3 for good models: fixed decimals would hide it, so significant digits.
    kid_text = "n/a" if result["kid"] is None else f"{result['kid']:.6g} +- {result['kid_std']:.6g}"
    rows = [("FID", number(result["fid"])), ("sFID", number(result["sfid"])), ("KID", kid_text),
            ("Inception Score", number(result["inception_score"])),
            ("Precision", number(result["precision"])), ("Recall", number(result["recall"])),
            ("reference images", str(result["num_ref_images"])), ("sample images", str(result["num_sample_images"])),
            ("Inception weights", result["inception_weights"])]
    width = max(len(name) for name, _ in rows)
    lines = [result["protocol"]] + [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += [f"  note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref_batch", help="reference batch npz (ADM format, may carry mu/sigma/mu_s/sigma_s); a "
                        "local path (`python -m pagoda.evaluate` also takes gs://, az:// and Azure blob https://, "
                        "fetched once into ~/.cache/pagoda)")
    parser.add_argument("sample_batch", help="sample batch npz, or a folder of npz files; local or remote as "
                        "ref_batch")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--inception", default=None, help="Inception weight file (pytorch-fid .pth or TorchScript)")
    parser.add_argument("--batch", type=_positive_int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="feature cache; '' disables it")
    parser.add_argument("--precision", choices=INCEPTION_PRECISIONS, default="fp32",
                        help="Inception under bf16 autocast: faster, scores move (bench/inception_precision.py)")
    return parser


REMOTE_SCHEMES = ("gs://", "az://", "https://", "http://")


def _local_only(path, *, flag):
    """This module reads local files only, so that evaluations/ needs nothing from pagoda; pagoda.evaluate hands
    main() a `localize` that fetches remote paths."""
    if isinstance(path, str) and path.startswith(REMOTE_SCHEMES):
        raise ValueError(f"{flag} {path} is remote: run `python -m pagoda.evaluate` (the same command line), which "
                         "fetches it, or pass a local copy")
    return path


def main(argv=None, *, localize=_local_only):
    """The command line; `localize(path, flag=...)` turns each input path into a local one."""
    args = create_argparser().parse_args(argv)
    try:
        if args.json and args.json.startswith(REMOTE_SCHEMES):
            raise ValueError(f"--json {args.json}: outputs go to a local file")
        args.ref_batch, args.sample_batch = (localize(p, flag=f) for p, f in
                                             ((args.ref_batch, "ref_batch"), (args.sample_batch, "sample_batch")))
        args.inception = localize(args.inception, flag="inception") if args.inception else None
        result = evaluate(args.ref_batch, args.sample_batch, inception=args.inception, batch=args.batch,
                          device=args.device, cache_dir=args.cache_dir or None, precision=args.precision)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # bad inputs: the message, exit 1, no score
        raise SystemExit(f"error: {exc}") from exc
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
