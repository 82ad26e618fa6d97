"""Key/value training logs averaged across ranks (stdout, log.txt, progress.csv) and rank-0 progress bars.

Usage: `configure(run_dir)` once, `logkv_mean(key, value)` as often as wanted, `dumpkvs()` at the log
cadence. Values logged with `logkv_mean` are count-weighted means over every call on every rank.
"""

import csv
import json
import os
import sys
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from . import dist_util


class Logger:
    def __init__(self, run_dir=None):
        self.run_dir = run_dir
        self.sums = defaultdict(float)
        self.counts = defaultdict(float)
        self.values = {}
        self.csv_keys = []
        if run_dir and dist_util.is_main():
            os.makedirs(run_dir, exist_ok=True)

    # -- key/value -----------------------------------------------------------------------------------
    def logkv(self, key, value):
        self.values[key] = value if isinstance(value, int) and not isinstance(value, bool) else float(value)

    def logkv_mean(self, key, value, count=1):
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        self.sums[key] += float(value) * count
        self.counts[key] += count

    def _reduce(self):
        """Count-weighted mean of every key over all ranks (every rank must call dumpkvs)."""
        all_keys = sorted(set().union(*dist_util.all_gather_objects(sorted(self.sums))))
        if not all_keys:
            return dict(self.values)
        totals = torch.tensor([[self.sums.get(k, 0.0), self.counts.get(k, 0.0)] for k in all_keys],
                              dtype=torch.float64)
        dist_util.all_reduce_sum(totals)
        out = {k: (s / c if c else float("nan")) for k, (s, c) in zip(all_keys, totals.tolist())}
        out.update(self.values)
        return out

    def dumpkvs(self):
        kvs = self._reduce()
        self.sums.clear()
        self.counts.clear()
        self.values.clear()
        if dist_util.is_main() and kvs:
            self._write_table(kvs)
            self._write_csv(kvs)
        return kvs

    # -- sinks -----------------------------------------------------------------------------------------
    def _write_table(self, kvs):
        width = max(len(k) for k in kvs)
        lines = ["-" * (width + 16)]
        lines += [f"| {k:<{width}} | {_fmt(v):>10} |" for k, v in sorted(kvs.items())]
        lines.append(lines[0])
        self.log("\n".join(lines))

    def _write_csv(self, kvs):
        if not self.run_dir:
            return
        path = os.path.join(self.run_dir, "progress.csv")
        new_keys = [k for k in sorted(kvs) if k not in self.csv_keys]
        if new_keys or not os.path.exists(path):
            # Keys can appear late (e.g. a GAN term after warm-up): rewrite the file with the wider header.
            rows = _read_csv(path)
            self.csv_keys.extend(new_keys)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.csv_keys)
                writer.writeheader()
                writer.writerows(rows)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.csv_keys).writerow({k: kvs.get(k, "") for k in self.csv_keys})

    def log(self, *args):
        if not dist_util.is_main():
            return
        text = " ".join(str(a) for a in args)
        print(text, flush=True)
        if self.run_dir:
            with open(os.path.join(self.run_dir, "log.txt"), "a") as f:
                f.write(text + "\n")


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


_CURRENT = Logger()


def configure(run_dir=None):
    """Start logging into `run_dir` (rank 0 writes; every rank takes part in the averaging)."""
    global _CURRENT
    _CURRENT = Logger(run_dir)
    if run_dir and dist_util.is_main() and os.path.exists(os.path.join(run_dir, "progress.csv")):
        _CURRENT.csv_keys = list(_read_csv_header(os.path.join(run_dir, "progress.csv")))
    return _CURRENT


def _read_csv_header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def logkv(key, value):
    _CURRENT.logkv(key, value)


def logkv_mean(key, value, count=1):
    _CURRENT.logkv_mean(key, value, count)


def dumpkvs():
    return _CURRENT.dumpkvs()


def log(*args):
    _CURRENT.log(*args)


def banner(*, title, config, world_size, per_rank_batch, global_batch, param_counts):
    """Start-up summary: resolved config, world size, batch sizes and trainable/frozen parameter counts."""
    lines = [f"== {title} ==", f"world size {world_size} | per-rank batch {per_rank_batch} | global batch {global_batch}"]
    for name, (trainable, frozen) in param_counts.items():
        lines.append(f"{name}: {trainable:,} trainable, {frozen:,} frozen parameters")
    lines.append("config: " + json.dumps(config, sort_keys=True, default=str))
    log("\n".join(lines))


def progress(iterable=None, *, total=None, desc=None, unit="it"):
    """tqdm on rank 0 (to stderr, so logs stay clean); silent on the other ranks."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, disable=not dist_util.is_main())
