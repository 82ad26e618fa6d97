"""Callbacks run by TrainLoop at their interval: preview sample grids from the EMA weights (rank 0 only).

Previews use fixed per-sample seeds, so grids from different steps show the same latents and labels.
"""

import contextlib
import os

import torch

from . import dist_util, logger
from .generator import generate
from .image_util import save_grid, to_uint8
from .precond import Denoiser
from .random_util import StackedRandomGenerator
from .sampling import euler_sample, heun_sample, karras_sigmas


class _Preview:
    def __init__(self, *, interval, player, num_samples=64, num_classes=None, seed=12345):
        if interval < 0:
            raise ValueError(f"a preview interval is a number of steps >= 0 (0: never), got {interval}")
        self.interval = interval
        self.player = player
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.seed = seed

    def __call__(self, loop):
        if not dist_util.is_main():
            return
        images = to_uint8(self.ema_samples(loop))
        path = os.path.join(loop.run_dir, "samples", f"{loop.step:07d}.png")
        save_grid(images, path, scale=max(1, 128 // images.shape[1]))
        logger.log_image(f"samples/{self.player}", images, loop.step)

    def ema_samples(self, loop):
        """Samples from the player's EMA weights (the last rate), in eval mode; the live weights are restored."""
        player = loop.players[self.player]
        net = player.module
        was_training = net.training
        net.eval()
        context = player.ema.swapped_in(net, player.ema.rates[-1]) if player.ema else contextlib.nullcontext()
        with context, torch.no_grad():
            images = self.sample(net, loop.device)
        net.train(was_training)
        return images

    def _inputs(self, device, shape):
        rng = StackedRandomGenerator(device, [self.seed + i for i in range(self.num_samples)])
        y = None
        if self.num_classes:
            y = torch.arange(self.num_samples, device=device) % self.num_classes
        return rng, y


class TeacherPreview(_Preview):
    """Deterministic samples of the denoiser being trained: Heun on the Karras grid of `num_steps`, or, given
    `sigmas` (a distilled k-step student's own grid), Euler on exactly that grid."""

    def __init__(self, *, interval, num_steps=18, sigmas=None, sigma_data=0.5, player="denoiser", **kw):
        super().__init__(interval=interval, player=player, **kw)
        self.num_steps = num_steps
        self.sigmas = None if sigmas is None else list(sigmas)
        self.sigma_data = sigma_data

    def sample(self, net, device):
        cfg = net.config
        shape = (self.num_samples, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        rng, y = self._inputs(device, shape)
        denoiser = Denoiser(net, sigma_data=self.sigma_data)
        if self.sigmas is None:
            sigmas = karras_sigmas(self.num_steps, device=device)
            return heun_sample(denoiser, rng.randn(shape, device=device) * sigmas[0], sigmas, y)
        sigmas = torch.tensor(self.sigmas, device=device)
        return euler_sample(denoiser, rng.randn(shape, device=device) * sigmas[0], sigmas, y).clamp(-1, 1)


class GeneratorPreview(_Preview):
    """One-step samples G(z, y) from fresh prior latents z ~ N(0, sigma_max^2 I)."""

    def __init__(self, *, interval, sigma_max=80.0, sigma_data=0.5, output="raw", **kw):
        super().__init__(interval=interval, player="generator", **kw)
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.output = output

    def sample(self, net, device):
        cfg = net.config
        shape = (self.num_samples, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        rng, y = self._inputs(device, shape)
        z = rng.randn(shape, device=device) * self.sigma_max
        return generate(net, z, y, sigma_max=self.sigma_max, sigma_data=self.sigma_data,
                        output=self.output).float().clamp(-1, 1)


class GeneratorMetric(GeneratorPreview):
    """A cheap monitoring metric on `num_samples` EMA one-step samples (fixed seeds): `metric_fn(images)` returns
    a dict of floats, logged as monitor/<key>. For tracking a run only; numbers of record come from the evaluator."""

    def __init__(self, *, interval, metric_fn, num_samples=256, **kw):
        super().__init__(interval=interval, num_samples=num_samples, **kw)
        self.metric_fn = metric_fn

    def __call__(self, loop):
        if not dist_util.is_main():
            return
        for key, value in self.metric_fn(self.ema_samples(loop)).items():
            logger.logkv(f"monitor/{key}", value)
