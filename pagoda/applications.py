"""Applications of the one-step generator on the user's own images: super-resolution, inpainting (latent search),
class transfer and interpolation, all built on one step, the teacher's PF-ODE encoding z = E(x) of an image.

The teacher works at low resolution, so an image x at the teacher's size is encoded by the PF-ODE (or the
amortised encoder) to z at sigma_max, and any one-step generator decodes z, at its own (grown) resolution:
G(E(x), y) is x super-resolved, G(E(x), y') is x in class y', G(slerp(z_a, z_b, t)) interpolates.
"""

import os
import time

import numpy as np
import torch

from . import logger
from .image_datasets import center_crop_arr
from .random_util import StackedRandomGenerator, noised
from .sampling import heun_invert, heun_step, karras_sigmas


def check_models(teacher, generator, *, teacher_path, generator_path):
    """A teacher and a generator can be chained only if the generator was distilled from that teacher (the content
    hash its sidecar records, when it records one), its latent is the teacher's image size and both know the same
    classes; anything else is refused here, before any image is read."""
    t_cfg, g_cfg = teacher.backbone.config, generator.backbone.config
    if t_cfg["image_size"] != generator.latent_size:
        raise ValueError(f"the teacher {teacher_path} works at {t_cfg['image_size']} px but the generator "
                         f"{generator_path} takes {generator.latent_size} px latents; use the generator distilled "
                         "from this teacher")
    t_classes, g_classes = t_cfg["num_classes"], g_cfg["num_classes"]
    if t_classes != g_classes:
        raise ValueError(f"the teacher {teacher_path} knows {t_classes} classes but the generator {generator_path} "
                         f"knows {g_classes}; use the generator distilled from this teacher")
    if abs(teacher.sigma_max - generator.sigma_max) > 1e-6:
        raise ValueError(f"the teacher's sigma_max {teacher.sigma_max} differs from the generator's "
                         f"{generator.sigma_max}: its latents are not the generator's inputs")
    recorded, actual = getattr(generator, "teacher_sha256", None), getattr(teacher.backbone, "content_sha256", None)
    if recorded and actual and recorded != actual:
        raise ValueError(f"the generator {generator_path} was distilled from another teacher (content hash "
                         f"{recorded[:12]}) than {teacher_path} ({actual[:12]}): this teacher's latents are not its "
                         "inputs; use the teacher it names, or the generator distilled from this one")


def check_encoder(encoder, teacher, *, teacher_path, encoder_path):
    """An amortised encoder stands in for this teacher's PF-ODE only if it was trained on this teacher's latents
    (content hash, when both record one) at its image size, with its classes and sigma_max."""
    t_cfg, side = teacher.backbone.config, encoder.sidecar
    if side["image_size"] != t_cfg["image_size"]:
        raise ValueError(f"the encoder {encoder_path} takes {side['image_size']} px images but the teacher "
                         f"{teacher_path} works at {t_cfg['image_size']} px; train the encoder on this teacher's "
                         "latents (commands/encoder_mnist.sh)")
    if side["num_classes"] != t_cfg["num_classes"]:
        raise ValueError(f"the encoder {encoder_path} knows {side['num_classes']} classes but the teacher "
                         f"{teacher_path} knows {t_cfg['num_classes']}; train the encoder on this teacher's latents "
                         "(commands/encoder_mnist.sh)")
    recorded, actual = side.get("teacher_sha256"), getattr(teacher.backbone, "content_sha256", None)
    if recorded and actual and recorded != actual:
        raise ValueError(f"the encoder {encoder_path} was trained on the latents of another teacher (content hash "
                         f"{recorded[:12]}) than {teacher_path} ({actual[:12]}); train the encoder on this "
                         "teacher's latents (commands/encoder_mnist.sh)")
    if abs(side["sigma_max"] - teacher.sigma_max) > 1e-6:
        raise ValueError(f"the encoder {encoder_path} makes latents at sigma_max {side['sigma_max']} but the teacher "
                         f"{teacher_path} has sigma_max {teacher.sigma_max}")


