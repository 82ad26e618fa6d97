"""bf16 autocast against fp32, side by side in one process (alternated rounds, medians), for every network that
runs in the pipeline: the teacher's training step and forward at the bundled size, the ImageNet-64 UNet forward,
encoding (the real encode_chunks path), one-step sampling at 16 and 32 px, and the evaluator's Inception.
(The discriminator step's ratio is bench/discriminator.py's.)

    python bench/precision.py [--device cpu] [--rounds 3] [--skip imagenet64]

Prints a table and `RATIO bf16_speedup_<name>: fp32 time / bf16 time` lines (above 1: bf16 is faster), plus what
`--precision auto` resolves to here.
"""

import argparse
import tempfile

import numpy as np
import torch

from common import BUNDLED, alternated, cpu_banner, report_ratio
from evaluations.inception import random_inception
from pagoda.amp import auto_precision
from pagoda.encoding import encode_chunks
from pagoda.generator import Generator, grow
from pagoda.image_datasets import ImageDataset, open_source
from pagoda.latent_store import LatentStore, num_chunks, work_items
from pagoda.losses import EDMLoss
from pagoda.precond import Denoiser
from pagoda.sampling import karras_sigmas
from pagoda.unet import UNetModel, imagenet64_config


def _net(config, device):
    torch.manual_seed(0)
    return UNetModel(**config).to(device)


def _autocast(device, bf16):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def teacher_step(device, batch):
    denoiser = Denoiser(_net(BUNDLED, device)).train()
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    x = torch.rand(batch, 3, 16, 16, device=device) * 2 - 1
    y = torch.arange(batch, device=device) % 10

    def step(bf16):
        with _autocast(device, bf16):
            loss = loss_fn(denoiser, x, y)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def forward(config, batch, device):
    denoiser = Denoiser(_net(config, device)).eval().requires_grad_(False)
    size = config["image_size"]
    x = torch.randn(batch, 3, size, size, device=device)
    sigma = torch.full((batch,), 1.0, device=device)
    y = torch.arange(batch, device=device) % config["num_classes"]

    @torch.no_grad()
    def run(bf16):
        with _autocast(device, bf16):
            denoiser(x, sigma, y)
    return run


def encode(device, num_images, num_steps):
    teacher = Denoiser(_net(BUNDLED, device)).eval().requires_grad_(False)
    dataset = ImageDataset(open_source("bundled:mnist"), image_size=16, cache=True)
    items = work_items(range(num_images), [False])
    sigmas = karras_sigmas(num_steps, device=device)

    def run(bf16):
        with tempfile.TemporaryDirectory() as folder:
            encode_chunks(teacher, dataset, LatentStore(folder), items, list(range(num_chunks(len(items), num_images))),
                          chunk_size=num_images, sigmas=sigmas, batch_size=num_images, dtype=np.float16,
                          autocast=lambda: _autocast(device, bf16), progress=False)
    return run


def one_step(device, batch, factor):
    backbone = _net(BUNDLED, device)
    if factor > 1:
        backbone = grow(backbone, factor=factor)[0].to(device)
    generator = Generator(backbone).eval()
    z = torch.randn(batch, 3, 16, 16, device=device) * 80
    y = torch.arange(batch, device=device) % 10

    def run(bf16):
        with _autocast(device, bf16):
            generator.sample(z, y)
    return run


def inception(device, batch):
    model = random_inception(device=device).prepare_for_inference()
    images = np.random.default_rng(0).integers(0, 256, size=(batch, 16, 16, 3), dtype=np.uint8)

    def run(bf16):
        with _autocast(device, bf16):
            model(images)
    return run


def cases(args):
    """name -> (make the step, images per call)."""
    d = args.device
    return {
        "teacher_train_step": (lambda: teacher_step(d, 64), 64),
        "unet_forward_bundled": (lambda: forward(BUNDLED, 64, d), 64),
        "unet_forward_imagenet64": (lambda: forward(imagenet64_config(64), args.imagenet_batch, d),
                                    args.imagenet_batch),
        "encode": (lambda: encode(d, args.encode_images, args.encode_steps), args.encode_images),
        "one_step_16px": (lambda: one_step(d, 250, 1), 250),
        "one_step_32px": (lambda: one_step(d, 250, 2), 250),
        "inception": (lambda: inception(d, args.inception_batch), args.inception_batch),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternated fp32/bf16 rounds (medians are reported)")
    parser.add_argument("--skip", default="", help="comma list of cases to leave out")
    parser.add_argument("--imagenet_batch", type=int, default=4)
    parser.add_argument("--encode_images", type=int, default=64)
    parser.add_argument("--encode_steps", type=int, default=6)
    parser.add_argument("--inception_batch", type=int, default=20)
    args = parser.parse_args()
    print(cpu_banner(args.device), flush=True)
    skip = {s for s in args.skip.split(",") if s}
    print(f"{'case':<26} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16 speed-up':>14}", flush=True)
    for name, (make, images) in cases(args).items():
        if name in skip:
            continue
        step = make()
        seconds = alternated({"fp32": lambda: step(False), "bf16": lambda: step(True)}, rounds=args.rounds)
        speedup = seconds["fp32"] / seconds["bf16"]
        print(f"{name:<26} {images / seconds['fp32']:11.1f} {images / seconds['bf16']:11.1f} {speedup:14.2f}",
              flush=True)
        report_ratio(f"bf16_speedup_{name}", speedup, "fp32 time / bf16 time, alternated in one process")
    resolved, reason = auto_precision(args.device)
    print(f"--precision auto resolves here to {resolved} ({reason})")


if __name__ == "__main__":
    main()
