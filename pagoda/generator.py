"""The one-step generator G(z, y) and its progressive growth to 2x output resolution.

Parameterisation (official PaGoDA, docs/method.md 3.1): G(z, y) = F(c_in(sigma_max) * z, sigma_max, y), the raw
backbone output, with no c_skip / c_out (output "raw"). A generator initialised from the teacher's backbone
therefore starts at about 2x the teacher's one-step estimate of x0 (c_out(80) ~ 0.5); training removes that factor
in a few steps. GDD's generator is the EDM denoiser itself at sigma_max, c_skip z + c_out F(...) (output
"denoised"); an export's sidecar entry `output` says which (absent: raw).
The trained network is the backbone (a UNetModel), so exports are plain ADM state dicts that load into (and
from) the released PaGoDA checkpoints.
"""

import copy
import math

import torch
from torch import nn

from . import dimr
from .checkpoint import GENERATOR_OUTPUTS
from .dimr import DiMR
from .image_util import psnr
from .random_util import seeded
from .unet import UNetModel


class Generator(nn.Module):
    """Wraps a backbone F into the one-step map z -> x (latent at the teacher's resolution)."""

    def __init__(self, backbone, *, sigma_max=80.0, sigma_data=0.5, output="raw", null_class=None):
        super().__init__()
        _check_output(output)
        self.backbone = backbone
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.output = output
        # the teacher's null class: an embedding row G inherited but never samples (sample_util.sampler_classes)
        self.null_class = null_class

    @property
    def c_in(self):
        return 1.0 / math.sqrt(self.sigma_max**2 + self.sigma_data**2)

    @property
    def latent_size(self):
        return self.backbone.config["image_size"]

    @property
    def output_size(self):
        return self.backbone.config["output_size"] or self.latent_size

    @property
    def guidance_input(self):
        """Whether G takes the guidance scale w (a w-embedding in its UNet)."""
        return bool(self.backbone.config.get("guidance_embed"))

    def forward(self, z, y=None, w=None):
        return generate(self.backbone, z, y, w, sigma_max=self.sigma_max, sigma_data=self.sigma_data,
                        output=self.output)

    @torch.no_grad()
    def sample(self, z, y=None, w=None):
        """Images in [-1, 1] (the output is clamped only when sampling, not in training)."""
        return self(z, y, w).float().clamp(-1, 1)

    def sidecar(self):
        return generator_sidecar(self.backbone, sigma_max=self.sigma_max, sigma_data=self.sigma_data,
                                 output=self.output, null_class=self.null_class)


def _check_output(output):
    if output not in GENERATOR_OUTPUTS:
        raise ValueError(f"output must be raw or denoised, got {output!r}")


def generate(backbone, z, y=None, w=None, *, sigma_max=80.0, sigma_data=0.5, output="raw"):
    """G(z, y[, w]) for any (possibly DDP-wrapped) backbone: F(c_in z, sigma_max, y) ("raw", PaGoDA), or the EDM
    denoiser c_skip z + c_out F(c_in z, sigma_max, y) ("denoised", GDD), the scalings in float32. The guidance
    scale w (N,) reaches only a guidance-conditioned backbone; None leaves the call as it always was."""
    _check_output(output)
    total = sigma_max**2 + sigma_data**2
    sigma = torch.full((z.shape[0],), sigma_max, device=z.device, dtype=torch.float32)
    extra = {} if w is None else {"w": w}
    F_z = backbone(z * (1.0 / math.sqrt(total)), sigma, y, **extra)
    if output == "raw":
        return F_z
    c_skip, c_out = sigma_data**2 / total, sigma_max * sigma_data / math.sqrt(total)
    return c_skip * z.float() + c_out * F_z.float()


