"""Image conversions and PNG grids (samples written by the scripts, previews written during training)."""

import math
import os

import numpy as np
import torch
from PIL import Image


def to_uint8(x):
    """[-1, 1] NCHW tensor -> uint8 NHWC numpy array (the ADM npz convention)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(arr):
    """uint8 NHWC numpy array -> [-1, 1] float NCHW tensor."""
    return torch.from_numpy(np.asarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1


def resize_bicubic(images, size):
    """uint8 NHWC images resized to size x size with Pillow's bicubic filter (the up-sampling baseline)."""
    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)) for img in images])


def psnr(a, b, data_range=2.0):
    """Per-sample PSNR in dB between images in [-1, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def make_grid(images, *, ncols=None, pad=1):
    """uint8 NHWC -> one uint8 HWC image, row-major, with `pad` black pixels between tiles."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = images[i]
    return grid


def save_grid(images, path, *, ncols=None, scale=1):
    """Write a PNG grid of uint8 NHWC images (nearest-neighbour enlarged by `scale` for small images)."""
    grid = make_grid(images, ncols=ncols)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
