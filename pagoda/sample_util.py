"""Sampling jobs: any number of samples from a teacher (multi-step) or a generator (one step) into ADM npz files.

Sample i has its own seed (base_seed + i) for its noise and, with uniform labels, its label; samples are made
in fixed chunks (independent of the process count and of which rank makes them) and each chunk is written
atomically as parts/part_<c>.npz, so the output is identical for 1 or N processes and a rerun only makes the
missing chunks. The finished file is samples_<N>x<H>x<W>x3.npz with arr_0 (uint8 NHWC) and arr_1 (labels).
A folder holds the samples of one model file: parts of that file made before it was retrained, or with other
settings, are made again; samples of another model (another content hash, at another path) are refused
(claim_parts), never deleted. A model is known by its sidecar's content hash, so a symlink or copy is the same.
"""

import glob
import json
import os
import time

import numpy as np
import torch

from . import checkpoint, logger
from .checkpoint import atomic_write_text, read_json_record
from .faults import kill_point
from .image_util import save_grid, to_uint8
from .model_io import load_generator, load_teacher, real_classes
from .random_util import StackedRandomGenerator
from .sampling import euler_sample, heun_sample, karras_sigmas, stochastic_sample, classifier_free_guidance


def sample_labels(indices, *, num_classes, mode="uniform", base_seed=0, device="cpu"):
    """Labels of samples `indices`: 'uniform' draws each from its own seed, 'balanced' cycles i % num_classes."""
    if not num_classes:
        return None
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if mode == "balanced":
        return (idx % num_classes).to(device)
    if mode != "uniform":
        raise ValueError(f"label mode must be 'uniform' or 'balanced', got {mode!r}")
    # a generator seeded apart from the noise seeds, so labels and noise are independent
    return torch.stack([torch.randint(num_classes, (), generator=torch.Generator().manual_seed(2**40 + base_seed + i))
                        for i in idx.tolist()]).to(device)


class GeneratorSampler:
    """One network evaluation: x = clamp(G(sigma_max * eps, y, w), -1, 1).

    The guidance scale w is an input of a guidance-conditioned generator (its UNet has a w-embedding), so guided
    sampling still costs one call. A generator without that input has one fixed w (1): asking it for another is an
    error, not a silently unguided sample."""

    nfe = 1

    def __init__(self, generator, *, guidance_scale=1.0):
        self.generator = generator
        self.latent_shape = (3, generator.latent_size, generator.latent_size)
        self.guidance_input = generator.guidance_input
        if guidance_scale != 1.0 and not self.guidance_input:
            raise ValueError(f"guidance_scale {guidance_scale:g} needs a guidance-conditioned generator G(z, y, w) "
                             "(train.py --method guidance); this generator has no w input and samples only w = 1")
        self.guidance_scale = float(guidance_scale)

    def __call__(self, rng, y):
        device = next(self.generator.parameters()).device
        n = len(rng.seeds)
        z = rng.randn((n,) + self.latent_shape, device=device) * self.generator.sigma_max
        w = torch.full((n,), self.guidance_scale, device=device) if self.guidance_input else None
        return self.generator.sample(z, y, w)


class TeacherSampler:
    """The teacher with a chosen ODE/SDE sampler and step count (EDM algorithm 2).

    A distilled k-step denoiser (its export carries `sigmas`, e.g. a progressive-distillation student) was trained
    for deterministic Euler on exactly that grid: it samples so, NFE k, whatever sampler and step count are asked
    for (logged once, here)."""

    def __init__(self, denoiser, *, sampler="heun", num_steps=40, rho=7.0, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, guidance_scale=1.0):
        if sampler not in ("heun", "euler", "stochastic"):
            raise ValueError(f"sampler must be heun, euler or stochastic, got {sampler!r}")
        self.denoiser, self.sampler, self.num_steps, self.rho = denoiser, sampler, num_steps, rho
        self.churn = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
        if guidance_scale != 1.0 and getattr(denoiser, "null_class", None) is None:
            # checked here, before any sample: the released EDM ImageNet-64 teacher has no null class
            raise ValueError(f"guidance_scale {guidance_scale:g} needs a teacher trained with label dropout (a null "
                             "class); this teacher has none (the released EDM ImageNet-64 teacher neither), so it "
                             "samples only w = 1")
        self.guidance_scale = guidance_scale
        size = denoiser.backbone.config["image_size"]
        self.latent_shape = (denoiser.backbone.config["in_channels"], size, size)
        self.own_grid = getattr(denoiser, "sigmas", None)
        if self.own_grid is not None:
            steps = len(self.own_grid) - 1
            logger.log(f"this denoiser was distilled for {steps}-step deterministic Euler on its own grid: sampling "
                       f"with that (NFE {steps}); the sampler settings asked for (sampler={sampler}, "
                       f"num_steps={num_steps}, rho={rho:g}, s_churn={s_churn:g}) do not apply to it")
            self.sampler, self.num_steps = "euler", steps
        self.nfe = 2 * self.num_steps - 1 if self.sampler != "euler" else self.num_steps

    def sigmas(self, device=None):
        """The grid this sampler integrates on: the export's own, else karras_sigmas(num_steps) of its range."""
        if self.own_grid is not None:
            return torch.tensor(self.own_grid, dtype=torch.float32, device=device)
        return karras_sigmas(self.num_steps, self.denoiser.sigma_min, self.denoiser.sigma_max, self.rho,
                             device=device)

    def __call__(self, rng, y):
        device = next(self.denoiser.parameters()).device
        sigmas = self.sigmas(device)
        x = rng.randn((len(rng.seeds),) + self.latent_shape, device=device) * sigmas[0]
        denoise = self.denoiser
        if self.guidance_scale != 1.0:
            denoise = classifier_free_guidance(self.denoiser, guidance_scale=self.guidance_scale,
                                               null_class=self.denoiser.null_class)
        if self.sampler == "heun":
            return heun_sample(denoise, x, sigmas, y).clamp(-1, 1)
        if self.sampler == "euler":
            return euler_sample(denoise, x, sigmas, y).clamp(-1, 1)
        return stochastic_sample(denoise, x, sigmas, y, randn_like=rng.randn_like, **self.churn).clamp(-1, 1)


