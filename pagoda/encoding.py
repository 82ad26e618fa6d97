"""PF-ODE data-to-noise encoding: every (image, flip) -> its latent z at sigma_max under the frozen teacher.

The work is split into fixed chunks (pagoda/latent_store.py); each process encodes the chunks c with
c % num_shards == shard. Chunks already complete on disk are skipped, damaged ones are redone.
"""

import contextlib
import time

import numpy as np
import torch

from . import logger
from .faults import kill_point
from .image_util import psnr
from .latent_store import num_chunks
from .random_util import noised
from .sampling import heun_decode, heun_invert


def chunk_items(items, c, chunk_size):
    return items[c * chunk_size:(c + 1) * chunk_size]


def pending_chunks(store, dataset, items, chunk_size, *, shard, num_shards, settings=None, log=logger.log):
    """This shard's chunks that still need encoding (missing, damaged, or written for other images/settings)."""
    todo = []
    for c in range(shard, num_chunks(len(items), chunk_size), num_shards):
        part = chunk_items(items, c, chunk_size)
        reason = store.check_chunk(c, expected_ids=[dataset.ids[i] for i, _ in part],
                                   expected_flips=[f for _, f in part], expected_settings=settings)
        if reason is not None:
            if reason != "missing":
                log(f"chunk {c}: {reason}; encoding it again")
            todo.append(c)
    return todo


def start_state(x, part, start_sigma):
    """The encoder's starting point: clean x (official), or x + start_sigma * n with n seeded by each item's
    (image index, flip), so reruns and any process count draw the same noise.

    Clean images are the modes of p_sigma_min, and the PF-ODE takes modes to atypically small latents (on the
    bundled digits, whose background is exactly -1, per-channel mean -14 and RMS 56 instead of 0 and 80). Starting
    from a sample of p_start_sigma instead makes the latents of the data a sample of the prior.
    """
    if not start_sigma:
        return x
    return noised(x, start_sigma, [start_seed(i, f) for i, f in part])


def start_seed(index, flip):
    """The seed of the start noise of an item (image index, flipped or not): the latent store's identity of it."""
    return 2 * int(index) + int(flip)


def _load_batch(dataset, part, device, *, skip_unreadable=False):
    """(x, y, items loaded) of `part`. With skip_unreadable an item whose image cannot be read is left out, never
    replaced by another image (its latent would be stored under the wrong id); otherwise it raises."""
    rows, loaded = [], []
    for i, f in part:
        try:
            rows.append(dataset.load(i, flip=f))
        except ValueError:
            if not skip_unreadable:
                raise
            continue
        loaded.append((i, f))
    if not rows:
        return None, None, loaded
    x = torch.stack([r["x"] for r in rows]).to(device)
    y = torch.stack([r["y"] for r in rows]).to(device)
    return x, y, loaded


@torch.no_grad()
def encode_chunks(teacher, dataset, store, items, chunks, *, chunk_size, sigmas, batch_size, clamp_denoised=True,
                  dtype=np.float16, autocast=None, class_cond=True, progress=True, settings=None, start_sigma=0.0,
                  skip_unreadable=False):
    """Encode `chunks` of `items` with the teacher and write them; returns the number of images encoded. `dataset`
    must not stand in other images for unreadable ones (on_error='raise'): with skip_unreadable such items are left
    out of their chunk and recorded in it as skipped."""
    device = next(teacher.parameters()).device
    bar = logger.progress(total=sum(len(chunk_items(items, c, chunk_size)) for c in chunks), desc="encode",
                          unit="img") if progress else None
    done, start = 0, time.time()
    for c in chunks:
        part = chunk_items(items, c, chunk_size)
        latents, kept = [], []
        for b in range(0, len(part), batch_size):
            x, y, loaded = _load_batch(dataset, part[b:b + batch_size], device, skip_unreadable=skip_unreadable)
            if loaded:
                x = start_state(x, loaded, start_sigma)
                with autocast() if autocast else contextlib.nullcontext():
                    z = heun_invert(teacher, x, sigmas, y if class_cond else None, clamp_denoised=clamp_denoised)
                latents.append(z.float().cpu().numpy().astype(dtype))
                kept += loaded
            done += len(loaded)
            if bar:
                bar.update(len(part[b:b + batch_size]))
                bar.set_postfix(img_per_s=f"{done / (time.time() - start):.1f}")
        kept_set = set(kept)
        _write_chunk(store, c, latents, kept, [k for k in part if k not in kept_set], dataset, teacher, dtype, settings)
        kill_point("encode.chunk_written")
    if bar:
        bar.close()
    return done


def _write_chunk(store, c, latents, kept, skipped, dataset, teacher, dtype, settings):
    cfg = teacher.backbone.config
    z = np.concatenate(latents) if latents else np.zeros((0, cfg["in_channels"], cfg["image_size"],
                                                          cfg["image_size"]), dtype)
    if not np.isfinite(z).all():  # a chunk that would poison every later stage-2 step
        raise FloatingPointError(f"the teacher produced non-finite latents for chunk {c} ({store.npy_path(c)}); "
                                 "nothing was written for it")
    store.write_chunk(c, z, ids=[dataset.ids[i] for i, _ in kept], flips=[f for _, f in kept],
                      indices=[i for i, _ in kept], settings=settings,
                      skipped=[(dataset.ids[i], f) for i, f in skipped])


@torch.no_grad()
def verify_round_trip(teacher, dataset, store, index, keys, *, sigmas, clamp_denoised=True, class_cond=True,
                      start_sigma=0.0):
    """Decode stored latents back with the teacher; per-sample PSNR against the original images. Latents
    encoded from noisy images (start_sigma > 0) are decoded to that noise level, then denoised once."""
    device = next(teacher.parameters()).device
    x, y, _ = _load_batch(dataset, keys, device)
    z = torch.stack([torch.from_numpy(np.array(store.open_chunk(index[(dataset.ids[i], f)][0])
                                               [index[(dataset.ids[i], f)][1]])) for i, f in keys])
    y = y if class_cond else None
    x_hat = heun_decode(teacher, z.float().to(device), sigmas, y, clamp_denoised=clamp_denoised)
    if start_sigma:
        x_hat = teacher(x_hat, torch.full((len(x_hat),), float(sigmas[-2]), device=device), y)
    return psnr(x_hat.clamp(-1, 1), x)
