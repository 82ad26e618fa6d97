"""(image, latent, label) triples for PaGoDA stages 2 and 3.

The image is loaded at any requested resolution (the teacher's for stage 2, 2x/4x/8x for stage 3) with the ADM
centre crop; the latent is the one the encoder computed from that image at the teacher's resolution, with the
same flip. Flips are decided by `infinite_batches` (probability 0.5 when both flips were encoded), so the
stream is resumable exactly like the image stream.
"""

import numpy as np
import torch

from .image_datasets import ImageDataset, open_source, source_identity
from .latent_store import LatentStore


def check_latent_dataset(manifest, source, *, latent_dir, data_dir, index):
    """Refuse to pair latents with images of another dataset. Folders written since the manifest carried a
    dataset identity compare its digest; older ones must at least find every encoded id in the source (the
    bundled digits were renamed: 'mnist/...' ids are the 5,000-digit set, now bundled:mnist5k)."""
    recorded = manifest.get("dataset")
    if recorded is not None:
        actual = source_identity(source)
        if recorded.get("digest") != actual["digest"]:
            raise ValueError(f"the latents in {latent_dir} were encoded from another dataset than {data_dir}: "
                             f"recorded {recorded.get('num_images')} images from {recorded.get('origin')} "
                             f"(digest {str(recorded.get('digest'))[:12]}), found {actual['num_images']} from "
                             f"{actual['origin']} (digest {actual['digest'][:12]}); pass the --data_dir they were "
                             "encoded from, or encode this dataset")
        return
    known = set(source.ids)
    foreign = [image_id for image_id, _ in index if image_id not in known]
    if foreign:
        hint = (" (ids 'mnist/...' are the 5,000-digit set, now named bundled:mnist5k)"
                if foreign[0].startswith("mnist/") else "")
        raise ValueError(f"the latents in {latent_dir} were encoded from another dataset than {data_dir}: "
                         f"{len(foreign)} of their image ids, e.g. {foreign[0]!r}, are not in it{hint}; pass the "
                         "--data_dir they were encoded from, or encode this dataset")


def check_latent_teacher(manifest, teacher_sha256, *, latent_dir, model):
    """Refuse latents made by another teacher than the one `model` (a teacher, or a generator that records its
    teacher) comes from. Either side may predate the record (None): then nothing can be compared."""
    recorded = manifest.get("teacher_sha256")
    if recorded is None or teacher_sha256 is None or recorded == teacher_sha256:
        return
    raise ValueError(f"the latents in {latent_dir} were encoded by another teacher (content hash {recorded[:12]}, "
                     f"{manifest.get('teacher')}) than the one {model} comes from ({teacher_sha256[:12]}); encode the "
                     "data with this teacher, or pass the latents it made")


def check_latent_domain(model_dataset, source, *, latent_dir, model):
    """Refuse latents of images from another domain than the one `model` was trained on (a digits teacher with
    CIFAR-10 pairs, or the reverse): told apart by their class names. `model_dataset` is the dataset_record its
    export carries; exports that predate it (None) cannot be checked."""
    if not model_dataset or model_dataset.get("class_names") in (None, list(source.class_names)):
        return

    def named(names):
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise ValueError(f"the latents in {latent_dir} are of {source.origin} (classes {named(source.class_names)}) but "
                     f"{model} was trained on {model_dataset.get('origin')} (classes "
                     f"{named(model_dataset['class_names'])}): another domain; encode that model's own dataset, or "
                     "train a teacher on this one")


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, latent_dir, *, image_size, data_dir=None, shard=0, num_shards=1, on_error="raise",
                 cache=False, verify=True):
        self.store = LatentStore(latent_dir)
        self.manifest = self.store.manifest()
        data_dir = data_dir or self.manifest["data_dir"]
        source = open_source(data_dir, on_error=on_error)
        index = self.store.index()
        check_latent_dataset(self.manifest, source, latent_dir=latent_dir, data_dir=data_dir, index=index)
        self.images = ImageDataset(source, image_size=image_size, shard=shard, num_shards=num_shards,
                                   on_error=on_error, cache=cache)
        encoded = {image_id for image_id, _ in index}  # --limit may have encoded a subset
        self.positions = [k for k, image_id in enumerate(self.images.ids) if image_id in encoded]
        self.flips = [bool(f) for f in self.manifest["flips"]]
        self.random_flip = self.flips == [False, True]
        self._index = None
        self._chunks = {}
        if verify:  # CRC, finiteness and settings of the chunks this shard reads, before any training step
            self.store.verify_chunks(self.chunks_used(index), expected_settings=self.manifest.get("settings"))

    @property
    def index(self):
        if self._index is None:  # built lazily: DataLoader workers build their own
            self._index = self.store.index()
        return self._index

    def chunks_used(self, index=None):
        """The chunks holding the latents of this shard's images."""
        index = self.index if index is None else index
        return {index[(image_id, f)][0] for image_id in self.ids for f in self.flips if (image_id, f) in index}

    @property
    def num_classes(self):
        return self.images.num_classes

    @property
    def ids(self):
        return [self.images.ids[k] for k in self.positions]

    @property
    def latent_shape(self):
        c = self.manifest["image_size"]
        return (3, c, c)

    def __len__(self):
        return len(self.positions)

    def latent(self, image_id, flip):
        key = (image_id, bool(flip))
        if key not in self.index:
            side = "flipped" if flip else "unflipped"
            raise KeyError(f"no {side} latent for image {image_id!r} in {self.store.folder}; the encoder did not "
                           f"cover it (was it run with --limit or other --flips?)")
        c, row = self.index[key]
        if c not in self._chunks:
            self._chunks[c] = self.store.open_chunk(c)
        return torch.from_numpy(np.array(self._chunks[c][row], dtype=np.float32))

    def load(self, i, *, flip=False):
        if not self.random_flip:  # only one flip was encoded: always use it
            flip = self.flips[0]
        k = self.positions[i]
        item = self.images.load(k, flip=flip)
        item["z"] = self.latent(self.images.ids[k], flip)
        return item

    def __getitem__(self, i):
        flip = self.random_flip and bool(torch.rand(()) < 0.5)
        return self.load(i, flip=flip)
