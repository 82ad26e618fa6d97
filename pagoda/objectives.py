"""Training methods as objectives for the one TrainLoop: which networks train, when, and on what loss."""

import torch

from .losses import EDMLoss
from .precond import Denoiser
from .train_util import Objective


def teacher_sidecar(backbone, *, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, null_class=None):
    cfg = backbone.config
    return {"kind": "denoiser", "unet": cfg, "sigma_data": sigma_data, "sigma_min": sigma_min,
            "sigma_max": sigma_max, "null_class": null_class, "image_size": cfg["image_size"],
            "num_classes": cfg["num_classes"]}


class DiffusionObjective(Objective):
    """Stage 1: an EDM denoiser D(x, sigma, y) = precond(UNet) trained with the EDM loss.

    The trained player is the backbone itself, so its exports are plain ADM state dicts (the same format as
    the released edm_imagenet64_ema.pt).
    """

    def __init__(self, *, backbone, loss=None, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, ema_rates=(0.999,)):
        self.players = {"denoiser": backbone}
        self.loss = loss or EDMLoss(sigma_data=sigma_data)
        self.precond = dict(sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max)
        self._ema_rates = tuple(ema_rates)

    def phases(self, step):
        return ["denoiser"]

    def losses(self, player, nets, batch, *, step, generator):
        denoiser = Denoiser(nets["denoiser"], **self.precond)
        terms = self.loss(denoiser, batch["x"], batch.get("y"), generator=generator)
        sigma = terms.pop("sigma")
        # loss by sigma quartile of the training distribution (guided-diffusion style diagnostics)
        edges = torch.tensor([0.16, 0.30, 0.67], device=sigma.device)  # exp(P_mean + P_std * N^-1(q))
        bucket = torch.bucketize(sigma, edges)
        for q in range(4):
            mask = bucket == q
            if mask.any():
                terms[f"mse_q{q}"] = terms["mse"][mask].detach()
        return terms

    def ema_rates(self, player):
        return self._ema_rates

    def export_sidecar(self, player):
        return teacher_sidecar(self.players["denoiser"], null_class=self.loss.null_class, **self.precond)
