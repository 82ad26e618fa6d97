"""The benchmark's noise protocol: seeds as disjoint sample blocks, mean +- std, real-vs-real floors and ties.

Every score is reported with two numbers that say how much of it is noise:
- its spread: the std (ddof 1) of the score over `num_seeds` sampling seeds. Samples carry their own seeds
  (sample i is drawn from seed base + i), so seed k is the block of samples [k n, (k + 1) n);
- its floor: the same score between two disjoint sets of real images of the same size n, i.e. what a perfect
  generator would score at this n. FD is biased upwards at small n; the floor shows by how much.
The reals are the held-out split, cut once by a seeded permutation into a reference half (what samples are
scored against) and a floor half (never used as reference), so no image is on both sides of a floor.
Two rows whose mean +- std intervals overlap are a tie: nothing here can tell them apart.
"""

import math

import numpy as np
import torch


def seed_blocks(num_samples, num_seeds):
    """The index ranges of the seed blocks: seed k is samples [k n, (k + 1) n) with n = num_samples."""
    if num_samples < 2 or num_seeds < 1:
        raise ValueError(f"need at least 2 samples per seed and 1 seed, got {num_samples} and {num_seeds}")
    return [range(k * num_samples, (k + 1) * num_samples) for k in range(num_seeds)]


def reference_split(num_images, *, seed=0):
    """(reference indices, floor indices): a seeded half / half cut of the held-out reals. The reference is sorted;
    the floor keeps the seeded order, because floor_blocks cuts it into consecutive blocks, and a source that lists
    its images by class (CIFAR-10's class folders) would otherwise give blocks of two or three classes each."""
    if num_images < 4:
        raise ValueError(f"the held-out set needs at least 4 images for a reference and a floor, got {num_images}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    half = num_images // 2
    return sorted(order[:half]), order[half:2 * half]


def floor_blocks(num_floor, n, num_seeds):
    """Disjoint blocks of n floor images, as many as fit up to num_seeds (at least one: n is capped)."""
    n = min(n, num_floor)
    count = max(1, min(num_seeds, num_floor // n))
    return [range(k * n, (k + 1) * n) for k in range(count)]


def mean_std(values):
    """(mean, std with ddof 1) of a list of numbers; std is None for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    if len(values) == 1:
        return values[0], None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def aggregate(per_seed):
    """{metric: {"mean", "std", "values"}} from a list of per-seed score dicts (their numeric entries)."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for key in keys:
        values = [s[key] for s in per_seed]
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def compare(a_mean, a_std, b_mean, b_std, *, lower_is_better=True):
    """'better', 'worse' or 'tie' for a against b: a tie when the mean +- std intervals overlap (a missing std
    counts as 0)."""
    spread = (a_std or 0.0) + (b_std or 0.0)
    if abs(a_mean - b_mean) <= spread:
        return "tie"
    a_better = a_mean < b_mean if lower_is_better else a_mean > b_mean
    return "better" if a_better else "worse"


def format_score(mean, std, digits=2):
    """'12.34 +- 0.56' (or '12.34' without a spread); 'n/a' for a missing or non-finite mean."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {std:.{digits}f}"
