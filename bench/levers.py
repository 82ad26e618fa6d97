"""The bundled UNet's speed levers, each against plain eager fp32 in one process (alternated rounds, medians): a full
teacher training step (EDM loss, backward, Adam) and a one-step generator forward, with
  - channels-last memory format (weights and inputs NHWC),
  - torch.compile (inductor; its first calls compile, timed separately: the break-even is the number of steps
    after which the compiled step has paid for its compilation). Inductor caches compiled kernels on disk
    (/tmp/torchinductor_<user>), so a second run compiles in seconds: the first run on a machine is the cold cost.

    python bench/levers.py [--device cpu] [--rounds 5] [--levers channels_last,compile]

Prints `RATIO <lever>_speedup_<case>: eager time / lever time` and `RATIO compile_break_even_steps_<case>`.
"""

import argparse
import time

import torch

from common import BUNDLED, alternated, cpu_banner, report_ratio
from pagoda.losses import EDMLoss
from pagoda.precond import Denoiser
from pagoda.unet import UNetModel


def _denoiser(device, channels_last):
    torch.manual_seed(0)
    net = Denoiser(UNetModel(**BUNDLED)).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def train_step(device, batch, *, channels_last=False, compile=False):
    denoiser = _denoiser(device, channels_last).train()
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    model = torch.compile(denoiser) if compile else denoiser
    loss_fn = EDMLoss()
    x = torch.rand(batch, 3, 16, 16, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 10

    def step():
        loss = loss_fn(model, x, y)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def one_step_forward(device, batch, *, channels_last=False, compile=False):
    denoiser = _denoiser(device, channels_last).eval().requires_grad_(False)
    model = torch.compile(denoiser) if compile else denoiser
    z = torch.randn(batch, 3, 16, 16, device=device) * 80
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    sigma = torch.full((batch,), 80.0, device=device)
    y = torch.arange(batch, device=device) % 10

    @torch.no_grad()
    def step():
        model(z, sigma, y)
    return step


CASES = {"teacher_train_step": (train_step, 64), "one_step_forward": (one_step_forward, 250)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--levers", default="channels_last,compile")
    parser.add_argument("--batch", type=int, default=0, help="batch for every case (0: 64 train, 250 forward)")
    args = parser.parse_args()
    print(cpu_banner(args.device), flush=True)
    levers = [lever for lever in args.levers.split(",") if lever]
    for name, (make, default_batch) in CASES.items():
        batch = args.batch or default_batch
        steps = {"eager": make(args.device, batch)}
        compile_seconds = None
        for lever in levers:
            steps[lever] = make(args.device, batch, **{lever: True})
            if lever == "compile":
                start = time.perf_counter()
                steps[lever]()  # compiles (fwd + bwd graphs for training)
                steps[lever]()
                compile_seconds = time.perf_counter() - start
        seconds = alternated(steps, rounds=args.rounds)
        print(f"{name} (batch {batch}): " + " | ".join(f"{k} {1e3 * v:.1f} ms" for k, v in seconds.items()),
              flush=True)
        for lever in levers:
            report_ratio(f"{lever}_speedup_{name}", seconds["eager"] / seconds[lever], "eager time / lever time")
        if compile_seconds is not None:
            saved = seconds["eager"] - seconds["compile"]
            steps_to_pay = compile_seconds / saved if saved > 0 else float("inf")
            print(f"{name}: compiling took {compile_seconds:.1f} s", flush=True)
            report_ratio(f"compile_break_even_steps_{name}", steps_to_pay,
                         f"compile time {compile_seconds:.1f} s / time saved per step (inf: never)")


if __name__ == "__main__":
    main()
