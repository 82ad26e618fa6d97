"""On-disk format of the encoder's PF-ODE latents: fixed-size chunks plus a manifest and an index.

The work list is every (image index, flip) pair in a fixed order; chunk c holds items [c*C, (c+1)*C). Chunk
boundaries do not depend on the number of processes, so 1 or N processes write identical files, and a rerun
only redoes chunks that are missing or damaged. A chunk is two files written atomically, data first:
  chunk_<c>.npy   latents z, (n, C, H, W), fp16 or fp32 -- memory-mapped for random access when training
  chunk_<c>.json  the ids, flips and image indices of its rows, the array shape/dtype and a CRC32 of the data;
                  its presence marks the chunk complete
After all chunks: index.npz (id, flip -> chunk, row) and manifest.json (teacher, solver and data settings).

A folder is finished only while it has a manifest. An encode with other settings first removes the manifest and
the index and records its settings in encoding.json, so a folder killed half-way through a re-encode is refused
by its consumers instead of mixing chunks of two settings; every chunk also records its settings, and a consumer
checks them (and each chunk's CRC) against the manifest for the chunks it reads.
"""

import json
import os
import zlib

import numpy as np
import torch

from .checkpoint import atomic_write_text, naming_write_errors

MANIFEST, INDEX, PENDING = "manifest.json", "index.npz", "encoding.json"
# Manifest formats this code reads: encoded data latents, and guided pairs (pagoda/guided_pairs.py). A manifest
# without a format entry predates it and is read as data latents; any other format is refused naming the file.
LATENTS_FORMAT, GUIDED_PAIRS_FORMAT = "pagoda-latents-v1", "pagoda-guided-pairs-v1"
FORMATS = (LATENTS_FORMAT, GUIDED_PAIRS_FORMAT)


def image_subset(num_images, limit=0, *, seed=0):
    """The image indices to encode: all of them, or `limit` of them drawn at random (seeded) and sorted.

    Not the first `limit`: datasets are often stored class by class (the bundled digits, any ImageFolder tree),
    and their first images are a few classes only.
    """
    if not limit or limit >= num_images:
        return list(range(num_images))
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:limit]
    return sorted(order.tolist())


def work_items(indices, flips):
    """The global (image index, flip) list in its fixed order."""
    return [(i, f) for i in indices for f in flips]


def num_chunks(num_items, chunk_size):
    return (num_items + chunk_size - 1) // chunk_size


