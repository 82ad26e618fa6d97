"""Feature extraction speed of the method table's domain classifier against the evaluator's Inception, side by side.

    python bench/domain.py [--num_images 200] [--image_size 16] [--rounds 3] [--device cpu] [--table compare.json]

Both networks get the same uint8 images (16 px digits-sized by default) and run as the evaluation runs them: the
domain classifier through `domain_features` (resize to its 32 px input), Inception as `load_inception` prepares it
(BatchNorm folded, channels-last, resize to 299). Random weights: the speed does not depend on them. The two are
timed alternately, median of --rounds after a warm-up of each. --table adds the wall time of a finished method
table (compare.json of scripts/compare.py) and of its rows.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import report_ratio
from evaluations.inception import random_inception
from pagoda.domain import DomainClassifier, domain_features


def rates(fns, images, rounds):
    """images/s of each fn(images), timed alternately; median over rounds after one warm-up call each."""
    seconds = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(images)
            if r:
                seconds[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(t) for name, t in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--table", default="", help="a compare.json whose wall times to report")
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.num_images, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    torch.manual_seed(0)
    domain = DomainClassifier(10).to(args.device).eval()
    inception = random_inception(seed=0, device=args.device).prepare_for_inference()

    def inception_features(batch):
        with torch.no_grad():
            for begin in range(0, len(batch), args.batch):
                inception(batch[begin:begin + args.batch])

    measured = rates({"domain": lambda x: domain_features(domain, x, batch=args.batch),
                      "inception": inception_features}, images, args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.num_images} images of "
          f"{args.image_size} px: domain {measured['domain']:.1f} images/s, Inception {measured['inception']:.2f}")
    report_ratio("domain_images_per_s", measured["domain"], f"{args.image_size} px -> 32")
    report_ratio("domain_over_inception_speed", measured["domain"] / measured["inception"],
                 "feature extraction, same images, alternated")
    if args.table:
        table = json.loads(Path(args.table).read_text())
        for row in table["rows"]:
            print(f"  row {row['label']}: {row['wall_seconds']:.0f} s ({row['n']} x {len(row['per_seed'])} samples, "
                  f"{row['images_per_s']:.1f} images/s)")
        report_ratio("method_table_seconds", table["wall_seconds"], args.table)


if __name__ == "__main__":
    main()
