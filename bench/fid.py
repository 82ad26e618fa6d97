"""Benchmark the evaluator's two costs: Inception feature extraction and the 2048-d Frechet distance.

    python bench/fid.py [--num_images 32] [--batch 8] [--image_size 64] [--dim 2048] [--device cpu]

Feature extraction uses random weights (the speed does not depend on them) at the real 299 px input, timed for the
network as the evaluator prepares it (BatchNorm folded, channels-last) and, one after the other, as plain modules.
The Frechet distance is timed in the eigenvalue form used by the evaluator and in the scipy.linalg.sqrtm form of
the TF / ADM code, on the same full-rank covariances, and the ratio of the two is printed.
"""

import argparse
import time

import numpy as np
import torch

from evaluations.inception import random_inception
from evaluations.metrics import FeatureStats, frechet_distance, frechet_distance_sqrtm


def bench_features(model, *, num_images, batch, image_size, device):
    images = np.random.default_rng(0).integers(0, 256, size=(num_images, image_size, image_size, 3), dtype=np.uint8)
    model(images[:batch])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for begin in range(0, num_images, batch):
        model(images[begin:begin + batch])
    if device == "cuda":
        torch.cuda.synchronize()
    return num_images / (time.perf_counter() - start)


def random_stats(dim, seed):
    """Covariance of ReLU'd correlated Gaussians: full rank and Inception-like (non-negative, correlated)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    features = np.maximum(rng.normal(size=(2 * dim, dim)) @ mixing, 0)
    return FeatureStats.from_features(features)


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    plain = random_inception(seed=0, device=args.device)
    prepared = random_inception(seed=0, device=args.device).prepare_for_inference()  # what load_inception returns
    kw = dict(num_images=args.num_images, batch=args.batch, image_size=args.image_size, device=args.device)
    plain_rate, rate = bench_features(plain, **kw), bench_features(prepared, **kw)
    print(f"Inception features: {rate:.2f} images/s as the evaluator runs it (BatchNorm folded, channels-last), "
          f"{plain_rate:.2f} images/s plain ({args.image_size} px -> 299, batch {args.batch})")

    a, b = random_stats(args.dim, 1), random_stats(args.dim, 2)
    args_ab = (a.mu, a.sigma, b.mu, b.sigma)
    eigen_value, eigen_time = timed(frechet_distance, *args_ab)
    sqrtm_value, sqrtm_time = timed(frechet_distance_sqrtm, *args_ab)
    print(f"Frechet distance {args.dim}-d: eigenvalue form {eigen_time:.3f} s, scipy sqrtm {sqrtm_time:.3f} s, "
          f"ratio {sqrtm_time / eigen_time:.1f}x")
    print(f"  values {eigen_value:.6f} vs {sqrtm_value:.6f} (relative difference "
          f"{abs(eigen_value - sqrtm_value) / abs(sqrtm_value):.1e})")
    print(f"RATIO inception_images_per_s: {rate:.4g}  (evaluator throughput, {args.image_size} px -> 299)")
    print(f"RATIO inception_prepared_over_plain: {rate / plain_rate:.4g}  (folded BatchNorm + channels-last speed-up)")
    print(f"RATIO frechet_sqrtm_over_eigen: {sqrtm_time / eigen_time:.4g}  ({args.dim}-d Frechet distance time)")


if __name__ == "__main__":
    main()
