"""Shared helpers of the bench scripts: timing and the bundled network configuration."""

import statistics
import time

import torch

BUNDLED = dict(image_size=16, model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, attention_resolutions=(2, 4),
               num_head_channels=32, num_classes=10)


def timed(fn, *, repeats=5, warmup=1):
    """Median wall time of fn() in seconds (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report_ratio(name, value, note=""):
    """The line bench/run_all.sh collects."""
    print(f"RATIO {name}: {value:.4g}" + (f"  ({note})" if note else ""), flush=True)
