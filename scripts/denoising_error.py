"""Denoising error of teachers at fixed noise levels: mean squared error of D(x + sigma n, sigma, y) against x on
held-out images, the same images and noise for every model. It tells an under-trained teacher (errors high at every
sigma, in proportion) from a broken one (one range of sigma far off), which sample quality alone cannot.

    python scripts/denoising_error.py --models runs/a/exports/denoiser_ema0.999.pt,runs/b/exports/denoiser_ema0.999.pt \
        --data_dir bundled:mnist_test

Images are ADM-cropped to each teacher's resolution, with their labels for a conditional teacher. Prints a markdown
table (one row per model, one column per sigma); --out also writes it as JSON.
"""

import json
import os

import numpy as np
import torch

from pagoda import script_util
from pagoda.domain import cropped_images
from pagoda.image_datasets import open_source
from pagoda.image_util import from_uint8
from pagoda.model_io import load_teacher
from pagoda.random_util import StackedRandomGenerator

F, _c = script_util.Flag, script_util
GROUPS = {"error": dict(
    models=F((), "comma list of teacher exports (denoiser .pt with its sidecar); required"),
    data_dir=F("", "held-out labelled images (a bundled name such as bundled:mnist_test, a folder or an npz); "
               "required"),
    num_images=F(256, "images scored (the first ones of --data_dir)", _c.at_least(1)),
    sigmas=F((0.02, 0.1, 0.3, 1.0, 3.0, 10.0), "noise levels sigma at which each teacher is scored",
             _c.each(_c.greater_than(0))),
    batch_size=F(128, "images per forward", _c.at_least(1)),
    seed=F(0, "image i's noise comes from seed + i", _c.at_least(0)),
    out=F("", "also write the table as JSON to this file; '': print only"),
)}


@torch.no_grad()
def denoising_errors(denoiser, x, y, sigmas, *, seed=0, batch_size=128):
    """{sigma: mean over images and pixels of (D(x + sigma n, sigma, y) - x)^2}; image i's n from seed + i."""
    noise = StackedRandomGenerator("cpu", [seed + i for i in range(len(x))]).randn(x.shape, dtype=torch.float32)
    errors = {}
    for sigma in sigmas:
        total = 0.0
        for b in range(0, len(x), batch_size):
            xb, yb = x[b:b + batch_size], None if y is None else y[b:b + batch_size]
            sig = torch.full((len(xb),), float(sigma))
            total += ((denoiser(xb + sigma * noise[b:b + batch_size], sig, yb) - xb) ** 2).sum().item()
        errors[float(sigma)] = total / x.numel()
    return errors


def model_errors(path, source, args):
    denoiser = load_teacher(path)
    size = denoiser.backbone.config["image_size"]
    x = from_uint8(cropped_images(source, size, range(min(args.num_images, len(source)))))
    y = None
    if denoiser.backbone.config["num_classes"]:
        y = torch.as_tensor(np.asarray(source.labels)[:len(x)], dtype=torch.long)
    return {"model": path, "resolution": size, "num_images": len(x),
            "mse": denoising_errors(denoiser, x, y, args.sigmas, seed=args.seed, batch_size=args.batch_size)}


def markdown(rows):
    sigmas = list(rows[0]["mse"])
    lines = ["| model | res | " + " | ".join(f"MSE at sigma {s:g}" for s in sigmas) + " |",
             "|---|---|" + "---|" * len(sigmas)]
    lines += [f"| {r['model']} | {r['resolution']} px | " + " | ".join(f"{r['mse'][s]:.4f}" for s in sigmas) + " |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"models": "the teacher exports", "data_dir": "held-out images"})
    for path in args.models:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--models: {path} not found; pass a teacher export from <run_dir>/exports/")
    source = open_source(args.data_dir)
    rows = [model_errors(path, source, args) for path in args.models]
    print(markdown(rows))
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return rows


if __name__ == "__main__":
    main()
