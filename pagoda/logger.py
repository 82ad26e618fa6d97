"""Key/value training logs averaged across ranks (stdout, log.txt, progress.csv, optionally TensorBoard event files)
and rank-0 progress bars.

Usage: `configure(run_dir, formats)` once, `logkv_mean(key, value)` as often as wanted, `dumpkvs()` at the log
cadence. Values logged with `logkv_mean` are count-weighted means over every call on every rank. Only rank 0 writes.
"""

import csv
import json
import os
import sys
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from . import dist_util
from .image_util import make_grid

# What --log_format may name: progress.csv (always: reports and plots read it), TensorBoard event files beside it.
LOG_FORMATS = ("csv", "tensorboard")


class Logger:
    def __init__(self, run_dir=None, formats=("csv",)):
        unknown = sorted(set(formats) - set(LOG_FORMATS))
        if unknown:
            raise ValueError(f"unknown log formats {unknown}: choose from {', '.join(LOG_FORMATS)}")
        self.run_dir = run_dir
        self.formats = tuple(formats)
        self.sums = defaultdict(float)
        self.counts = defaultdict(float)
        self.values = {}
        self.csv_keys = []
        self.events = None
        self.dumps = 0
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
        self.dumps += 1
        if dist_util.is_main() and kvs:
            self._write_table(kvs)
            if "csv" in self.formats:
                self._write_csv(kvs)
            if self._tensorboard():
                self._write_events(kvs)
        return kvs

    # -- TensorBoard ---------------------------------------------------------------------------------
    def start_at(self, step):
        """This run goes on from `step` (0 when fresh): TensorBoard readers drop whatever an earlier, interrupted
        run of the folder logged after it, so a resumed run's curves never repeat a step."""
        if self._tensorboard():
            self.close()
            self.events = _event_writer(self.run_dir, purge_step=step + 1)

    def log_image(self, tag, images, step):
        """uint8 NHWC `images` as one grid under `tag` at `step` (TensorBoard only; rank 0)."""
        if self._tensorboard():
            self._writer().add_image(tag, make_grid(images), int(step), dataformats="HWC")
            self.events.flush()

    def _tensorboard(self):
        return "tensorboard" in self.formats and self.run_dir and dist_util.is_main()

    def _writer(self):
        if self.events is None:
            self.events = _event_writer(self.run_dir, purge_step=None)
        return self.events

    def _write_events(self, kvs):
        """Every scalar at the loop's `step` (the count of dumps where no step was logged)."""
        step = int(kvs.get("step", self.dumps))
        writer = self._writer()
        for key, value in sorted(kvs.items()):
            if key != "step":
                writer.add_scalar(key, value, step)
        writer.flush()  # at the log cadence, so a watching TensorBoard sees each row as it is written

    def close(self):
        if self.events is not None:
            self.events.close()
            self.events = None

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


def _event_writer(run_dir, *, purge_step):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(f"--log_format tensorboard needs the tensorboard package ({exc}); pip install it from "
                          "requirements.txt, or leave tensorboard out of --log_format") from exc
    return SummaryWriter(run_dir, purge_step=purge_step)


_CURRENT = Logger()


def configure(run_dir=None, formats=("csv",)):
    """Start logging into `run_dir` in `formats` (see LOG_FORMATS; rank 0 writes, every rank takes part in the
    averaging). The previous logger's event file is closed."""
    global _CURRENT
    _CURRENT.close()
    _CURRENT = Logger(run_dir, formats)
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


def log_image(tag, images, step):
    _CURRENT.log_image(tag, images, step)


def start_at(step):
    _CURRENT.start_at(step)


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
