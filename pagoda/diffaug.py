"""DiffAugment (Zhao et al. 2020) with explicit, shareable parameters.

The random parameters are sampled once (`sample_params`) and applied to every image tensor passed to the call,
so paired inputs (a reconstruction and its target; fakes and reals in the discriminator step) see the same
colour change, shift and cutout. Every op is differentiable with respect to the images. Images are in [-1, 1].
"""

import torch

COLOR_OPS = ("brightness", "saturation", "contrast")
POLICIES = ("color", "translation", "cutout")


def _brightness(x, params):
    return x + params["brightness"].to(x.dtype).view(-1, 1, 1, 1)


def _saturation(x, params):
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * params["saturation"].to(x.dtype).view(-1, 1, 1, 1) + mean


def _contrast(x, params):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * params["contrast"].to(x.dtype).view(-1, 1, 1, 1) + mean


def _translation(x, params):
    """out[h, w] = x[h - dy, w - dx], zero where that source pixel lies outside the image."""
    n, c, height, width = x.shape
    dy, dx = params["translation"].to(x.device).unbind(dim=1)
    rows = torch.arange(height, device=x.device)[None, :] - dy[:, None]
    cols = torch.arange(width, device=x.device)[None, :] - dx[:, None]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
    index = index.reshape(n, 1, height * width).expand(n, c, height * width)
    shifted = x.reshape(n, c, height * width).gather(2, index).view(n, c, height, width)
    return shifted * valid[:, None].to(x.dtype)


def _cutout(x, params):
    """Zero the square [top, top + size) x [left, left + size), clipped to the image."""
    _, _, height, width = x.shape
    top, left = params["cutout"].to(x.device).unbind(dim=1)
    size_h, size_w = params["cutout_size"]
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size_h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size_w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


OPS = {
    "brightness": _brightness, "saturation": _saturation, "contrast": _contrast,
    "translation": _translation, "cutout": _cutout,
}


class DiffAugment:
    """brightness + U(-0.5, 0.5); saturation x U(0, 2) around the per-pixel channel mean; contrast x U(0.5, 1.5)
    around the image mean; integer translation up to +-round(translation_ratio * side) with zero fill; cutout
    of a square of side round(cutout_ratio * side), centred uniformly (it may be clipped by the border)."""

    def __init__(self, *, policy=POLICIES, translation_ratio=0.125, cutout_ratio=0.2):
        if isinstance(policy, str):
            policy = tuple(p for p in policy.split(",") if p)
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {', '.join(POLICIES)}")
        self.policy = tuple(policy)
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    @property
    def ops(self):
        """Op names in the order they are applied."""
        names = []
        for p in self.policy:
            names.extend(COLOR_OPS if p == "color" else (p,))
        return names

    def sample_params(self, n, size, device, generator=None):
        """Random parameters for a batch of n images of `size` (int or (H, W)); draws come from `generator`
        (on its own device) when one is given, so a seeded generator reproduces them."""
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        draw_device = generator.device if generator is not None else device

        def uniform(low, high):
            u = torch.rand(n, device=draw_device, generator=generator)
            return (low + (high - low) * u).to(device)

        def integers(low, high):  # inclusive low, exclusive high
            return torch.randint(low, high, (n,), device=draw_device, generator=generator).to(device)

        params = {"size": (height, width)}
        for op in self.ops:
            if op == "brightness":
                params[op] = uniform(-0.5, 0.5)
            elif op == "saturation":
                params[op] = uniform(0.0, 2.0)
            elif op == "contrast":
                params[op] = uniform(0.5, 1.5)
            elif op == "translation":
                shift_h, shift_w = int(height * self.translation_ratio + 0.5), int(width * self.translation_ratio + 0.5)
                params[op] = torch.stack([integers(-shift_h, shift_h + 1), integers(-shift_w, shift_w + 1)], dim=1)
            else:
                size_hw = (int(height * self.cutout_ratio + 0.5), int(width * self.cutout_ratio + 0.5))
                params["cutout_size"] = size_hw
                params[op] = self._sample_cutout(height, width, size_hw, integers)
        return params

    @staticmethod
    def _sample_cutout(height, width, size_hw, integers):
        size_h, size_w = size_hw
        # Centre in [0, side] (even sizes) or [0, side) (odd sizes), as in DiffAugment; store the top-left corner.
        centre_h = integers(0, height + 1 - size_h % 2)
        centre_w = integers(0, width + 1 - size_w % 2)
        return torch.stack([centre_h - size_h // 2, centre_w - size_w // 2], dim=1)

    def __call__(self, *images, params=None, generator=None):
        """Apply one set of random parameters to every image tensor; returns a tuple of the augmented images."""
        if not images:
            raise ValueError("DiffAugment needs at least one image tensor")
        n, _, height, width = images[0].shape
        for x in images[1:]:
            if x.shape[0] != n or x.shape[-2:] != images[0].shape[-2:]:
                raise ValueError(
                    f"paired images must share batch size and spatial size, got {tuple(images[0].shape)} "
                    f"and {tuple(x.shape)}"
                )
        if params is None:
            params = self.sample_params(n, (height, width), images[0].device, generator=generator)
        elif tuple(params["size"]) != (height, width):
            raise ValueError(f"params were sampled for size {params['size']}, images are {(height, width)}")
        elif any(params[op].shape[0] != n for op in self.ops):
            raise ValueError(f"params were sampled for another batch size than the images' ({n})")
        return tuple(self._apply(x, params) for x in images)

    def _apply(self, x, params):
        for op in self.ops:
            x = OPS[op](x, params)
        return x
