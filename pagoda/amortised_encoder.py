"""The amortised one-step encoder E(x, y) -> z (the official code's `pgd_encoder` mode, docs/method.md 5): one
network call in place of the teacher's PF-ODE solve when an application needs the latent of an image.

Parameterisation: E(x_s, y) = sigma_max * F(c_in(s) x_s, s, y), with F a UNet of the teacher's architecture evaluated
at one fixed noise level s, and its raw output regressing z / sigma_max, the scale-free latent (about unit variance
per entry). Its input is what the ODE encoder started from: when the latents were encoded from x + start_sigma n (the
bundled recipe), x_s is that same noised image, with the same seeded n, and s = start_sigma; from clean images
(start_sigma 0, official), x_s = x and s = `encoder_sigma` (default the teacher's sigma_min: the official "x at
t = 0"). The noise matters: from x + 0.1 n the PF-ODE carries n almost unchanged up to sigma_max (z ~ x + sigma_max
n), so two draws of n give nearly uncorrelated latents of the same digit (relative difference 1.37 on held-out
digits, sqrt(2) for independent ones), and a regression on clean x alone can only learn their mean, a latent of
a quarter of the prior's norm. F starts as a copy of the teacher's backbone: at level s its raw output is
(D - c_skip x_s) / c_out, the teacher's noise estimate, which is already most of z / sigma_max.

An export (kind 'encoder') records what it inverts, so an application can refuse an encoder that does not belong
to its teacher and generator: the teacher's content hash, image size, classes and null class, sigma_max, and the
solver settings of the latents it was trained on (steps, start_sigma, sigma_min, rho, clamp_denoised).
"""

import math

import torch
from torch import nn

from .random_util import noised

LATENT_SETTINGS = ("num_steps", "start_sigma", "sigma_min", "sigma_max", "rho", "clamp_denoised")


class AmortisedEncoder(nn.Module):
    """z = E(x_s, y) = sigma_max * F(c_in(s) x_s, s, y) for images x in [-1, 1] at the teacher's resolution, x_s =
    x + input_sigma n (n from each image's seed, as the ODE encoder draws it; x itself when input_sigma is 0)."""

    def __init__(self, backbone, *, encoder_sigma=0.002, input_sigma=0.0, sigma_max=80.0, sigma_data=0.5,
                 null_class=None):
        super().__init__()
        self.backbone = backbone
        self.encoder_sigma, self.sigma_max, self.sigma_data = float(encoder_sigma), float(sigma_max), float(sigma_data)
        self.input_sigma = float(input_sigma)
        self.null_class = null_class

    @property
    def image_size(self):
        return self.backbone.config["image_size"]

    def forward(self, x, y=None):
        return self.sigma_max * predict(self.backbone, x, y, encoder_sigma=self.encoder_sigma,
                                        sigma_data=self.sigma_data)

    @torch.no_grad()
    def encode(self, x, y=None, *, seeds=None):
        """The latent z at sigma_max of each clean image x, one network call; `seeds` (one per image) draw the input
        noise exactly as applications.encode_ode does, so both encoders start from the same x_s."""
        if self.input_sigma:
            if seeds is None:
                raise ValueError("this encoder takes x + input_sigma n: pass one noise seed per image")
            x = noised(x, self.input_sigma, seeds)
        return self(x, y)


def predict(backbone, x, y=None, *, encoder_sigma, sigma_data):
    """F(c_in(s) x, s, y) for any (possibly DDP-wrapped) backbone: the prediction of z / sigma_max, the scale the
    loss works at."""
    c_in = 1.0 / math.sqrt(encoder_sigma**2 + sigma_data**2)
    sigma = torch.full((x.shape[0],), encoder_sigma, device=x.device, dtype=torch.float32)
    return backbone(x * c_in, sigma, y).float()


def encoder_sidecar(backbone, *, encoder_sigma, input_sigma, sigma_max, sigma_data, teacher_sha256, null_class,
                    latent_settings):
    """The export sidecar of an amortised encoder (kind 'encoder'); `latent_settings` holds LATENT_SETTINGS of the
    ODE latents it was trained on."""
    cfg = backbone.config
    side = {"kind": "encoder", backbone.SIDECAR_KEY: cfg, "encoder_sigma": float(encoder_sigma),
            "input_sigma": float(input_sigma), "sigma_max": float(sigma_max), "sigma_data": float(sigma_data), "image_size": cfg["image_size"],
            "num_classes": cfg["num_classes"],
            "latent_settings": {k: latent_settings.get(k) for k in LATENT_SETTINGS}}
    if teacher_sha256:
        side["teacher_sha256"] = teacher_sha256
    if null_class is not None:
        side["null_class"] = int(null_class)
    return side


def regression_loss(pred, target):
    """Per-sample MSE + L1 between the predicted and the ODE latents, both divided by sigma_max (the official
    `get_enc_loss`): the L1 term keeps the heavy-tailed entries of z from dominating the squared error."""
    diff = (pred - target).flatten(1)
    return (diff**2).mean(1) + diff.abs().mean(1)