@torch.no_grad()
def reconstruction_psnr(backbone, pairs, indices, *, sigma_max=80.0, sigma_data=0.5, batch_size=100,
                        upsample_to=None):
    """Per-pair PSNR (dB) of G(z_i, y_i), clamped to [-1, 1], against the image x_i paired with latent z_i.

    `pairs` is a PairDataset (unflipped items are used). With `upsample_to`, G's output is first resized
    bicubically to that size: the baseline a grown generator has to beat on the same pairs.
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        items = [pairs.load(i) for i in indices[start:start + batch_size]]
        z = torch.stack([it["z"] for it in items]).to(device)
        x = torch.stack([it["x"] for it in items]).to(device)
        y = torch.stack([it["y"] for it in items]).to(device) if backbone.config["num_classes"] else None
        x_hat = generate(backbone, z, y, sigma_max=sigma_max, sigma_data=sigma_data).float().clamp(-1, 1)
        if upsample_to is not None:
            x_hat = torch.nn.functional.interpolate(x_hat, size=(upsample_to, upsample_to), mode="bicubic",
                                                    align_corners=False).clamp(-1, 1)
        out.append(psnr(x_hat, x).cpu())
    backbone.train(was_training)
    return torch.cat(out)


def generator_sidecar(backbone, *, sigma_max=80.0, sigma_data=0.5, output="raw", null_class=None):
    """The export sidecar of a one-step generator; `output` is written only when it is not PaGoDA's raw one, and
    `null_class` (the guided teacher's, which G never samples) only when there is one, so PaGoDA exports stay
    byte-identical to those written before the entries existed."""
    cfg = backbone.config
    side = {"kind": "generator", backbone.SIDECAR_KEY: cfg, "sigma_max": sigma_max, "sigma_data": sigma_data,
            "latent_size": cfg["image_size"], "output_size": cfg["output_size"] or cfg["image_size"],
            "num_classes": cfg["num_classes"]}
    if output != "raw":
        _check_output(output)
        side["output"] = output
    if null_class is not None:
        side["null_class"] = int(null_class)
    return side


def generator_from_teacher(teacher_backbone, *, sigma_max=80.0, sigma_data=0.5):
    """A trainable copy of the teacher's backbone (the official stage-2 initialisation)."""
    backbone = copy.deepcopy(teacher_backbone)
    backbone.requires_grad_(True)
    backbone.train()
    return Generator(backbone, sigma_max=sigma_max, sigma_data=sigma_data)


def with_guidance_input(backbone, *, seed=0):
    """The same network with a w-embedding (pagoda.unet._guidance_embedding) whose last layer is zero: G(z, y, w)
    that starts as G(z, y) at every w. A network that has one is returned as it is (stage 3 keeps the trained one)."""
    if backbone.config.get("guidance_embed"):
        return backbone
    with seeded(seed, "guidance_embed"):
        net = UNetModel(**dict(backbone.config, guidance_embed=True))
    missing, unexpected = net.load_state_dict(backbone.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
        raise ValueError(f"cannot add a w input: weights differ ({unexpected[:3]}, {missing[:3]})")
    net.content_sha256 = getattr(backbone, "content_sha256", None)
    return net.to(next(backbone.parameters()).device).train(backbone.training)


def grown_config(config, factor=2):
    """The backbone config with the output resolution multiplied by `factor` (a power of two)."""
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"growth factor must be a power of two >= 2, got {factor}")
    cfg = dict(config)
    size = cfg["output_size"] or cfg["image_size"]
    cfg["output_size"] = size * factor
    # new levels keep the width of the last existing level, so their skips are identities (function-preserving)
    mult = list(cfg.get("channel_mult_high") or [])
    last = mult[-1] if mult else 1
    cfg["channel_mult_high"] = mult + [last] * int(math.log2(factor))
    return cfg


def grow(backbone, *, factor=2, channel_mult_high=None):
    """A new backbone at `factor`x the output size with every existing weight copied.

    The appended levels (an up-sampling ResBlock and plain ResBlocks, zero-initialised output convolutions,
    identity skips) start as identities on nearest-up-sampled features, so the grown network starts as
    the previous generator's features up-sampled and passed through the same output head (which does not commute
    with up-sampling; fit_output_head re-fits it, grow_generator does both).
    Returns (grown_backbone, new_keys).
    """
    cfg = grown_config(backbone.config, factor)
    if channel_mult_high is not None:
        cfg["channel_mult_high"] = list(channel_mult_high)
    grown = UNetModel(**cfg)
    old = backbone.state_dict()
    new = grown.state_dict()
    mismatched = [k for k in old if k not in new or new[k].shape != old[k].shape]
    if mismatched:
        raise ValueError(f"cannot grow: {len(mismatched)} weights of the previous network have no same-shape "
                         f"place in the grown one (first: {mismatched[:5]}); channel_mult_high must keep the "
                         f"existing levels' widths")
    new.update({k: v.clone() for k, v in old.items()})
    grown.load_state_dict(new)
    new_keys = sorted(set(new) - set(old))
    return grown, new_keys


def grow_generator(parent, *, factor=2, channel_mult_high=None, refit_head=False, num_fit_latents=64, seed=0,
                   sigma_max=80.0, sigma_data=0.5, num_classes=None):
    """Stage 3's initialisation (the pagoda method's build_generator, which the report reuses): grow() on the
    parent's device, then with `refit_head` fit_output_head() on `num_fit_latents` seeded prior latents, their labels
    drawn from `num_classes` (default: every embedding row; a guided teacher's descendants pass the real classes so
    the null class is never fitted on). The new levels' random weights come from `seed` too, so a report rebuilds the
    very network a run started from.
    Returns (grown, new_keys, (psnr_before, psnr_after) of the fit or None)."""
    device = next(parent.parameters()).device
    if isinstance(parent, DiMR):
        if channel_mult_high:
            raise ValueError("channel_mult_high sets the UNet's grown levels; a DiMR generator grows ConvNeXt "
                             "branches (pagoda.dimr.grow)")
        with seeded(seed, "grown_levels"):
            grown, new_keys = dimr.grow(parent, factor=factor)
        return grown, new_keys, None  # starts as the parent up-sampled bicubically: nothing to re-fit
    with seeded(seed, "grown_levels"):
        grown, new_keys = grow(parent, factor=factor, channel_mult_high=channel_mult_high)
    grown = grown.to(device)
    fit = None
    if refit_head:
        z, y = prior_latents(parent.config, num_fit_latents, sigma_max=sigma_max, seed=seed, num_classes=num_classes)
        fit = fit_output_head(grown, parent, z.to(device), None if y is None else y.to(device),
                              sigma_max=sigma_max, sigma_data=sigma_data)
    return grown, new_keys, fit


def prior_latents(config, num, *, sigma_max=80.0, seed=0, num_classes=None):
    """`num` latents z ~ N(0, sigma_max^2 I) of a backbone's input shape, with labels uniform over `num_classes`
    (default: the backbone's every class; pass model_io.real_classes to leave out a guided teacher's null class;
    None if unconditional), from one seeded CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, config["in_channels"], config["image_size"], config["image_size"], generator=gen) * sigma_max
    classes = config["num_classes"] if num_classes is None else num_classes
    if config["num_classes"] and not 0 < classes <= config["num_classes"]:
        raise ValueError(f"num_classes {classes}: the backbone has {config['num_classes']} label rows")
    y = torch.randint(0, classes, (num,), generator=gen) if config["num_classes"] else None
    return z, y


@torch.no_grad()
def fit_output_head(grown, parent, z, y=None, *, sigma_max=80.0, sigma_data=0.5, batch_size=16, mode="bicubic"):
    """Re-fit the grown network's last output convolution so that it starts as the parent's images up-sampled.

    Why: grow() hands the parent's 3x3 output head nearest-up-sampled features, and a trained 3x3 head does not
    commute with up-sampling (its taps see a 1.5-pixel neighbourhood of the old grid, not 3). On the bundled
    digits the freshly grown generator was 10 dB (PSNR) from its up-sampled parent, so stage 3 first spent its
    steps re-learning the parent. The conv is linear in features the fit does not change, so the weights that best
    reproduce interpolate(parent(z).clamp(-1, 1), mode) on the latents z (prior_latents) are a least-squares
    problem over 3x3 patches, solved here in closed form (float64 normal equations, a tiny ridge).
    Changes only grown.out[-1] (weight and bias). Returns the mean PSNR (dB) of the grown output against that
    target on z, before and after the fit.
    """
    size = grown.config["output_size"]
    if size == (parent.config["output_size"] or parent.config["image_size"]):
        raise ValueError(f"fit_output_head needs a grown network: both output {size} px")
    conv, kw = grown.out[-1], dict(sigma_max=sigma_max, sigma_data=sigma_data)
    modes = grown.training, parent.training
    grown.eval(), parent.eval()
    try:
        batches = [(z[i:i + batch_size], None if y is None else y[i:i + batch_size])
                   for i in range(0, len(z), batch_size)]
        targets = [nn.functional.interpolate(generate(parent, zb, yb, **kw).float().clamp(-1, 1), size=(size, size),
                                             mode=mode) for zb, yb in batches]
        xtx, xty, before = _head_normal_equations(grown, batches, targets, kw)
        ridge = 1e-6 * xtx.diagonal().mean() * torch.eye(len(xtx), dtype=xtx.dtype, device=xtx.device)
        w = torch.linalg.solve(xtx + ridge, xty)
        conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
        conv.bias.copy_(w[-1].to(conv.bias.dtype))
        after = [generate(grown, zb, yb, **kw).float() for zb, yb in batches]
    finally:
        grown.train(modes[0]), parent.train(modes[1])
    target = torch.cat(targets)
    return tuple(psnr(torch.cat(out).clamp(-1, 1), target).mean().item() for out in (before, after))


def _head_normal_equations(grown, batches, targets, kw, rows=16384):
    """X^T X and X^T T (float64) over every output pixel, X holding the 3x3 patches of the output conv's input
    (and a 1 for the bias), T the target pixels; and the grown outputs of the same pass. One image at a time, `rows` pixels at a time: the patch matrix
    of a batch of large images would not fit (16 images at 512 px with 192 channels: 29 GB in float32)."""
    conv, captured = grown.out[-1], {}
    hook = conv.register_forward_hook(lambda module, inputs, output: captured.update(a=inputs[0]))
    xtx = xty = 0.0
    outputs = []
    try:
        for (zb, yb), target in zip(batches, targets):
            outputs.append(generate(grown, zb, yb, **kw).float())
            for a, t in zip(captured["a"].float(), target.flatten(2)):
                patches = nn.functional.unfold(a[None], conv.kernel_size, padding=conv.padding)[0]
                for start in range(0, patches.shape[1], rows):
                    x = patches[:, start:start + rows]
                    x = torch.cat([x, torch.ones_like(x[:1])]).T.double()
                    xtx, xty = xtx + x.T @ x, xty + x.T @ t[:, start:start + rows].T.double()
    finally:
        hook.remove()
    return xtx, xty, outputs


def freeze_for_growth(backbone, *, activate_from):
    """Train only output_blocks[activate_from:] and the output head (official default: from index 9); a DiMR
    backbone: branches[activate_from:] (DiMR.freeze_for_growth).

    Returns (trainable, frozen) parameter counts.
    """
    if isinstance(backbone, DiMR):
        return backbone.freeze_for_growth(activate_from)
    num_out = len(backbone.output_blocks)
    if not 0 <= activate_from < num_out:
        raise ValueError(f"activate_from must be in [0, {num_out - 1}] for this network, got {activate_from}")
    backbone.requires_grad_(False)
    for block in list(backbone.output_blocks)[activate_from:]:
        block.requires_grad_(True)
    backbone.out.requires_grad_(True)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    return trainable, frozen