def sampler_for_export(path, *, kind="auto", device="cpu", sampler="heun", num_steps=40, rho=7.0, s_churn=0.0,
                       s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, guidance_scale=1.0):
    """The sampler of an export, by what its sidecar says it is: a one-step generator (any grown size) or a
    teacher with the given ODE/SDE sampler settings; kind='generator'/'denoiser' overrides the sidecar."""
    if kind == "auto":
        kind = (checkpoint.read_sidecar(path) or {}).get("kind", "denoiser")
    if kind == "generator":
        return GeneratorSampler(load_generator(path, device=device), guidance_scale=guidance_scale)
    if kind == "denoiser":
        return TeacherSampler(load_teacher(path, device=device), sampler=sampler, num_steps=num_steps, rho=rho,
                              s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                              guidance_scale=guidance_scale)
    raise ValueError(f"kind must be auto, generator or denoiser, got {kind!r}")


def sampler_classes(sampler):
    """The number of classes labels are drawn from (None when unconditional; the null class of a guided teacher,
    and of a generator distilled from one, is not one of them)."""
    net = getattr(sampler, "generator", None) or sampler.denoiser
    return real_classes(net.backbone.config["num_classes"], getattr(net, "null_class", None))


def model_identity(path):
    """What a sample depends on besides the settings: the model's content hash from its sidecar (the same export
    reached through a symlink or a copy is the same model; a re-export of other weights is another). A released
    checkpoint without a sidecar is known by its real path, size and modification time (hashing a 1 GB teacher on
    every rerun would not pay)."""
    sidecar = checkpoint.read_sidecar(path) or {}
    if checkpoint.CONTENT_HASH in sidecar:
        return {"model": os.path.abspath(path), "model_sha256": sidecar[checkpoint.CONTENT_HASH]}
    st = os.stat(path)
    return {"model": os.path.realpath(path), "model_bytes": st.st_size, "model_mtime_ns": st.st_mtime_ns}


def claim_parts(out_dir, identity):
    """Keep existing parts only if they were made from the same model and settings; otherwise delete them, but
    only when they belong to the same model file: samples of another model are refused, never deleted.

    A rerun after retraining (or with another step count, seed or label mode) would otherwise complete the old
    samples and report them as the new model's. Parts without a record (older runs) are not trusted either.
    Call on one process, before sampling. Returns the number of parts deleted; FileExistsError when `out_dir`
    holds the samples of a model at another path.
    """
    record = os.path.join(out_dir, "parts", "identity.json")
    previous = read_json_record(record)  # None without a record, or with a damaged one: the parts cannot be trusted
    other = _other_model(out_dir, previous, identity)
    if other is not None:
        raise FileExistsError(f"{out_dir} holds the samples of another model ({other}); sample "
                              f"{identity['model']} into another --out_dir, or move that folder away first")
    stale = [] if _same_parts(previous, identity) else sorted(glob.glob(os.path.join(out_dir, "parts", "part_*.npz")))
    if stale:
        if previous is None:
            why = "have no record of the model and settings that made them"
        else:
            changed = sorted(k for k in identity if previous.get(k) != identity[k])
            why = f"were made from another model or settings ({', '.join(changed)} differ)"
        logger.log(f"{out_dir}: {len(stale)} sample parts {why}; making them again")
        for path in stale:
            os.remove(path)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    atomic_write_text(json.dumps(identity, indent=1, sort_keys=True), record)
    return len(stale)


