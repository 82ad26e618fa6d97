"""Encoder overhead: encode wall time / (number of network evaluations x one teacher forward at the same batch).

    python bench/encode.py [--num_images 200] [--batch 100] [--num_steps 18] [--device cpu]

Runs the real encoding path (pagoda.encoding.encode_chunks: data loading, inversion, fp16 storage, chunk writes)
on the bundled digits with a random-weight bundled teacher. Target: at most 1.10.
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from common import BUNDLED, report_ratio, timed
from pagoda.encoding import encode_chunks
from pagoda.image_datasets import ImageDataset, open_source
from pagoda.latent_store import LatentStore, num_chunks, work_items
from pagoda.precond import Denoiser
from pagoda.sampling import karras_sigmas
from pagoda.unet import UNetModel


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--num_steps", type=int, default=18)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = Denoiser(UNetModel(**BUNDLED)).to(args.device).eval().requires_grad_(False)
    dataset = ImageDataset(open_source("bundled:mnist"), image_size=16, cache=True)
    items = work_items(range(args.num_images // 2), [False, True])
    sigmas = karras_sigmas(args.num_steps, device=args.device)
    x = torch.randn(args.batch, 3, 16, 16, device=args.device)
    y = torch.arange(args.batch, device=args.device) % 10
    sigma = torch.full((args.batch,), 1.0, device=args.device)
    with torch.no_grad():
        forward = timed(lambda: teacher(x, sigma, y), repeats=7)
    with tempfile.TemporaryDirectory() as folder:
        store = LatentStore(folder)
        chunks = list(range(num_chunks(len(items), args.batch)))
        start = time.perf_counter()
        encode_chunks(teacher, dataset, store, items, chunks, chunk_size=args.batch, sigmas=sigmas,
                      batch_size=args.batch, dtype=np.float16, progress=False)
        wall = time.perf_counter() - start
    nfe = 2 * (args.num_steps - 1)
    ideal = len(chunks) * nfe * forward
    print(f"encoded {len(items)} items in {wall:.2f} s; {len(chunks)} batches x {nfe} NFE x {forward * 1e3:.1f} ms "
          f"forward = {ideal:.2f} s of network time")
    report_ratio("encode_overhead", wall / ideal, "target <= 1.10")


if __name__ == "__main__":
    main()
