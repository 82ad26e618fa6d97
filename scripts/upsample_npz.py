"""Bicubically up-sample the images of an ADM npz (the baseline that stage 3 must beat).

    python scripts/upsample_npz.py --input runs/s2/samples_500x16x16x3.npz --image_size 32 --out_dir runs/s2_bicubic
"""

import os
import sys
import zipfile

import numpy as np

from pagoda import script_util
from pagoda.image_util import resize_bicubic, save_grid

F, _c = script_util.Flag, script_util
GROUPS = {"upsample": dict(
    input=F("", "an ADM npz of samples (scripts/sample.py's samples_*.npz); required"),
    image_size=F(32, "side in pixels to up-sample to (bicubic)", _c.at_least(1)),
    out_dir=F("", "folder for samples_<N>x<H>x<W>x3.npz and grid.png; required"),
)}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"input": "the .npz of samples to up-sample", "out_dir": "where to write"})
    try:
        with np.load(args.input) as data:
            images, labels = data["arr_0"], data["arr_1"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        sys.exit(f"error: {args.input} cannot be read as an ADM npz with arr_0 and arr_1 ({type(exc).__name__}: "
                 f"{exc}); pass the samples_*.npz that scripts/sample.py wrote")
    images = resize_bicubic(images, args.image_size)
    os.makedirs(args.out_dir, exist_ok=True)
    n, h, w, c = images.shape
    path = os.path.join(args.out_dir, f"samples_{n}x{h}x{w}x{c}.npz")
    np.savez(path + ".tmp.npz", arr_0=images, arr_1=labels)
    os.replace(path + ".tmp.npz", path)
    save_grid(images[:64], os.path.join(args.out_dir, "grid.png"), scale=max(1, 128 // h))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
