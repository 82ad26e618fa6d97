"""The adversarial part PaGoDA and GDD share: the projected discriminator's flags and builder, the discriminator
phase (GAN loss, diagnostics, lazy R1), the generator's GAN term and the adaptive weight's clip; and the
reconstruction loss of --recon_loss, whose feature distance uses the same kind of frozen feature networks.

A method composes an `Adversary`; it never re-implements these terms, so PaGoDA's and GDD's discriminators are the
same code with different settings.
"""

import contextlib

import torch
from torch import nn

from .. import dist_util, random_util, script_util
from ..diffaug import POLICIES, DiffAugment
from ..discriminator import HEAD_NORMS, ProjectedDiscriminator
from ..features import FEATURE_NETWORKS, MIN_FEATURE_RESOLUTION, create_feature_network
from ..losses import (PixelLoss, PseudoHuberLoss, ReconstructionLoss, hinge_d_loss, hinge_g_loss, nonsaturating_d_loss,
                     nonsaturating_g_loss, r1_penalty)

# The flags of the discriminator and its loss; methods change the defaults in their own group definitions.
F, _c = script_util.Flag, script_util
DISCRIMINATOR_FLAGS = dict(
    feature_networks=F(("random_conv",), "comma list of the frozen feature networks the discriminator's heads read "
                       f"(one head per feature level): {', '.join(FEATURE_NETWORKS)}. random_conv and tiny are "
                       "seeded random CNNs; the timm ones need their pretrained weights on disk (a local cache or "
                       "--feature_weights); teacher is the stage-1 teacher's UNet encoder (weights: --feature_weights)",
                       resume="fixed"),
    feature_weights=F((), "comma list of weight files, entry i for the i-th --feature_networks ('' or missing: that "
                      "network's default); needed for teacher (its denoiser export)", resume="fixed"),
    feature_seed=F(0, "seed of the frozen random layers: the random networks and the random projections of the "
                   "feature maps; shapes only the initial networks of a fresh run", _c.at_least(0)),
    feature_resolution=F(0, f"side in pixels images are resized to before the feature networks (>= "
                         f"{MIN_FEATURE_RESOLUTION}); 0: each network's own (random ones their native size, timm "
                         "ones 224 below 256 px and native from 256 px); the teacher network always works at the "
                         "teacher's size", _c.zero_or_at_least(MIN_FEATURE_RESOLUTION), resume="fixed"),
    teacher_feature_sigma=F(0.5, "noise level sigma at which the teacher feature network reads its inputs "
                            "(x + sigma n through the teacher's encoder at that sigma)", _c.at_least(0)),
    d_channel_scale=F(1.0, "width multiplier of the discriminator's heads (channels per head level times this); "
                      "below 1 for small data", _c.greater_than(0), resume="fixed"),
    d_norm=F("batch", f"normalisation in the heads: {' or '.join(HEAD_NORMS)} (GroupNorm: per-sample statistics)",
             _c.one_of(*HEAD_NORMS), resume="fixed"),
    gan_loss=F("hinge", "adversarial loss: hinge (PaGoDA) or nonsaturating (StyleGAN/GDD)",
               _c.one_of("hinge", "nonsaturating")),
    r1_gamma=F(0.0, "weight gamma of the R1 gradient penalty (gamma / 2) ||grad D(x_real)||^2 on augmented reals; "
               "0: off", _c.at_least(0)),
    r1_interval=F(16, "discriminator steps between R1 evaluations (lazy R1: the penalty is scaled by the interval)",
                  _c.at_least(1)),
    diffaug=F(True, "DiffAugment (colour, translation, cutout) with the same parameters on reals and fakes; keeps "
              "the discriminator from memorising small data"),
    translation_ratio=F(0.125, "DiffAugment's largest shift as a fraction of the image side (zero fill)",
                        _c.in_range(0, 1, high_included=True)),
    cutout_ratio=F(0.2, "side of DiffAugment's cutout square as a fraction of the image side",
                   _c.in_range(0, 1, high_included=True)),
)