def adm_resize(images, size):
    """uint8 NHWC images at any size -> size x size by the ADM operator (box halving, bicubic, centre crop), the
    preprocessing the teacher's training data went through; a no-op for images already at `size`."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image
    return np.stack([center_crop_arr(Image.fromarray(img), size) for img in images])


def ode_sigmas(*, num_steps, start_sigma, sigma_min, sigma_max, rho, device=None):
    """The Karras grid the PF-ODE encoder climbs: from start_sigma when the image is first noised to it (the bundled
    recipe), from sigma_min (clean data, official) otherwise."""
    return karras_sigmas(num_steps, start_sigma or sigma_min, sigma_max, rho, device=device)


@torch.no_grad()
def encode_ode(teacher, x, y, sigmas, *, start_sigma, seeds):
    """z = PF-ODE(x + start_sigma n) at sigmas[0]; n from each image's own seed, so a batch's split changes
    nothing. As the bundled latents were made: a clean digit is a mode and flows to an atypically small latent."""
    if start_sigma:
        x = noised(x, start_sigma, seeds)
    return heun_invert(teacher, x, sigmas, y, clamp_denoised=True)


@torch.no_grad()
def decode(generator, z, y, w=None):
    """Images in [-1, 1] at the generator's resolution, one network call (w: the guidance scale of a
    guidance-conditioned generator, per sample)."""
    return generator.sample(z, y, w)


def slerp(z_a, z_b, t):
    """Spherical interpolation between latents (per sample, over all but the first dimension): for Gaussian
    latents the norm stays near sigma_max sqrt(d) all along, where the straight line dips to 1/sqrt(2) of it."""
    a, b = z_a.flatten(1), z_b.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1, 1))[:, None]
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-6  # (anti)parallel: fall back to the straight line
    wa = torch.where(linear, torch.full_like(omega, 1 - t), torch.sin((1 - t) * omega) / sin.clamp_min(1e-12))
    wb = torch.where(linear, torch.full_like(omega, t), torch.sin(t * omega) / sin.clamp_min(1e-12))
    return (wa * a + wb * b).reshape(z_a.shape)


@torch.no_grad()
def classify(classifier, images_uint8):
    """(predicted class, its softmax confidence) of each uint8 NHWC image under the domain classifier."""
    from .domain import domain_features  # the evaluation stack loads only where a classifier is used
    logits = torch.from_numpy(domain_features(classifier, images_uint8)[1])
    conf, pred = logits.softmax(1).max(1)
    return pred.numpy(), conf.numpy()


def pick_labels(*, n, given=-1, data_labels=None, null_class=None, predict=None):
    """(labels (n,), where they came from): --label when given, else the data's own labels when asked, else the
    teacher's null class when it has one, else the domain classifier's prediction (`predict()`)."""
    if given >= 0:
        return np.full(n, given, np.int64), "given"
    if data_labels is not None:
        return np.asarray(data_labels, np.int64), "data"
    if null_class is not None:
        return np.full(n, null_class, np.int64), "null"
    if predict is None:
        raise ValueError("no label for the images: pass --label, use the data's labels, or a domain classifier")
    return np.asarray(predict(), np.int64), "classifier"


def transfer_targets(labels, num_classes, *, target_label=-1, seed=0):
    """The class each image is transferred to: `target_label` for every image when >= 0, else a seeded random one of
    the `num_classes` real classes other than the image's own (any real class for an image encoded with the null
    class, label >= num_classes). A guided teacher's null class is never a target: no classifier can confirm it."""
    labels = np.asarray(labels, np.int64)
    if target_label >= 0:
        if target_label >= num_classes:
            raise ValueError(f"--target_label {target_label}: the models know {num_classes} classes "
                             f"(0..{num_classes - 1})")
        return np.full(len(labels), target_label, np.int64)
    gen = np.random.default_rng(seed)
    other = (labels + gen.integers(1, num_classes, len(labels))) % num_classes
    return np.where(labels < num_classes, other, gen.integers(0, num_classes, len(labels)))


def block_spread(values, num_blocks):
    """{mean, std over `num_blocks` disjoint consecutive blocks of per-image values, blocks: the per-block means}
    (std None for one block): the form every score of scores.json takes."""
    values = np.asarray(values, np.float64)
    blocks = [b.mean() for b in np.array_split(values, num_blocks) if len(b)]
    std = float(np.std(blocks, ddof=1)) if len(blocks) > 1 else None
    return {"mean": float(values.mean()), "std": std, "blocks": [float(b) for b in blocks]}