def _same_model(found, identity):
    """Whether a record names the model of `identity`, or an earlier version of the same file: the same content
    hash, or the same file (its real path: a retrained export, whose parts are made again)."""
    if found.get("model") is None:
        return True
    if found.get("model_sha256") is not None and found.get("model_sha256") == identity.get("model_sha256"):
        return True
    return os.path.realpath(found["model"]) == os.path.realpath(identity["model"])


def _same_parts(previous, identity):
    """Parts made by the same model with the same settings (the path a model was reached by does not matter)."""
    if not isinstance(previous, dict) or not _same_model(previous, identity):
        return False
    return {k: v for k, v in previous.items() if k != "model"} == {k: v for k, v in identity.items() if k != "model"}


def _other_model(out_dir, previous, identity):
    """The path of another model whose samples `out_dir` holds (by the parts' record, or by the finished
    samples' sampling.json), or None."""
    stats = read_json_record(os.path.join(out_dir, "sampling.json"))
    for found in (previous, stats):
        if isinstance(found, dict) and not _same_model(found, identity):
            return found["model"]
    return None


def part_path(out_dir, c):
    return os.path.join(out_dir, "parts", f"part_{c:06d}.npz")


def _part_ok(path, expected):
    try:
        with np.load(path) as data:
            return len(data["arr_0"]) == expected and len(data["arr_1"]) == expected
    except Exception:  # missing, truncated or damaged: make it again
        return False


def run_sampling(sample_fn, *, out_dir, num_samples, num_classes, label_mode="uniform", base_seed=0,
                 chunk_size=100, batch_size=100, shard=0, num_shards=1, device="cpu"):
    """Make this shard's missing chunks; returns (number of samples made, seconds)."""
    chunks = range(shard, -(-num_samples // chunk_size), num_shards)
    todo = [c for c in chunks if not _part_ok(part_path(out_dir, c), min(chunk_size, num_samples - c * chunk_size))]
    total = sum(min(chunk_size, num_samples - c * chunk_size) for c in todo)
    bar, made, start = logger.progress(total=total, desc="sample", unit="img"), 0, time.time()
    for c in todo:
        indices = list(range(c * chunk_size, min((c + 1) * chunk_size, num_samples)))
        images, labels = [], []
        for b in range(0, len(indices), batch_size):
            idx = indices[b:b + batch_size]
            rng = StackedRandomGenerator(device, [base_seed + i for i in idx])
            y = sample_labels(idx, num_classes=num_classes, mode=label_mode, base_seed=base_seed, device=device)
            with torch.no_grad():
                images.append(to_uint8(sample_fn(rng, y)))
            labels.append(np.zeros(len(idx), np.int64) if y is None else y.cpu().numpy())
            made += len(idx)
            bar.update(len(idx))
            bar.set_postfix(img_per_s=f"{made / (time.time() - start):.2f}")
        _save_npz(part_path(out_dir, c), arr_0=np.concatenate(images), arr_1=np.concatenate(labels))
        kill_point("sample.part_written")
    bar.close()
    return made, time.time() - start


def _save_npz(path, **arrays):
    tmp = path + ".tmp.npz"
    with checkpoint.naming_write_errors(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)


def _same_npz(path, images, labels):
    try:
        with np.load(path) as data:
            return np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)
    except Exception:  # missing or damaged
        return False


def assemble(out_dir, num_samples, chunk_size, *, grid_samples=64):
    """Concatenate the parts into samples_<N>x<H>x<W>x3.npz plus a PNG grid of the first samples."""
    parts = [part_path(out_dir, c) for c in range(-(-num_samples // chunk_size))]
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"{len(missing)} sample parts are missing (first: {missing[0]}); rerun the command")
    arrays = [np.load(p) for p in parts]
    images = np.concatenate([a["arr_0"] for a in arrays])
    labels = np.concatenate([a["arr_1"] for a in arrays])
    n, h, w, c = images.shape
    path = os.path.join(out_dir, f"samples_{n}x{h}x{w}x{c}.npz")
    for stale in glob.glob(os.path.join(out_dir, "samples_*.npz")):
        if stale != path:
            os.remove(stale)
    if not _same_npz(path, images, labels):  # an unchanged file keeps its mtime: the evaluator's cache stays valid
        _save_npz(path, arr_0=images, arr_1=labels)
    save_grid(images[:grid_samples], os.path.join(out_dir, "grid.png"), scale=max(1, 128 // h))
    return path
