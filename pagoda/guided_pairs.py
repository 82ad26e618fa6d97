"""Guided pairs: fresh prior latents z decoded by the guided teacher's PF-ODE at a scale w, the training pairs
(z, y, w) -> x_w of a guidance-conditioned generator G(z, y, w). The encoder's tooling run in the decode direction.

The same fixed chunks and LatentStore as the data latents (per-chunk CRC and settings, a manifest, an index), so
the pairs are sharded, resumable and identical for any process count. Pair i is a pure function of (seed, i): its
noise from seed + i (StackedRandomGenerator), its label from sample_labels' own seed stream, its scale the
(i mod len)-th of the stated set. A chunk row is z and x_w stacked on the channel axis, (n, 2C, H, W); y and w are
recomputed from i (each row's i is in its chunk record's `indices`).
Cost: a pair at w != 1 is a guided Heun sample, 2 network calls per evaluation (2 (2 num_steps - 1) calls); at w = 1
it is 2 num_steps - 1 calls.
"""

import numpy as np
import torch

from .faults import kill_point
from .latent_store import GUIDED_PAIRS_FORMAT, LatentStore, num_chunks
from .random_util import StackedRandomGenerator
from .sample_util import sample_labels
from .sampling import classifier_free_guidance, heun_sample

FORMAT = GUIDED_PAIRS_FORMAT


def pair_guidance_scales(indices, guidance_scales):
    """The guidance scale w of each pair: the set cycled over the pair index, so every chunk covers every w."""
    return torch.tensor([float(guidance_scales[i % len(guidance_scales)]) for i in indices])


def pair_inputs(indices, *, shape, seed, sigma_max, num_classes, guidance_scales):
    """(z, y, w) of pairs `indices`: z = sigma_max * eps_(seed + i), y uniform from its own stream, w cycled."""
    z = StackedRandomGenerator("cpu", [seed + i for i in indices]).randn((len(indices),) + tuple(shape)) * sigma_max
    y = sample_labels(indices, num_classes=num_classes, mode="uniform", base_seed=seed)
    return z, y, pair_guidance_scales(indices, guidance_scales)


def guided_decode(teacher, z, y, w, sigmas):
    """x_w: Heun from z down the teacher's PF-ODE, guided at w (per distinct w in the batch; w = 1 unguided)."""
    x = torch.empty_like(z)
    for w_k in torch.unique(w).tolist():
        rows = (w == w_k).nonzero().flatten()
        denoise = teacher if w_k == 1.0 else classifier_free_guidance(teacher, guidance_scale=w_k,
                                                                      null_class=teacher.null_class)
        x[rows] = heun_sample(denoise, z[rows], sigmas, None if y is None else y[rows]).float().clamp(-1, 1)
    return x


@torch.no_grad()
def decode_chunks(teacher, store, chunks, *, num_pairs, chunk_size, batch_size, sigmas, guidance_scales, seed,
                  num_classes,
settings, dtype=np.float32):
    """Make and write `chunks` of the pairs; returns the number of pairs made."""
    device = next(teacher.parameters()).device
    cfg = teacher.backbone.config
    shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    done = 0
    for c in chunks:
        indices = list(range(c * chunk_size, min((c + 1) * chunk_size, num_pairs)))
        rows = []
        for b in range(0, len(indices), batch_size):
            idx = indices[b:b + batch_size]
            z, y, w = pair_inputs(idx, shape=shape, seed=seed, sigma_max=float(sigmas[0]), num_classes=num_classes,
                                  guidance_scales=guidance_scales)
            x = guided_decode(teacher, z.to(device), None if y is None else y.to(device), w.to(device), sigmas)
            rows.append(torch.cat([z, x.cpu()], dim=1).numpy().astype(dtype))
        store.write_chunk(c, np.concatenate(rows), ids=[f"pair{i}" for i in indices], flips=[False] * len(indices),
                          indices=indices, settings=settings)
        done += len(indices)
        kill_point("encode.chunk_written")
    return done


def pending(store, num_pairs, chunk_size, *, shard, num_shards, settings):
    """This shard's chunks still to make (missing, damaged, or made with other settings)."""
    todo = []
    for c in range(shard, num_chunks(num_pairs, chunk_size), num_shards):
        indices = range(c * chunk_size, min((c + 1) * chunk_size, num_pairs))
        if store.check_chunk(c, expected_ids=[f"pair{i}" for i in indices], expected_flips=[False] * len(indices),
                             expected_settings=settings) is not None:
            todo.append(c)
    return todo


def load_guided_pairs(folder):
    """All pairs of a finished folder as tensors {z, x, y, w} (small: they are held in memory while training),
    every chunk checked against the manifest's settings."""
    store = LatentStore(folder)
    manifest = store.manifest()
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} holds no guided pairs (format {manifest.get('format')!r}, want {FORMAT!r}); make "
                         "them with scripts/encode.py --direction decode")
    chunks = range(manifest["num_chunks"])
    store.verify_chunks(chunks, expected_settings=manifest["settings"])
    data = torch.from_numpy(np.concatenate([np.load(store.npy_path(c)) for c in chunks]).astype(np.float32))
    half = data.shape[1] // 2
    indices = list(range(manifest["num_pairs"]))
    _, y, w = pair_inputs(indices, shape=(0,), seed=manifest["seed"], sigma_max=0.0,
                          num_classes=manifest["num_classes"], guidance_scales=manifest["guidance_scales"])
    return {"z": data[:, :half], "x": data[:, half:], "y": y, "w": w, "manifest": manifest}


class GuidedPairDataset(torch.utils.data.Dataset):
    """One rank's shard of loaded pairs (load_guided_pairs) as training items {z, x, w[, y]}: pairs shard,
    shard + num_shards, ... (pagoda.image_datasets.infinite_batches reads it like the image and latent datasets)."""

    random_flip = False  # a flipped x_w is not the image of its z

    def __init__(self, pairs, *, shard=0, num_shards=1):
        self.pairs = {k: pairs[k] for k in ("z", "x", "w", "y") if pairs.get(k) is not None}
        self.positions = list(range(shard, len(pairs["z"]), num_shards))

    def __len__(self):
        return len(self.positions)

    def load(self, i, *, flip=False):
        j = self.positions[i]
        return {k: v[j] for k, v in self.pairs.items()}
