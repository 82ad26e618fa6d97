"""Precision policy: fp32, bf16 or fp16 through torch.autocast, with a GradScaler for fp16; `auto` resolution.

`MixedPrecision.step()` returns whether the optimiser step was taken: with fp16 an overflow (inf/NaN
gradients) skips the step and lowers the loss scale, and the caller must then skip the EMA update too.

`--precision auto` resolves once, before anything is recorded, to bf16 where bf16 is native (a CUDA device that
supports it; a CPU whose flags list AMX-BF16 or AVX512-BF16), else fp32. Where it is native, bf16 speeds up every
network the pipeline trains or samples, the narrow bundled UNet included (bench/precision.py measures each), and a
bf16 quickstart scores as the fp32 one within the seed spread. The evaluator's Inception is not covered: it stays
fp32, since bf16 moves FID by more than the seed spread (bench/inception_precision.py).
Only autocast's matmuls/convolutions drop to bf16: losses, preconditioning, ODE states, parameters and optimiser
states stay fp32, and records (config.json, encoder manifests, sampler identities) store the resolved value.
"""

import contextlib
import functools
import os

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto",) + tuple(PRECISIONS)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """The CPU's flags, unless PAGODA_CPU_BF16 is set: 0 makes `auto` treat the CPU as without bf16, 1 as with it."""
    override = os.environ.get("PAGODA_CPU_BF16")
    if override is not None:
        if override not in ("0", "1"):
            raise ValueError(f"PAGODA_CPU_BF16 must be 0 or 1, got {override!r}")
        return override == "1"
    return bool(cpu_flags() & set(CPU_BF16_FLAGS))


def bf16_native(device):
    """Whether `device` computes bf16 in hardware (not emulated through fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def auto_precision(device):
    """(precision, reason) that `auto` resolves to on `device`."""
    device = torch.device(device)
    if not bf16_native(device):
        return "fp32", f"{device.type}: no native bf16"
    if device.type == "cpu":
        return "bf16", f"cpu: native bf16 ({', '.join(sorted(cpu_flags() & set(CPU_BF16_FLAGS)))})"
    return "bf16", f"{device.type}: native bf16"


def resolve_precision(precision, device, *, log=None):
    """`precision` itself unless it is `auto`; then what auto_precision chooses (reported through `log`)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    if precision != "auto":
        return precision
    resolved, reason = auto_precision(device)
    if log:
        log(f"precision auto -> {resolved} ({reason})")
    return resolved


class MixedPrecision:
    def __init__(self, *, precision="fp32", device=torch.device("cpu"), init_scale=2.0**16, grad_clip=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.device_type = torch.device(device).type
        self.dtype = PRECISIONS[precision]
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler(self.device_type, init_scale=init_scale) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer, params):
        """Unscale, optionally clip, step. Returns (took_step, grad_norm)."""
        params = [p for p in params if p.grad is not None]
        if self.scaler:
            self.scaler.unscale_(optimizer)
        grad_norm = _grad_norm(params)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            took = self.scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
        elif torch.isfinite(grad_norm):
            optimizer.step()
            took = True
        else:
            took = False  # never apply non-finite gradients, in any precision
        return took, grad_norm

    @property
    def log_scale(self):
        import math

        return math.log2(self.scaler.get_scale()) if self.scaler else 0.0

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state):
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def _grad_norm(params):
    if not params:
        return torch.tensor(0.0)
    norms = torch._foreach_norm([p.grad.detach().float() for p in params])
    return torch.linalg.vector_norm(torch.stack(norms))
