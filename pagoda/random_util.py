"""Per-sample randomness: every sample draws its noise and labels from its own seed.

A sample's seed is its global index plus a base seed, so the output files are identical whatever the batch
size and however many processes share the work (the pattern of EDM's `generate.py` and consistency_models'
`random_util.py`).

Run-level randomness (network initialisation, dropout, anything drawn from the global generators) comes from the
run's one `--seed` through `seed_all` and `seeded`, so the same command gives the same weights.
"""

import contextlib
import hashlib
import json
import random

import numpy as np
import torch


class StackedRandomGenerator:
    """One torch.Generator per seed; row i of every draw comes from generator i alone."""

    def __init__(self, device, seeds):
        seeds = [int(seed) for seed in seeds]
        if not seeds:
            raise ValueError("StackedRandomGenerator needs at least one seed")
        if min(seeds) < 0:
            raise ValueError(f"seeds must be non-negative, got {min(seeds)}")
        self.device = torch.device(device)
        self.seeds = seeds
        self.generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]

    def _check_batch(self, size):
        size = tuple(size)
        if not size or size[0] != len(self.generators):
            raise ValueError(f"size[0] must equal the number of seeds ({len(self.generators)}); got size {size}")
        return size[1:]

    def randn(self, size, **kwargs):
        """Standard normal tensor of shape `size`; kwargs go to torch.randn (dtype, layout, ...)."""
        per_sample = self._check_batch(size)
        kwargs.setdefault("device", self.device)
        return torch.stack([torch.randn(per_sample, generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, x):
        return self.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device)

    def randint(self, *args, size, **kwargs):
        """Like torch.randint(low, high, size=...) with row i drawn from generator i."""
        per_sample = self._check_batch(size)
        kwargs.setdefault("device", self.device)
        return torch.stack([torch.randint(*args, size=per_sample, generator=gen, **kwargs) for gen in self.generators])


def noised(x, sigma, seeds):
    """x + sigma * n, with image i's n drawn from seeds[i] alone (StackedRandomGenerator), so a batch's split or
    order changes nothing."""
    return x + sigma * StackedRandomGenerator(x.device, list(seeds)).randn(x.shape, dtype=x.dtype)


def sample_seeds(num_samples, *, base_seed=0, shard=0, num_shards=1):
    """Seeds of the samples this shard generates: global indices shard, shard + num_shards, ... plus base_seed."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}")
    return [base_seed + index for index in range(shard, num_samples, num_shards)]


def derived_seed(seed, *names):
    """A 63-bit seed for the stream `names` of a run seeded `seed` (e.g. derived_seed(0, "discriminator")).
    Hashing keeps streams unrelated however close their names or the run seeds are."""
    digest = hashlib.sha256(json.dumps([int(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_all(seed, *names):
    """Seed the global generators (torch CPU and CUDA, numpy, random) from derived_seed(seed, *names): what a run
    draws outside an explicit generator (dropout masks, DataLoader worker seeds) then follows the run's seed."""
    value = derived_seed(seed, *names)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


@contextlib.contextmanager
def seeded(seed, *names):
    """Inside the block the CPU generator is seeded with derived_seed(seed, *names); its previous state is restored
    after. For building networks: their initial weights depend on (seed, names) only, not on what was drawn before
    (so adding one network to a run does not change the others). Networks must be built on the CPU here."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derived_seed(seed, *names))
        yield
