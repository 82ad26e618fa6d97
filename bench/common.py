"""Shared helpers of the bench scripts: timing and the bundled network configuration."""

import platform
import statistics
import time

import torch

from pagoda.methods import diffusion

# The bundled recipe's teacher UNet (the diffusion method's mnist16 preset, 10 classes), as UNetModel's kwargs.
BUNDLED = diffusion.build_backbone(num_classes=10, **diffusion.preset_architecture("mnist16")).config


def timed(fn, *, repeats=5, warmup=1):
    """Median wall time of fn() in seconds (CUDA-synchronised)."""
    return alternated({"fn": fn}, rounds=repeats, warmup=warmup)["fn"]


def report_ratio(name, value, note=""):
    """The line bench/run_all.sh collects."""
    print(f"RATIO {name}: {value:.4g}" + (f"  ({note})" if note else ""), flush=True)


def alternated(fns, *, rounds=3, warmup=1):
    """{name: median seconds per call}, the functions called in turn each round so that drifts in the machine's
    speed (other load, clocks) hit every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_banner(device):
    """One line naming what ran the bench: the GPU, or the CPU model, its bf16 flags and torch's thread count."""
    from pagoda.amp import CPU_BF16_FLAGS, cpu_flags

    if torch.device(device).type == "cuda":
        return f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if platform.system() == "Linux" else platform.processor()
    flags = sorted(cpu_flags() & set(CPU_BF16_FLAGS)) or ["none"]
    return f"device: cpu {model} | bf16 flags: {','.join(flags)} | threads {torch.get_num_threads()} | torch {torch.__version__}"
