"""Does bf16 move the scores of record? FID and KID of the same images with the evaluator's Inception in fp32 and
under bf16 autocast (both sides in the precision under test), against the spread of the scores over sampling seeds.

    python bench/inception_precision.py --ref runs/quickstart/ref16.npz \\
        --samples runs/quickstart/compare/samples/*/samples_1500x16x16x3.npz --num_seeds 3

Each samples file is cut into --num_seeds consecutive blocks (scripts/compare.py's seed layout). Prints, per file,
FID/KID mean +- std over the blocks in each precision and the mean absolute bf16 shift, and
`RATIO inception_bf16_fid_shift_over_spread` (the largest shift over the seed std: far below 1 means bf16 is
harmless at this sample size) and `RATIO inception_bf16_speedup` (fp32 feature time / bf16 feature time).
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch

from common import cpu_banner, report_ratio
from evaluations.inception import load_inception
from evaluations.metrics import FeatureStats, kid

PRECISIONS = ("fp32", "bf16")


def pool_features(model, images, *, precision, batch):
    """(pool features float64, seconds)."""
    device_type = next(model.parameters()).device.type
    start, pools = time.perf_counter(), []
    for begin in range(0, len(images), batch):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pools.append(model(images[begin:begin + batch])["pool"].float().cpu().numpy())
    return np.concatenate(pools).astype(np.float64), time.perf_counter() - start


def scores(ref_pool, pool):
    fid = FeatureStats.from_features(ref_pool).frechet_distance(FeatureStats.from_features(pool))
    return fid, kid(ref_pool, pool)[0]


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="reference images (ADM npz)")
    parser.add_argument("--samples", nargs="+", required=True, help="samples npz files, num_seeds blocks each")
    parser.add_argument("--num_seeds", type=int, default=3)
    parser.add_argument("--inception", default=None, help="Inception weight file (default: the evaluator's search)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(cpu_banner(args.device), flush=True)
    model = load_inception(args.inception, device=args.device)
    with np.load(args.ref) as f:
        ref = f["arr_0"]
    ref_pool, seconds = {}, {p: 0.0 for p in PRECISIONS}
    for p in PRECISIONS:
        ref_pool[p], t = pool_features(model, ref, precision=p, batch=args.batch)
        seconds[p] += t
    worst = 0.0
    for path in args.samples:
        with np.load(path) as f:
            blocks = np.array_split(f["arr_0"], args.num_seeds)
        table = {p: [] for p in PRECISIONS}
        for block in blocks:
            for p in PRECISIONS:
                pool, t = pool_features(model, block, precision=p, batch=args.batch)
                seconds[p] += t
                table[p].append(scores(ref_pool[p], pool))
        fid = {p: [s[0] for s in table[p]] for p in PRECISIONS}
        kid_ = {p: [s[1] * 1e3 for s in table[p]] for p in PRECISIONS}
        shift = statistics.mean(abs(a - b) for a, b in zip(fid["fp32"], fid["bf16"]))
        kid_shift = statistics.mean(abs(a - b) for a, b in zip(kid_["fp32"], kid_["bf16"]))
        spread = _mean_std(fid["fp32"])[1]
        worst = max(worst, shift / spread)
        print(f"{os.path.basename(os.path.dirname(path)) or path}: {len(blocks)} blocks of {len(blocks[0])}")
        for p in PRECISIONS:
            print(f"  {p}: FID {_mean_std(fid[p])[0]:.3f} +- {_mean_std(fid[p])[1]:.3f} | "
                  f"KID x1e3 {_mean_std(kid_[p])[0]:.3f} +- {_mean_std(kid_[p])[1]:.3f}")
        print(f"  mean |bf16 - fp32| on the same images: FID {shift:.4f} ({shift / spread:.3f} of the seed std), "
              f"KID x1e3 {kid_shift:.4f} ({kid_shift / _mean_std(kid_['fp32'])[1]:.3f} of its seed std)", flush=True)
    report_ratio("inception_bf16_fid_shift_over_spread", worst, "largest mean |FID shift| / FID seed std")
    report_ratio("inception_bf16_speedup", seconds["fp32"] / seconds["bf16"], "Inception feature time fp32 / bf16")


if __name__ == "__main__":
    main()