def nearest_enlarge(images_uint8, size):
    """uint8 NHWC images enlarged to `size` by pixel repetition, to sit in a grid next to larger ones."""
    factor = size // images_uint8.shape[1]
    if factor * images_uint8.shape[1] != size:
        raise ValueError(f"cannot enlarge {images_uint8.shape[1]} px to {size} px by an integer factor")
    return images_uint8.repeat(factor, axis=1).repeat(factor, axis=2)


def latent_error(z_hat, z):
    """Per-sample relative L2 error ||z_hat - z|| / ||z||."""
    return ((z_hat - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp_min(1e-12))


# --- inpainting: masks, the naive fill, latent search through G, the teacher's replacement sampler ---------------
MASKS = ("center", "half", "strokes")


def builtin_mask(kind, size, n, *, seed=0):
    """(n, 1, size, size) masks, 1 where the pixel is observed: the centre box (half the side), the right half,
    or 3 random straight strokes of width size / 8 per image (seeded)."""
    m = torch.ones(n, 1, size, size)
    if kind == "center":
        m[..., size // 4:size - size // 4, size // 4:size - size // 4] = 0
    elif kind == "half":
        m[..., size // 2:] = 0
    elif kind == "strokes":
        gen = torch.Generator().manual_seed(seed)
        grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float()
        for i in range(n):
            for _ in range(3):
                a, b = torch.rand(2, 2, generator=gen) * size
                t = ((grid - a) @ (b - a) / (b - a).dot(b - a).clamp_min(1e-6)).clamp(0, 1)
                dist = (grid - (a + t[..., None] * (b - a))).norm(dim=-1)
                m[i, 0][dist < size / 16] = 0
    else:
        raise ValueError(f"unknown mask {kind!r}; built in: {', '.join(MASKS)}, or a .png / .npy file")
    return m


def load_mask(path, size, n):
    """A mask file (.npy or a grey image; nonzero = observed) for every image; it must be size x size."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"mask {path} does not exist; use a .png / .npy file or one of {', '.join(MASKS)}")
    if path.endswith(".npy"):
        arr = np.load(path)
    else:
        from PIL import Image
        with Image.open(path) as image:
            arr = np.asarray(image.convert("L"))
    arr = np.squeeze(np.asarray(arr))
    if arr.shape != (size, size):
        raise ValueError(f"mask {path} is {'x'.join(map(str, arr.shape))} but the images are {size}x{size} "
                         "(the generator's output resolution); make the mask that size")
    return torch.from_numpy((arr > 0).astype(np.float32))[None, None].expand(n, 1, size, size).clone()


def naive_fill(x, m):
    """The baseline: every missing pixel set to the mean of the image's observed pixels."""
    mean = (x * m).sum((1, 2, 3), keepdim=True) / (m.sum((1, 2, 3), keepdim=True) * x.shape[1]).clamp_min(1)
    return x * m + mean * (1 - m)


def latent_search(generator, z0, y, x_obs, m, *, steps, lr, prior_weight, observe=None):
    """argmin_z  mean over observed pixels of (A(G(z, y)) - x_obs)^2 + prior_weight ||z||^2 / (2 sigma_max^2 d),
    by Adam from z0 (the encoded observation), through the one-step generator; returns (z, G(z) clamped).
    A is `observe` (e.g. luminance() for colourisation; default: the image itself, as inpainting sees it).
    The prior term is the negative log-density of N(0, sigma_max^2 I) per dimension: it keeps z where G was
    trained instead of letting it fit the observation with an atypical latent."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    count = m.sum((1, 2, 3)).clamp_min(1) * x_obs.shape[1]
    for _ in range(steps):
        x = generator(z, y).float()
        if observe is not None:
            x = observe(x)
        fit = (((x - x_obs) * m) ** 2).sum((1, 2, 3)) / count
        prior = (z ** 2).flatten(1).mean(1) / (2 * generator.sigma_max ** 2)
        opt.zero_grad(set_to_none=True)
        (fit + prior_weight * prior).sum().backward()
        opt.step()
    with torch.no_grad():
        return z.detach(), generator(z, y).float().clamp(-1, 1)


def search_batches(generator, z0, labels, x_true, m, *, batch_size, steps, lr, prior_weight, observe=None):
    """latent_search over all images in batches of `batch_size`, from the encoded observations z0 (N, ...) with
    labels (N,) numpy: (outputs G(z) before the observation is imposed on them, seconds)."""
    outs, start = [], time.time()
    for b in logger.progress(range(0, len(x_true), batch_size), desc="search", unit="batch"):
        sl = slice(b, b + batch_size)
        outs.append(latent_search(generator, z0[sl], torch.from_numpy(labels[sl]), x_true[sl], m[sl], steps=steps,
                                  lr=lr, prior_weight=prior_weight, observe=observe)[1])
    return torch.cat(outs), time.time() - start


@torch.no_grad()
def replacement_steps_for(teacher, x_obs, labels, *, batch_size, seconds):
    """The number of Heun steps (2 calls each) of the teacher on all of x_obs that fit in `seconds`, timed on one
    batch: the equal-wall-time budget of the replacement baseline."""
    start = time.time()
    teacher(x_obs[:batch_size], torch.full((len(x_obs[:batch_size]),), 1.0), torch.from_numpy(labels[:batch_size]))
    per_call = (time.time() - start) * len(x_obs) / len(x_obs[:batch_size])
    return max(2, int(seconds / per_call + 1) // 2)


def replacement_batches(teacher, x_obs, m, labels, *, batch_size, steps, sigma_min, sigma_max, rho, impose=None):
    """replacement_inpaint over all images in batches, on karras_sigmas(steps, ...); image i draws its noise from
    seed i, so the batch split changes nothing: (outputs, seconds)."""
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    outs, start = [], time.time()
    for b in logger.progress(range(0, len(x_obs), batch_size), desc="replacement", unit="batch"):
        sl = slice(b, b + batch_size)
        outs.append(replacement_inpaint(teacher, x_obs[sl], m[sl], torch.from_numpy(labels[sl]), sigmas,
                                        seeds=range(b, b + len(x_obs[sl])), impose=impose))
    return torch.cat(outs), time.time() - start


@torch.no_grad()
def replacement_inpaint(teacher, x_obs, m, y, sigmas, *, seeds, impose=None):
    """The teacher's multi-step replacement method: Heun sampling from noise, and after each step the observed
    pixels replaced by the observation noised to the new sigma (same noise draw throughout). `impose(x, target)`
    replaces another observed part instead (colourisation: with_luminance(x, luminance(target)))."""
    rng = StackedRandomGenerator(x_obs.device, list(seeds))
    x = rng.randn(x_obs.shape, dtype=torch.float32) * float(sigmas[0])
    eps = rng.randn(x_obs.shape, dtype=torch.float32)
    path = [float(s) for s in sigmas]
    for sigma, sigma_next in zip(path[:-1], path[1:]):
        x = heun_step(teacher, x, sigma, sigma_next, y, False)
        target = x_obs + sigma_next * eps
        x = impose(x, target) if impose is not None else m * target + (1 - m) * x
    return x.clamp(-1, 1)


# --- colourisation: the grey observation is the luminance of the colour image ----------------------------------
# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses; they sum to 1, so an offset added to all three
# channels moves the luminance by exactly that offset.
LUMA = (0.299, 0.587, 0.114)


def luminance(x):
    """(N, 3, H, W) RGB in [-1, 1] -> (N, 1, H, W) luminance on the same scale."""
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    return (x * weights[:, None, None]).sum(1, keepdim=True)


def with_luminance(x, grey):
    """x with its luminance replaced by `grey` (N, 1, H, W) and its chroma (the differences between channels) kept:
    the projection onto the images whose luminance is the observation, as pasting back the observed pixels is for
    inpainting. Not clamped: a clamp would move the luminance again."""
    return x + (grey - luminance(x))


def fresh_chroma(z, *, sigma_max, seeds):
    """The latents z with their chroma (the differences between channels) replaced by that of fresh prior noise
    N(0, sigma_max^2 I), image i drawn from seeds[i], and their luminance kept. A colourisation search started from
    the PF-ODE latent of the grey image itself starts at a grey solution that already fits the observation; from
    here G sees the grey image's structure with colour it has to choose."""
    eps = StackedRandomGenerator(z.device, list(seeds)).randn(z.shape, dtype=z.dtype) * sigma_max
    return with_luminance(eps, luminance(z))


def masked_psnr(a, b, region):
    """Per-image PSNR (dB) of images in [-1, 1] over the pixels where `region` is 1."""
    mse = (((a - b) ** 2) * region).sum((1, 2, 3)) / (region.sum((1, 2, 3)) * a.shape[1]).clamp_min(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