class LatentStore:
    def __init__(self, folder):
        self.folder = folder

    def npy_path(self, c):
        return os.path.join(self.folder, f"chunk_{c:06d}.npy")

    def meta_path(self, c):
        return os.path.join(self.folder, f"chunk_{c:06d}.json")

    # -- writing ---------------------------------------------------------------------------------------
    def write_chunk(self, c, z, *, ids, flips, indices, settings=None, skipped=()):
        """Write chunk c atomically: the array, then the record that certifies it. `settings` (teacher, solver,
        storage) are recorded so a rerun with other settings redoes the chunk instead of mixing latents; `skipped`
        (id, flip) items of the chunk had unreadable images and have no row."""
        z = np.ascontiguousarray(z)
        tmp = self.npy_path(c) + ".tmp"
        with naming_write_errors(self.npy_path(c)):
            os.makedirs(self.folder, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, z)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.npy_path(c))
        meta = {"ids": list(ids), "flips": [bool(v) for v in flips], "indices": [int(i) for i in indices],
                "shape": list(z.shape), "dtype": str(z.dtype), "crc32": zlib.crc32(z.tobytes()),
                "settings": settings or {}, "skipped": [[image_id, bool(f)] for image_id, f in skipped]}
        atomic_write_text(json.dumps(meta), self.meta_path(c))

    def check_chunk(self, c, *, expected_ids=None, expected_flips=None, expected_settings=None):
        """None if chunk c is complete and intact, else the reason it must be (re)done."""
        if not os.path.exists(self.meta_path(c)):
            return "missing"
        try:
            with open(self.meta_path(c)) as f:
                meta = json.load(f)
            z = np.load(self.npy_path(c), mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"unreadable ({type(exc).__name__}: {exc})"
        if list(z.shape) != meta["shape"] or str(z.dtype) != meta["dtype"]:
            return f"array is {tuple(z.shape)} {z.dtype}, record says {tuple(meta['shape'])} {meta['dtype']}"
        data = np.ascontiguousarray(z)
        if zlib.crc32(data.tobytes()) != meta["crc32"]:
            return "checksum mismatch (damaged data)"
        if not np.isfinite(data).all():
            return "not finite (NaN or inf latents)"
        if expected_ids is not None:
            skipped = {(image_id, bool(f)) for image_id, f in meta.get("skipped", [])}
            expected = [(i, bool(f)) for i, f in zip(expected_ids, expected_flips) if (i, bool(f)) not in skipped]
            if list(zip(meta["ids"], meta["flips"])) != expected:
                return "written for other images (the dataset changed)"
        if expected_settings is not None and meta.get("settings") != expected_settings:
            changed = sorted(k for k in set(expected_settings) | set(meta.get("settings", {}))
                             if expected_settings.get(k) != meta.get("settings", {}).get(k))
            return f"written with other settings ({', '.join(changed)})"
        return None

    def write_index(self, chunk_ids):
        """index.npz: for every row of every chunk its image id, flip, chunk and row."""
        ids, flips, chunks, rows = [], [], [], []
        for c in chunk_ids:
            with open(self.meta_path(c)) as f:
                meta = json.load(f)
            ids += meta["ids"]
            flips += meta["flips"]
            chunks += [c] * len(meta["ids"])
            rows += list(range(len(meta["ids"])))
        path = os.path.join(self.folder, "index.npz")
        tmp = path + ".tmp.npz"
        with naming_write_errors(path):
            np.savez(tmp, ids=np.array(ids), flips=np.array(flips, dtype=bool), chunks=np.array(chunks, np.int64),
                     rows=np.array(rows, np.int64))
            os.replace(tmp, path)

    def write_manifest(self, manifest):
        atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True), self._path(MANIFEST))
        if os.path.exists(self._path(PENDING)):
            os.remove(self._path(PENDING))

    def begin(self, manifest):
        """Before writing any chunk: unless the folder is finished with exactly `manifest`, remove its manifest
        (first: consumers need it) and index, and record the settings now being encoded in encoding.json."""
        try:
            with open(self._path(MANIFEST)) as f:
                if json.load(f) == json.loads(json.dumps(manifest)):
                    return False
        except (OSError, ValueError):
            pass
        for name in (MANIFEST, INDEX):
            if os.path.exists(self._path(name)):
                os.remove(self._path(name))
        atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True), self._path(PENDING))
        return True

    def _path(self, name):
        return os.path.join(self.folder, name)

    # -- reading ---------------------------------------------------------------------------------------
    def manifest(self):
        path = self._path(MANIFEST)
        if not os.path.exists(path):
            pending = ""
            if os.path.exists(self._path(PENDING)):
                pending = (f" An encode started here ({self._path(PENDING)} records its settings) has not finished, "
                           "and its chunks must not be mixed with older ones.")
            raise FileNotFoundError(f"{path} not found: {self.folder} is not a finished latent folder.{pending} Run "
                                    f"scripts/encode.py to completion; rerunning it finishes an interrupted run")
        try:
            with open(path) as f:
                manifest = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); rerun scripts/encode.py to rewrite it") from exc
        found = manifest.get("format", LATENTS_FORMAT) if isinstance(manifest, dict) else None
        if found not in FORMATS:
            raise ValueError(f"{path} has the format {found!r}, which this code does not read (it reads "
                             f"{', '.join(FORMATS)}); encode the data again with this version, or use the version "
                             "that wrote it")
        return manifest

    def verify_chunks(self, chunks, *, expected_settings=None):
        """ValueError naming the first of `chunks` that is damaged, not finite or made with other settings than
        `expected_settings` (a reader checks the chunks it reads; each rank its own)."""
        for c in sorted(chunks):
            reason = self.check_chunk(c, expected_settings=expected_settings)
            if reason is not None:
                raise ValueError(f"latent chunk {self.npy_path(c)} fails its check ({reason}): rerun scripts/encode.py "
                                 f"with the settings of {self._path(MANIFEST)} to redo it")

    def skipped(self, chunks):
        """The (id, flip) items of `chunks` left out because their images could not be read."""
        found = []
        for c in chunks:
            with open(self.meta_path(c)) as f:
                found += [(image_id, bool(flip)) for image_id, flip in json.load(f).get("skipped", [])]
        return found

    def index(self):
        """{(id, flip): (chunk, row)}."""
        data = np.load(os.path.join(self.folder, "index.npz"))
        return {(str(i), bool(f)): (int(c), int(r))
                for i, f, c, r in zip(data["ids"], data["flips"], data["chunks"], data["rows"])}

    def open_chunk(self, c):
        return np.load(self.npy_path(c), mmap_mode="r")
