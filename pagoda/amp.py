"""Precision policy: fp32, bf16 or fp16 through torch.autocast, with a GradScaler for fp16.

`MixedPrecision.step()` returns whether the optimiser step was taken: with fp16 an overflow (inf/NaN
gradients) skips the step and lowers the loss scale, and the caller must then skip the EMA update too.
"""

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