# The adaptive weight's clip (losses.adaptive_weight): a weight at either end means the balance is not working.
ADAPTIVE_CLIP = (0.01, 10.0)
GAN_LOSSES = {"hinge": (hinge_g_loss, hinge_d_loss), "nonsaturating": (nonsaturating_g_loss, nonsaturating_d_loss)}


def feature_networks(names, weights=(), *, seed, resolution=0, teacher_sigma=0.5):
    """The frozen feature networks `names` (D's, and the feature reconstruction loss's), images resized to
    `resolution` before the resizing ones (0: each network's own size; 'teacher' keeps its own)."""
    if len(weights) > len(names):
        raise ValueError(f"--feature_weights has {len(weights)} entries for {len(names)} --feature_networks")
    paths = list(weights) + [None] * len(names)
    return {name: create_feature_network(name, weights_path=w or None, seed=seed, teacher_sigma=teacher_sigma,
                                         input_size=resolution)
            for name, w in zip(names, paths)}


def discriminator_from_flags(config, *, image_size, num_classes, device, stream="discriminator", nets=None):
    """The discriminator DISCRIMINATOR_FLAGS describe: heads drawn from (--seed, `stream`), frozen networks from
    --feature_seed (built inside the same seeded block, so nothing else the run draws depends on them), identical
    on every rank. `nets`: reuse these frozen feature networks (a second discriminator over the same features)."""
    with random_util.seeded(config["seed"], stream):
        if nets is None:
            nets = feature_networks(config["feature_networks"], config["feature_weights"],
                                    seed=config["feature_seed"], resolution=config["feature_resolution"],
                                    teacher_sigma=config["teacher_feature_sigma"])
        d = ProjectedDiscriminator(feature_networks=nets, image_size=image_size, num_classes=num_classes,
                                   channel_scale=config["d_channel_scale"], norm=config["d_norm"]).to(device)
    dist_util.sync_params(d.parameters())
    dist_util.check_same_across_ranks(d.feature_networks, what="discriminator feature networks")
    return d


def augment_from_flags(config):
    """DiffAugment (colour, translation, cutout) on reals and fakes alike, or none with --diffaug false."""
    return DiffAugment(policy=POLICIES if config["diffaug"] else (), translation_ratio=config["translation_ratio"],
                       cutout_ratio=config["cutout_ratio"])


def reconstruction_from_flags(config, augment, device):
    """The reconstruction loss of --recon_loss: pixel MSE, pseudo-Huber, or the feature distance over frozen feature
    networks of the discriminator flags (their own instances, seeded apart from D's, identical on every rank)."""
    kind = config["recon_loss"]
    if kind == "pixel":
        return PixelLoss()
    if kind == "pseudo_huber":
        return PseudoHuberLoss()
    if kind != "feature":
        raise ValueError(f"--recon_loss must be feature, pixel or pseudo_huber, got {kind!r}")
    nets = feature_networks(config["feature_networks"], config["feature_weights"], seed=config["feature_seed"] + 1,
                            resolution=config["feature_resolution"], teacher_sigma=config["teacher_feature_sigma"])
    nets = {k: v.to(device) for k, v in nets.items()}
    for name, net in nets.items():
        dist_util.check_same_across_ranks(net, what=f"reconstruction feature network {name}")
    return ReconstructionLoss(feature_networks=nets, augment=augment)


