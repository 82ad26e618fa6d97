"""Throughput and peak memory of the ADM UNet: a training step (forward + backward, no optimiser) and a no-grad
forward, for the released ImageNet-64 configuration and the small "bundled" configuration used on a laptop.

    python bench/unet_step.py --device cpu --iters 2 --configs bundled,imagenet64

Peak memory is torch.cuda.max_memory_allocated on CUDA (reset per phase). On CPU it is the process's maximum
resident set size (getrusage), which never decreases, so each CPU figure is the peak of the run so far.
"""

import argparse
import resource
import time

import torch

from common import BUNDLED
from pagoda.unet import UNetModel, imagenet64_config

CONFIGS = {"imagenet64": (imagenet64_config(64), 2), "bundled": (BUNDLED, 32)}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(model, batch, device):
    cfg = model.config
    x = torch.randn(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"], device=device)
    sigma = torch.exp(torch.randn(batch, device=device) * 1.2 - 1.2)
    y = torch.randint(0, cfg["num_classes"], (batch,), device=device) if cfg["num_classes"] else None
    return x, sigma, y


def time_phase(step, iters, warmup, device):
    """Seconds per iteration of `step` after `warmup` untimed iterations, and the phase's peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / iters, peak_memory_mib(device)


def bench_config(name, args, device):
    kwargs, default_batch = CONFIGS[name]
    batch = args.batch or default_batch
    model = UNetModel(**dict(kwargs, use_checkpoint=args.use_checkpoint)).to(device)
    params = sum(p.numel() for p in model.parameters())
    x, sigma, y = make_batch(model, batch, device)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.precision], enabled=args.precision != "fp32")

    def train_step():
        with autocast:
            loss = model(x, sigma, y).float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward():
        with autocast:
            model(x, sigma, y)

    model.train()
    train_s, train_mem = time_phase(train_step, args.iters, args.warmup, device)
    model.eval()
    fwd_s, fwd_mem = time_phase(forward, args.iters, args.warmup, device)
    for phase, seconds, mem in (("train_step", train_s, train_mem), ("forward", fwd_s, fwd_mem)):
        print(f"{name:<11} {phase:<10} params={params / 1e6:7.2f}M batch={batch:<3} "
              f"{batch / seconds:9.2f} img/s {seconds * 1e3:9.1f} ms/iter peak_mem={mem:9.1f} MiB", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="batch for every config (0: imagenet64 2, bundled 32)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per phase")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per phase")
    parser.add_argument("--configs", default="bundled,imagenet64", help=f"comma list from {sorted(CONFIGS)}")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="autocast dtype")
    parser.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing of the blocks")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} precision={args.precision} threads={torch.get_num_threads()} "
          f"use_checkpoint={args.use_checkpoint} torch={torch.__version__}", flush=True)
    torch.manual_seed(0)
    for name in names:
        bench_config(name, args, device)


if __name__ == "__main__":
    main()
