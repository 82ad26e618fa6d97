"""(image, latent, label) triples for PaGoDA stages 2 and 3.

The image is loaded at any requested resolution (the teacher's for stage 2, 2x/4x/8x for stage 3) with the ADM
centre crop; the latent is the one the encoder computed from that image at the teacher's resolution, with the
same flip. Flips are decided by `infinite_batches` (probability 0.5 when both flips were encoded), so the
stream is resumable exactly like the image stream.
"""

import numpy as np
import torch

from .image_datasets import ImageDataset, open_source
from .latent_store import LatentStore


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, latent_dir, *, image_size, data_dir=None, shard=0, num_shards=1, on_error="raise",
                 cache=False):
        self.store = LatentStore(latent_dir)
        self.manifest = self.store.manifest()
        data_dir = data_dir or self.manifest["data_dir"]
        source = open_source(data_dir, on_error=on_error)
        made_from = self.manifest.get("source_images", self.manifest["num_images"])  # older folders: no key
        if len(source) < made_from:
            raise ValueError(f"{data_dir} has {len(source)} images but the latents in {latent_dir} were made from "
                             f"a dataset of {made_from}: wrong --data_dir?")
        self.images = ImageDataset(source, image_size=image_size, shard=shard, num_shards=num_shards,
                                   on_error=on_error, cache=cache)
        encoded = {image_id for image_id, _ in self.store.index()}  # --limit may have encoded a subset
        self.positions = [k for k, image_id in enumerate(self.images.ids) if image_id in encoded]
        self.flips = [bool(f) for f in self.manifest["flips"]]
        self.random_flip = self.flips == [False, True]
        self._index = None
        self._chunks = {}

    @property
    def index(self):
        if self._index is None:  # built lazily: DataLoader workers build their own
            self._index = self.store.index()
        return self._index

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
