"""Write an ADM-format reference batch (arr_0 uint8 NHWC, arr_1 labels) of real images from a dataset.

    python scripts/make_reference.py --data_dir bundled:mnist_test --image_size 32 --num_images 1000 --out ref32.npz

Images go through the same ADM centre crop as training; which images is a seeded draw without replacement.
--skip K drops the first K of that draw: with --skip N a second batch of N shares no image with the first, which is
what a real-vs-real floor needs.
"""

import os

import numpy as np
import torch

from pagoda import script_util
from pagoda.image_datasets import ImageDataset, open_source
from pagoda.image_util import to_uint8

F, _c = script_util.Flag, script_util
GROUPS = {"reference": dict(
    data_dir=F("bundled:mnist_test", "the real images: bundled:<name>, a folder or an ADM .npz"),
    image_size=F(32, "side in pixels of the ADM centre crop", _c.at_least(1)),
    num_images=F(1000, "images in the batch", _c.at_least(1)),
    seed=F(0, "seed of the draw without replacement", _c.at_least(0)),
    skip=F(0, "drop the first K images of the draw (--skip N after a batch of N: no image shared, for a floor)",
           _c.at_least(0)),
    out=F("", "the reference .npz to write; required"),
)}


def main(argv=None):
    parser, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                         required={"out": "the reference .npz to write"})
    dataset = ImageDataset(open_source(args.data_dir), image_size=args.image_size)
    if args.skip + args.num_images > len(dataset):
        parser.error(f"--skip {args.skip} + --num_images {args.num_images} exceeds the {len(dataset)} images of "
                     f"{args.data_dir}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    order = order[args.skip:args.skip + args.num_images].tolist()
    items = [dataset.load(i) for i in order]
    images = to_uint8(torch.stack([it["x"] for it in items]))
    labels = np.array([int(it["y"]) for it in items], dtype=np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, arr_0=images, arr_1=labels)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {images.shape} real images from {args.data_dir}")


if __name__ == "__main__":
    main()
