"""Training methods as objectives for the one TrainLoop: which networks train, when, and on what loss."""

import contextlib

import torch
from torch import nn

from .image_util import psnr
from .generator import generate, generator_sidecar
from .losses import (EDMLoss, weight_grad_norm, adaptive_weight, hinge_d_loss, hinge_g_loss, nonsaturating_d_loss,
                     nonsaturating_g_loss, r1_penalty)
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


class DiscriminatorPair(nn.Module):
    """D on a real and a fake batch in one forward call (separate calls inside, so BatchNorm statistics stay per
    batch type as in the official code): one DDP forward per backward, as DDP requires."""

    def __init__(self, discriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x_real, x_fake, y, features_real, features_fake):
        return (self.discriminator(x_real, y, features=features_real),
                self.discriminator(x_fake, y, features=features_fake))


@contextlib.contextmanager
def _no_param_grads(module):
    """Run `module` without recording its parameters in the graph (gradients still flow to its input)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _through_output(loss, x):
    """Per-sample `loss` (a function of the generator output `x` through augmentation and a discriminator) as a
    surrogate with the same values and the same gradient with respect to x, and so to every generator weight, whose
    graph ends at x. The discriminator is backpropagated once, here, instead of once for the adaptive weight's
    ||dL/dW|| and again in the final backward. The saving is that of one discriminator backward per generator step:
    large with the ImageNet feature networks, about 3% of a step on the bundled recipe's small random-conv D.
    Not under fp16 autocast: there this backward must stay inside the loss-scaled one, or its gradients underflow."""
    fp16 = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.float16
    if fp16 or not loss.requires_grad:
        return loss
    (grad,) = torch.autograd.grad(loss.float().sum(), x)
    inner = (x * grad).flatten(1).sum(1)  # d(sum_i inner_i)/dx = grad, and inner_i depends on sample i only
    return inner - inner.detach() + loss.detach()


# The adaptive weight's clip (losses.adaptive_weight): a weight at either end means the balance is not working.
ADAPTIVE_CLIP = (0.01, 10.0)
GAN_LOSSES = {"hinge": (hinge_g_loss, hinge_d_loss), "nonsaturating": (nonsaturating_g_loss, nonsaturating_d_loss)}


class PaGoDAObjective(Objective):
    """Stages 2 and 3 (pagoda-method.md 3-4): G(z, y) learns to map each encoded latent back to its image
    (reconstruction loss) while a projected discriminator keeps samples from fresh prior latents sharp.

    Generator phase: L = L_rec(G(z_data, y), x) + w_D * lambda * L_G(G(z ~ N(0, sigma_max^2), y)), lambda the
    adaptive weight at G's last ResBlock conv (or 1). Discriminator phase, on its own batch: the GAN loss on
    reals vs fresh fakes, with the same DiffAugment parameters on both. Steps alternate: even steps are G phases,
    odd steps D phases, as in the official loop. `separate_update` splits the G phase into a reconstruction update and
    a GAN update (the official 256/512 setting). An optional `recon_discriminator` (the official 512 setting)
    separates reconstructions G(z_data) from reals; the generator then adds w_r * lambda_r * L_G(D_r(G(z_data)))
    with lambda_r the adaptive ratio against L_rec, and D_r updates right after every generator step.
    Stage 3 is this objective with a grown generator and high-resolution images: a config, not a new loop.
    """

    def __init__(self, *, generator, discriminator, reconstruction, augment, discriminator_weight=0.2,
                 adaptive=True, separate_update=False, gan_loss="hinge", r1_gamma=0.0, r1_interval=16,
                 recon_discriminator=None, recon_discriminator_weight=0.5, sigma_max=80.0, sigma_data=0.5,
                 ema_rates=(0.999,), lineage=None):
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(GAN_LOSSES)}, got {gan_loss!r}")
        self.generator, self.discriminator = generator, discriminator
        self.players = {"generator": generator, "discriminator": DiscriminatorPair(discriminator)}
        self.recon_discriminator, self.w_r = recon_discriminator, recon_discriminator_weight
        if recon_discriminator is not None:
            self.players["recon_discriminator"] = DiscriminatorPair(recon_discriminator)
        self.reconstruction, self.augment = reconstruction, augment
        self.w_D, self.adaptive, self.separate_update = discriminator_weight, adaptive, separate_update
        self.g_loss, self.d_loss = GAN_LOSSES[gan_loss]
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.sigma_max, self.sigma_data = sigma_max, sigma_data
        self._ema_rates = tuple(ema_rates)
        self._rec_grad_norm = None
        # sidecar entries naming what the generator came from (teacher_sha256: the teacher its latents need)
        self.lineage = dict(lineage or {})

    # -- schedule --------------------------------------------------------------------------------------
    def phases(self, step):
        if step % 2:
            return ["discriminator"]
        g = ["generator:rec", "generator:gan"] if self.separate_update else ["generator"]
        return g + (["recon_discriminator"] if self.recon_discriminator is not None else [])

    # -- losses ----------------------------------------------------------------------------------------
    def losses(self, phase, nets, batch, *, step, generator):
        if phase == "discriminator":
            return self._discriminator_losses(nets, batch, step, generator)
        if phase == "recon_discriminator":
            return self._recon_discriminator_losses(nets, batch, generator)
        return self._generator_losses(phase, nets, batch, generator)

    def _fresh_latents(self, z_like, generator):
        return torch.randn(z_like.shape, device=z_like.device, generator=generator) * self.sigma_max

    def _g(self, net, z, y):
        return generate(net, z, y, sigma_max=self.sigma_max, sigma_data=self.sigma_data).float()

    def _generator_losses(self, phase, nets, batch, generator):
        x, z, y = batch["x"], batch["z"], batch.get("y")
        n = x.shape[0]
        want_rec, want_gan = phase in ("generator", "generator:rec"), phase in ("generator", "generator:gan")
        z_in = torch.cat([z, self._fresh_latents(z, generator)]) if want_rec and want_gan else (
            z if want_rec else self._fresh_latents(z, generator))
        y_in = None if y is None else (torch.cat([y, y]) if want_rec and want_gan else y)
        out = self._g(nets["generator"], z_in, y_in)  # one forward for both terms: one DDP forward per backward
        terms, last = {}, self.generator.last_resblock_conv().weight
        loss = 0.0
        if want_rec:
            x_rec = out[:n]
            rec = self.reconstruction(x_rec, x, generator=generator)
            terms.update(rec=rec.detach(), psnr=psnr(x_rec.detach().clamp(-1, 1), x))
            loss = loss + rec
            if self.recon_discriminator is not None:
                with _no_param_grads(self.recon_discriminator):
                    (rec_aug,) = self.augment(x_rec, generator=generator)
                    recon_gan = _through_output(self.g_loss(self.recon_discriminator(rec_aug, y)), x_rec)
                lam_r = adaptive_weight(rec, recon_gan, last)
                terms.update(recon_gan=recon_gan.detach(), recon_adaptive_weight=lam_r.expand(n))
                loss = loss + self.w_r * lam_r * recon_gan
        if want_gan:
            x_fake = out[-n:]
            with _no_param_grads(self.discriminator):
                (fake_aug,) = self.augment(x_fake, generator=generator)
                gan = _through_output(self.g_loss(self.discriminator(fake_aug, y)), x_fake)
            lam = self._lambda(rec if want_rec else None, gan, last)
            at_clamp = ((lam >= ADAPTIVE_CLIP[1]) | (lam <= ADAPTIVE_CLIP[0])).float()
            terms.update(gan=gan.detach(), adaptive_weight=lam.expand(n), adaptive_at_clamp=at_clamp.expand(n))
            loss = loss + self.w_D * lam * gan
        elif self.adaptive:  # separate update: remember ||dL_rec/dW|| for the GAN phase that follows
            self._rec_grad_norm = weight_grad_norm(rec, last)
        terms["loss"] = loss
        return terms

    def _lambda(self, rec, gan, last):
        if not self.adaptive:
            return torch.ones((), device=gan.device)
        if rec is not None:
            return adaptive_weight(rec, gan, last, clip=ADAPTIVE_CLIP)
        if self._rec_grad_norm is None:
            return torch.ones((), device=gan.device)
        gan_norm = weight_grad_norm(gan, last)
        return (self._rec_grad_norm / (gan_norm + 1e-4)).clamp(0, 1e4).clamp(*ADAPTIVE_CLIP).detach()

    def _discriminator_losses(self, nets, batch, step, generator):
        x, y = batch["x"], batch.get("y")
        with torch.no_grad():
            x_fake = self._g(self.generator, self._fresh_latents(batch["z"], generator), y)
        real_aug, fake_aug = self.augment(x, x_fake, generator=generator)
        feats_real = self.discriminator.extract(real_aug)
        feats_fake = self.discriminator.extract(fake_aug)
        logits_real, logits_fake = nets["discriminator"](real_aug, fake_aug, y, feats_real, feats_fake)
        d_loss = self.d_loss(logits_real, logits_fake)
        terms = {"loss": d_loss, "gan_d": d_loss.detach(),
                 "logits_real": _mean_logit(logits_real), "logits_fake": _mean_logit(logits_fake)}
        terms.update(discriminator_diagnostics(logits_real, logits_fake, head_names(self.discriminator)))
        if self.r1_gamma > 0 and (step // 2) % self.r1_interval == 0:
            real = real_aug.detach().requires_grad_(True)
            r1 = r1_penalty(real, self.discriminator(real, y))
            terms["r1"] = r1.detach()
            terms["loss"] = d_loss + 0.5 * self.r1_gamma * self.r1_interval * r1  # lazy R1, scaled by its interval
        return terms

    def _recon_discriminator_losses(self, nets, batch, generator):
        """D_r: reals vs the generator's reconstructions of their own latents, shared augmentation."""
        x, y = batch["x"], batch.get("y")
        with torch.no_grad():
            x_rec = self._g(self.generator, batch["z"], y)
        real_aug, rec_aug = self.augment(x, x_rec, generator=generator)
        d = self.recon_discriminator
        logits_real, logits_rec = nets["recon_discriminator"](real_aug, rec_aug, y, d.extract(real_aug),
                                                              d.extract(rec_aug))
        d_loss = self.d_loss(logits_real, logits_rec)
        return {"loss": d_loss, "logits_real": _mean_logit(logits_real), "logits_rec": _mean_logit(logits_rec)}

    # -- bookkeeping -----------------------------------------------------------------------------------
    def ema_rates(self, player):
        return self._ema_rates if player == "generator" else ()

    def export_sidecar(self, player):
        if player != "generator":
            return None
        return dict(generator_sidecar(self.generator, sigma_max=self.sigma_max, sigma_data=self.sigma_data),
                    **self.lineage)

    def state_dict(self):
        # the reconstruction loss's frozen random projections (the discriminator's travel with its player)
        nets = getattr(self.reconstruction, "feature_networks", [])
        return {"reconstruction": [net.state_dict() for net in nets]}

    def load_state_dict(self, state):
        nets = getattr(self.reconstruction, "feature_networks", [])
        saved = state.get("reconstruction", [])
        if len(saved) != len(nets):
            raise ValueError(f"checkpoint has {len(saved)} reconstruction feature networks, this run builds {len(nets)}")
        for net, sd in zip(nets, saved):
            net.load_state_dict(sd)


def head_names(discriminator):
    """'<feature network>_<level>' for each head, in the order the discriminator returns their logits."""
    return [f"{name}_{level}" for name, heads in discriminator.heads.items() for level in range(len(heads))]


def discriminator_diagnostics(logits_real, logits_fake, names):
    """What makes a silent discriminator impossible to miss in the logs: its accuracy on the batch (a real counts
    when its logit, averaged over patches and heads, is > 0, a fake when it is < 0: 0.5 is chance), the same per
    head, and the real-fake gap of the mean logits. Per-sample values, so the logger averages them over steps."""
    real, fake = _mean_logit(logits_real), _mean_logit(logits_fake)
    terms = {"accuracy": torch.cat([(real > 0).float(), (fake < 0).float()]), "logit_gap": real - fake}
    for name, head_real, head_fake in zip(names, logits_real, logits_fake):
        r, f = (l.detach().float().flatten(1).mean(1) for l in (head_real, head_fake))
        terms[f"accuracy_{name}"] = torch.cat([(r > 0).float(), (f < 0).float()])
    return terms


def _mean_logit(logits):
    return torch.stack([l.detach().float().flatten(1).mean(1) for l in logits]).mean(0)