def lazy_regularised(lr, betas, interval):
    """StyleGAN2's Adam correction for a loss regularised every `interval` steps (Karras et al. 2020, C.1): the
    regulariser adds 1/interval of an optimiser step on average, so the lr and the betas are scaled by
    c = interval / (interval + 1) (betas as beta^c). GDD applies it to its discriminator (R1 every 16 steps)."""
    c = interval / (interval + 1)
    return lr * c, tuple(b ** c for b in betas)


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
def no_param_grads(module):
    """Run `module` without recording its parameters in the graph (gradients still flow to its input)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def through_output(loss, x):
    """Per-sample `loss` (a function of the generator output `x` through augmentation and a discriminator) as a
    surrogate with the same values and the same gradient with respect to x, and so to every generator weight, whose
    graph ends at x. The discriminator is backpropagated once, here, instead of once for the adaptive weight's
    ||dL/dW|| and again in the final backward. Not under fp16 autocast: there this backward must stay inside the
    loss-scaled one, or its gradients underflow."""
    fp16 = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.float16
    if fp16 or not loss.requires_grad:
        return loss
    (grad,) = torch.autograd.grad(loss.float().sum(), x)
    inner = (x * grad).flatten(1).sum(1)  # d(sum_i inner_i)/dx = grad, and inner_i depends on sample i only
    return inner - inner.detach() + loss.detach()


class Adversary:
    """A discriminator with its loss, augmentation and R1 schedule; `player` is what the loop trains."""

    def __init__(self, discriminator, *, augment, gan_loss="hinge", r1_gamma=0.0, r1_interval=16):
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(GAN_LOSSES)}, got {gan_loss!r}")
        self.discriminator, self.augment = discriminator, augment
        self.g_loss, self.d_loss = GAN_LOSSES[gan_loss]
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.player = DiscriminatorPair(discriminator)

    def generator_term(self, x_fake, y, generator=None):
        """Per-sample L_G(D(aug(G(z)))), reaching G through `through_output` (D's weights stay out of the graph)."""
        with no_param_grads(self.discriminator):
            (fake_aug,) = self.augment(x_fake, generator=generator)
            return through_output(self.g_loss(self.discriminator(fake_aug, y)), x_fake)

    def discriminator_terms(self, net, x_real, x_fake, y, *, d_step, generator=None):
        """The discriminator phase's terms: the GAN loss on reals vs fakes with shared augmentation parameters,
        diagnostics, and R1 on the augmented reals on every `r1_interval`-th D step (`d_step`: this phase's own
        count), scaled by the interval (lazy R1). `net` is the player as the loop calls it (DDP-wrapped)."""
        real_aug, fake_aug = self.augment(x_real, x_fake, generator=generator)
        d = self.discriminator
        logits_real, logits_fake = net(real_aug, fake_aug, y, d.extract(real_aug), d.extract(fake_aug))
        d_loss = self.d_loss(logits_real, logits_fake)
        terms = {"loss": d_loss, "gan_d": d_loss.detach(),
                 "logits_real": mean_logit(logits_real), "logits_fake": mean_logit(logits_fake)}
        terms.update(discriminator_diagnostics(logits_real, logits_fake, head_names(d)))
        if self.r1_gamma > 0 and d_step % self.r1_interval == 0:
            real = real_aug.detach().requires_grad_(True)
            r1 = r1_penalty(real, d(real, y))
            terms["r1"] = r1.detach()
            terms["loss"] = d_loss + 0.5 * self.r1_gamma * self.r1_interval * r1
        return terms


def head_names(discriminator):
    """'<feature network>_<level>' for each head, in the order the discriminator returns their logits."""
    return [f"{name}_{level}" for name, heads in discriminator.heads.items() for level in range(len(heads))]


def discriminator_diagnostics(logits_real, logits_fake, names):
    """What makes a silent discriminator impossible to miss in the logs: its accuracy on the batch (a real counts
    when its logit, averaged over patches and heads, is > 0, a fake when it is < 0: 0.5 is chance), the same per
    head, and the real-fake gap of the mean logits. Per-sample values, so the logger averages them over steps."""
    real, fake = mean_logit(logits_real), mean_logit(logits_fake)
    terms = {"accuracy": torch.cat([(real > 0).float(), (fake < 0).float()]), "logit_gap": real - fake}
    for name, head_real, head_fake in zip(names, logits_real, logits_fake):
        r, f = (l.detach().float().flatten(1).mean(1) for l in (head_real, head_fake))
        terms[f"accuracy_{name}"] = torch.cat([(r > 0).float(), (f < 0).float()])
    return terms


def mean_logit(logits):
    return torch.stack([l.detach().float().flatten(1).mean(1) for l in logits]).mean(0)
