"""PaGoDA stages 2 and 3 (pagoda-method.md 3-4): distil a one-step generator from the teacher on (latent, image)
pairs, or grow it to 2x/4x/8x resolution.

    # stage 2: G starts as a copy of the teacher, trained on (latent, image) pairs at the teacher's resolution
    python scripts/train.py --method pagoda --preset mnist16 --init_from runs/teacher/exports/denoiser_ema0.999.pt \
        --latent_dir runs/latents --run_dir runs/stage2
    # stage 3: grow the stage-2 generator to 2x, train on the same latents and 2x images
    python scripts/train.py --method pagoda --preset mnist16to32 \
        --init_from runs/stage2/exports/generator_ema0.999.pt --latent_dir runs/latents --run_dir runs/stage3

Exports: <run_dir>/exports/generator_ema<rate>.pt (+ .json sidecar).
"""

import torch

from .. import dist_util, logger, script_util
from ..callbacks import GeneratorMetric, GeneratorPreview
from ..features import create_feature_network
from ..generator import freeze_for_growth, generate, generator_sidecar, grow_generator, with_guidance_input
from ..guided_pairs import load_guided_pairs
from ..image_datasets import check_labels
from ..image_util import psnr
from ..losses import (PixelLoss, PseudoHuberLoss, ReconstructionLoss, adaptive_weight, weight_grad_norm)
from ..model_io import load_generator_or_teacher_backbone, real_classes
from ..pair_datasets import PairDataset, check_latent_domain, check_latent_teacher
from ..train_util import Objective, OptimSpec
from . import common, gan

TITLES = ("stage 2: one-step generator", "stage 3: grown generator")
GROUPS = {
    "data": dict(latent_dir="runs/latents", data_dir="", image_size=0, num_workers=0, cache_images=True,
                 guided_pairs=""),
    "model": dict(init_from="", grow_factor=1, activate_from=-1, channel_mult_high=(), refit_head=False,
                  use_checkpoint=False, sigma_max=80.0, sigma_data=0.5),
    "discriminator": gan.DISCRIMINATOR_FLAGS,
    "loss": dict(recon_loss="feature", discriminator_weight=0.2, adaptive_weight=True, separate_update=False,
                 recon_discriminator=False, recon_discriminator_weight=0.5, guided_weight=1.0, guided_gan=False),
    "train": common.train_group(run_dir="runs/stage2", lr_generator=8e-6, lr_discriminator=2e-3,
                                total_steps=600000, monitor_interval=0, monitor_samples=256,
                                monitor_network="random_conv"),
}

PAPER = dict(feature_networks=("deit_base_distilled_patch16_224", "tf_efficientnet_lite0"), precision="bf16",
             num_workers=8, cache_images=False, save_interval=10000, preview_interval=10000)
PRESETS = {
    # CPU recipes on the bundled digits (16 px teacher). Short runs need far larger learning rates than the paper's.
    "mnist16": dict(recon_loss="pseudo_huber", feature_networks=("tf_efficientnet_lite0",), feature_resolution=64,
                    d_norm="group", discriminator_weight=6.0, lr_generator=2e-3, lr_discriminator=1e-3,
                    d_channel_scale=0.25,
                    ema_rates=(0.99,), total_steps=1000, global_batch_size=32, save_interval=200, preview_interval=200,
                    log_interval=50),
    "mnist16to32": dict(recon_loss="pseudo_huber", grow_factor=2, activate_from=4, refit_head=True,
                        discriminator_weight=1.0,
                        lr_generator=1e-3, lr_discriminator=1e-3, d_channel_scale=0.25, ema_rates=(0.99,),
                        total_steps=1000, global_batch_size=32, save_interval=200, preview_interval=200,
                        log_interval=50),
    # The paper's ImageNet settings (pagoda-method.md 9.2), corrected: the official 64->64 recipe trains nothing.
    "imagenet64": dict(PAPER, discriminator_weight=0.2, global_batch_size=96),
    "imagenet64to128": dict(PAPER, grow_factor=2, activate_from=9, discriminator_weight=1.0, global_batch_size=256),
    "imagenet128to256": dict(PAPER, grow_factor=2, activate_from=9, discriminator_weight=1.0, separate_update=True,
                             adaptive_weight=False, global_batch_size=360),
    "imagenet256to512": dict(PAPER, grow_factor=2, activate_from=9, discriminator_weight=1.0, separate_update=True,
                             adaptive_weight=False, global_batch_size=512, use_checkpoint=True,
                             recon_discriminator=True),
}
# CIFAR-10 (commands/quickstart_cifar10.sh) starts from the digits' settings; its table measures them on photos.
PRESETS["cifar16"], PRESETS["cifar16to32"] = dict(PRESETS["mnist16"]), dict(PRESETS["mnist16to32"])

_c = script_util
CONSTRAINTS = {
    **common.TRAIN_CONSTRAINTS, **gan.DISCRIMINATOR_CONSTRAINTS,
    "image_size": _c.at_least(0), "num_workers": _c.at_least(0), "grow_factor": _c.one_of(1, 2, 4, 8),
    "activate_from": _c.at_least(-1), "channel_mult_high": _c.each(_c.as_number(_c.greater_than(0))),
    "recon_loss": _c.one_of("feature", "pixel", "pseudo_huber"), "discriminator_weight": _c.at_least(0),
    "recon_discriminator_weight": _c.at_least(0), "guided_weight": _c.at_least(0), "sigma_max": _c.greater_than(0),
    "sigma_data": _c.greater_than(0),
    "lr_generator": _c.at_least(0), "lr_discriminator": _c.at_least(0), "monitor_interval": _c.at_least(0),
    "monitor_samples": _c.at_least(2),
}


class PaGoDAObjective(Objective):
    """G(z, y) learns to map each encoded latent back to its image (reconstruction loss) while a projected
    discriminator keeps samples from fresh prior latents sharp.

    Generator phase: L = L_rec(G(z_data, y), x) + w_D * lambda * L_G(G(z ~ N(0, sigma_max^2), y)), lambda the
    adaptive weight at G's last ResBlock conv (or 1). Discriminator phase, on its own batch: the GAN loss on
    reals vs fresh fakes, with the same DiffAugment parameters on both. Steps alternate: even steps are G phases,
    odd steps D phases, as in the official loop. `separate_update` splits the G phase into a reconstruction update and
    a GAN update (the official 256/512 setting). An optional `recon_discriminator` (the official 512 setting)
    separates reconstructions G(z_data) from reals; the generator then adds w_r * lambda_r * L_G(D_r(G(z_data)))
    with lambda_r the adaptive ratio against L_rec, and D_r updates right after every generator step.
    Stage 3 is this objective with a grown generator and high-resolution images: a config, not a new loop.
    With `guided` pairs (a guidance-conditioned G(z, y, w)) the generator phase adds a distillation term
    guided_weight * L_rec(G(z_w, y, w), x_w) on pairs the guided teacher decoded; the data reconstruction stays at
    w = 1. The GAN is either at w = 1 only (reals: the data; option (a) of issue 19: no discriminator fights w > 1)
    or, with `guided_gan` (option (b)), over w too: a D(x, y, w) whose reals are the data at w = 1 and as many guided
    teacher samples x_w (a random draw of the pairs) at their w > 1; its fakes are G(z, y, w) from fresh prior z at
    each real's (y, w), as the w = 1 fakes always were (the pairs' own z are the distillation term's already; the
    GAN's job is every z of the prior). The GAN's batch doubles: the w = 1 half is exactly option (a)'s.
    """

    def __init__(self, *, generator, discriminator, reconstruction, augment, discriminator_weight=0.2,
                 adaptive=True, separate_update=False, gan_loss="hinge", r1_gamma=0.0, r1_interval=16,
                 recon_discriminator=None, recon_discriminator_weight=0.5, sigma_max=80.0, sigma_data=0.5,
                 ema_rates=(0.999,), lineage=None, guided=None, guided_weight=1.0, guided_gan=False):
        self.generator, self.discriminator, self.recon_discriminator = generator, discriminator, recon_discriminator
        self.adversary = gan.Adversary(discriminator, augment=augment, gan_loss=gan_loss, r1_gamma=r1_gamma,
                                       r1_interval=r1_interval)
        self.players = {"generator": generator, "discriminator": self.adversary.player}
        self.recon_adversary = None
        if recon_discriminator is not None:
            self.recon_adversary = gan.Adversary(recon_discriminator, augment=augment, gan_loss=gan_loss)
            self.players["recon_discriminator"] = self.recon_adversary.player
        self.reconstruction, self.augment, self.w_r = reconstruction, augment, recon_discriminator_weight
        self.w_D, self.adaptive, self.separate_update = discriminator_weight, adaptive, separate_update
        self.sigma_max, self.sigma_data = sigma_max, sigma_data
        self._ema_rates = tuple(ema_rates)
        self._rec_grad_norm = None
        # sidecar entries naming what the generator came from (teacher_sha256: the teacher its latents need)
        self.lineage = dict(lineage or {})
        # guided pairs {z, x, y, w} (pagoda.guided_pairs) for the distillation term of a w-conditioned G
        self.guided, self.guided_weight = guided, guided_weight
        if guided_gan and guided is None:
            raise ValueError("guided_gan needs guided pairs: the guided teacher's samples are its reals at w > 1")
        self.guided_gan = guided_gan

    # -- schedule --------------------------------------------------------------------------------------
    def phases(self, step):
        if step % 2:
            return ["discriminator"]
        g = ["generator:rec", "generator:gan"] if self.separate_update else ["generator"]
        return g + (["recon_discriminator"] if self.recon_adversary is not None else [])

    # -- losses ----------------------------------------------------------------------------------------
    def losses(self, phase, nets, batch, *, step, generator):
        if phase == "discriminator":
            x_real, y, w, z = self.discriminator_batch(batch, generator)
            with torch.no_grad():
                x_fake = self._g(self.generator, z, y, w)
            return self.adversary.discriminator_terms(nets["discriminator"], x_real, x_fake, y, w=w,
                                                      d_step=step // 2, generator=generator)
        if phase == "recon_discriminator":
            return self._recon_discriminator_losses(nets, batch, generator)
        return self._generator_losses(phase, nets, batch, generator)

    def discriminator_batch(self, batch, generator):
        """(reals, y, w, fake latents) of a D phase: the data batch at w = 1 (w None without guided_gan) and, with
        guided_gan, as many guided pairs' x_w at their (y, w); fresh prior latents for the fakes at every row."""
        x, y, z = batch["x"], batch.get("y"), self._fresh_latents(batch["z"], generator)
        if not self.guided_gan:
            return x, y, None, z
        _, y_w, w, x_w = self._guided_batch(len(x), generator)
        w = torch.cat([torch.ones(len(x), device=x.device), w])
        y = None if y is None else torch.cat([y, y_w])
        return torch.cat([x, x_w]), y, w, torch.cat([z, self._fresh_latents(batch["z"], generator)])

    def _fresh_latents(self, z_like, generator):
        return torch.randn(z_like.shape, device=z_like.device, generator=generator) * self.sigma_max

    def _g(self, net, z, y, w=None):
        return generate(net, z, y, w, sigma_max=self.sigma_max, sigma_data=self.sigma_data).float()

    def _guided_batch(self, n, generator):
        """n guided pairs drawn with the step's generator: (z, y, w, x_w)."""
        idx = torch.randint(len(self.guided["z"]), (n,), generator=generator, device=generator.device)
        idx = idx.to(self.guided["z"].device)
        return tuple(None if self.guided[k] is None else self.guided[k][idx] for k in ("z", "y", "w", "x"))

    def _generator_inputs(self, batch, want_rec, want_gan, generator):
        """The generator phase's segments {name: (z, y, w)}, in forward order: rec (the data latents), gan (fresh z at
        w = 1), gan_w (guided_gan: fresh z at a draw of the pairs' (y, w)), distill (that draw's own z). w is None
        for a generator without a w input. Returns (segments, the guided draw or None)."""
        z, y = batch["z"], batch.get("y")
        ones = None if self.guided is None else torch.ones(len(z), device=z.device)
        segments = {}
        if want_rec:
            segments["rec"] = (z, y, ones)
        if want_gan:
            segments["gan"] = (self._fresh_latents(z, generator), y, ones)
        guided = None
        if self.guided is not None and (want_rec or (want_gan and self.guided_gan)):
            guided = self._guided_batch(len(z), generator)
        if want_gan and self.guided_gan:
            segments["gan_w"] = (self._fresh_latents(z, generator), guided[1], guided[2])
        if want_rec and guided is not None:
            segments["distill"] = guided[:3]
        return segments, guided

    def _forward_segments(self, net, segments):
        """One forward for all segments (one DDP forward per backward), split back by name."""
        parts = list(segments.values())
        z_in, y_in, w_in = (None if part[0] is None else torch.cat(part) for part in zip(*parts))
        out = self._g(net, z_in, y_in, w_in)
        return dict(zip(segments, out.split([len(part[0]) for part in parts])))

    def _generator_losses(self, phase, nets, batch, generator):
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        want_rec, want_gan = phase in ("generator", "generator:rec"), phase in ("generator", "generator:gan")
        segments, guided = self._generator_inputs(batch, want_rec, want_gan, generator)
        out = self._forward_segments(nets["generator"], segments)
        terms, last = {}, self.generator.last_resblock_conv().weight
        loss = 0.0
        if want_rec:
            x_rec = out["rec"]
            rec = self.reconstruction(x_rec, x, generator=generator)
            terms.update(rec=rec.detach(), psnr=psnr(x_rec.detach().clamp(-1, 1), x))
            loss = loss + rec
            if "distill" in out:
                distill = self.reconstruction(out["distill"], guided[3], generator=generator)
                terms.update(distill=distill.detach(),
                             psnr_guided=psnr(out["distill"].detach().clamp(-1, 1), guided[3]))
                loss = loss + self.guided_weight * distill
            if self.recon_adversary is not None:
                recon_gan = self.recon_adversary.generator_term(x_rec, y, generator=generator)
                lam_r = adaptive_weight(rec, recon_gan, last)
                terms.update(recon_gan=recon_gan.detach(), recon_adaptive_weight=lam_r.expand(n))
                loss = loss + self.w_r * lam_r * recon_gan
        if want_gan:
            gan_term = self._gan_term(out, segments, generator)
            lam = self._lambda(rec if want_rec else None, gan_term, last)
            at_clamp = ((lam >= gan.ADAPTIVE_CLIP[1]) | (lam <= gan.ADAPTIVE_CLIP[0])).float()
            terms.update(gan=gan_term.detach(), adaptive_weight=lam.expand(n), adaptive_at_clamp=at_clamp.expand(n))
            loss = loss + self.w_D * lam * gan_term
        elif self.adaptive:  # separate update: remember ||dL_rec/dW|| for the GAN phase that follows
            self._rec_grad_norm = weight_grad_norm(rec, last)
        terms["loss"] = loss
        return terms

    def _gan_term(self, out, segments, generator):
        """Per-sample L_G on the fresh fakes: at w = 1 only, or (guided_gan) at w = 1 and at the pairs' w, row i
        the mean of the two halves' row i (the batch's per-sample shape; the adaptive weight rescales the term to
        the reconstruction's gradient norm anyway, so mean or sum makes no difference below its clamp)."""
        names = ["gan", "gan_w"] if self.guided_gan else ["gan"]
        x_fake = torch.cat([out[k] for k in names])
        y = None if segments["gan"][1] is None else torch.cat([segments[k][1] for k in names])
        w = torch.cat([segments[k][2] for k in names]) if self.guided_gan else None
        per_sample = self.adversary.generator_term(x_fake, y, generator=generator, w=w)
        return per_sample.view(len(names), -1).mean(0)

    def _lambda(self, rec, gan_term, last):
        if not self.adaptive:
            return torch.ones((), device=gan_term.device)
        if rec is not None:
            return adaptive_weight(rec, gan_term, last, clip=gan.ADAPTIVE_CLIP)
        if self._rec_grad_norm is None:
            return torch.ones((), device=gan_term.device)
        gan_norm = weight_grad_norm(gan_term, last)
        return (self._rec_grad_norm / (gan_norm + 1e-4)).clamp(0, 1e4).clamp(*gan.ADAPTIVE_CLIP).detach()

    def _recon_discriminator_losses(self, nets, batch, generator):
        """D_r: reals vs the generator's reconstructions of their own latents, shared augmentation."""
        x, y = batch["x"], batch.get("y")
        with torch.no_grad():
            x_rec = self._g(self.generator, batch["z"], y)
        terms = self.recon_adversary.discriminator_terms(nets["recon_discriminator"], x, x_rec, y, d_step=1,
                                                         generator=generator)
        return {"loss": terms["loss"], "logits_real": terms["logits_real"], "logits_rec": terms["logits_fake"]}

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
            raise ValueError(f"checkpoint has {len(saved)} reconstruction feature networks, this run builds "
                             f"{len(nets)}")
        for net, sd in zip(nets, saved):
            net.load_state_dict(sd)


def build_generator(init_from, *, device, grow_factor=1, channel_mult_high=(), refit_head=False, seed=0,
                    sigma_max=80.0, sigma_data=0.5, use_checkpoint=False, activate_from=-1):
    """(backbone, origin): the generator backbone, the teacher's (stage 2) or a previous generator's, grown for
    stage 3 (with `refit_head`, its output head re-fitted so that it starts as the previous generator up-sampled);
    origin: the content hash of the teacher it descends from (None for a generator that predates the record) and
    the teacher's null class."""
    if not init_from:
        raise ValueError("--init_from is required: a teacher export (stage 2) or a generator export (stage 3)")
    backbone, side = load_generator_or_teacher_backbone(init_from)
    origin = {"teacher_sha256": backbone.content_sha256 if side["kind"] == "denoiser" else side.get("teacher_sha256"),
              "null_class": side.get("null_class"), "dataset": side.get("dataset")}
    backbone = backbone.to(device)
    if grow_factor > 1:
        backbone, new_keys, fit = grow_generator(
            backbone, factor=grow_factor, channel_mult_high=[float(m) for m in channel_mult_high] or None,
            refit_head=refit_head, seed=seed, sigma_max=sigma_max, sigma_data=sigma_data,
            num_classes=real_classes(backbone.config["num_classes"], origin["null_class"]))
        logger.log(f"grew {side['kind']} from {init_from} to {backbone.config['output_size']} px: "
                   f"{len(new_keys)} new tensors")
        if fit:
            logger.log(f"re-fitted the output head: PSNR against the bicubically up-sampled parent "
                       f"{fit[0]:.2f} -> {fit[1]:.2f} dB")
    if use_checkpoint:  # gradient checkpointing is a run setting, not part of the exported architecture
        for module in backbone.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = True
    backbone.requires_grad_(True).train()
    if activate_from >= 0:
        trainable, frozen = freeze_for_growth(backbone, activate_from=activate_from)
        logger.log(f"training output_blocks[{activate_from}:] + out: {trainable:,} trainable, "
                   f"{frozen:,} frozen parameters")
    return backbone, origin


def check_pairs(pairs, backbone, origin, *, latent_dir, init_from):
    """Refuse latents this generator cannot use: another resolution, another teacher, unknown labels."""
    if pairs.manifest["image_size"] != backbone.config["image_size"]:
        raise ValueError(f"latents in {latent_dir} are {pairs.manifest['image_size']} px but the generator takes "
                         f"{backbone.config['image_size']} px latents")
    check_latent_domain(origin.get("dataset"), pairs.images.source, latent_dir=latent_dir, model=init_from)
    check_latent_teacher(pairs.manifest, origin["teacher_sha256"], latent_dir=latent_dir, model=init_from)
    num_classes = real_classes(backbone.config["num_classes"], origin["null_class"])
    if num_classes:
        check_labels([pairs.images.labels[k] for k in pairs.positions], num_classes,
                     data=pairs.manifest["data_dir"], model=f"the generator from {init_from}")


def guided_pairs_for(folder, backbone, origin, *, device):
    """The guided pairs (pagoda.guided_pairs) on `device`, refused unless the generator's teacher made them at the
    generator's output size."""
    pairs = load_guided_pairs(folder)
    check_latent_teacher(pairs["manifest"], origin["teacher_sha256"], latent_dir=folder, model="this generator")
    size = backbone.config["output_size"] or backbone.config["image_size"]
    if pairs["x"].shape[-1] != size:
        raise ValueError(f"guided pairs in {folder} are {pairs['x'].shape[-1]} px images but the generator makes "
                         f"{size} px ones")
    scales = pairs["manifest"]["guidance_scales"]
    logger.log(f"guided pairs: {len(pairs['z'])} from {folder} at w in {scales} (distillation term)")
    return {k: None if v is None else v.to(device) for k, v in pairs.items() if k != "manifest"}


def build_reconstruction(config, augment, device):
    kind = config["recon_loss"]
    if kind == "pixel":
        return PixelLoss()
    if kind == "pseudo_huber":
        return PseudoHuberLoss()
    if kind != "feature":
        raise ValueError(f"--recon_loss must be feature, pixel or pseudo_huber, got {kind!r}")
    # its own instances, seeded apart from the discriminator's, identical on every rank
    nets = gan.feature_networks(config["feature_networks"], config["feature_weights"], seed=config["feature_seed"] + 1,
                                resolution=config["feature_resolution"], teacher_sigma=config["teacher_feature_sigma"])
    nets = {k: v.to(device) for k, v in nets.items()}
    for name, net in nets.items():
        dist_util.check_same_across_ranks(net, what=f"reconstruction feature network {name}")
    return ReconstructionLoss(feature_networks=nets, augment=augment)


def build_discriminators(config, *, image_size, num_classes, device):
    """The projected discriminator (with --guided_gan a D(x, y, w)) and, with --recon_discriminator, the
    reconstruction one (its own heads over the same frozen feature networks: the official 512 setting; w = 1)."""
    d = gan.discriminator_from_flags(config, image_size=image_size, num_classes=num_classes, device=device,
                                     guidance_embed=config["guided_gan"])
    d_r = None
    if config["recon_discriminator"]:
        d_r = gan.discriminator_from_flags(config, image_size=image_size, num_classes=num_classes, device=device,
                                           stream="recon_discriminator", nets=dict(d.feature_networks))
    return d, d_r


def monitor_callbacks(config, pairs, device, num_classes):
    """--monitor_interval: Frechet distance of pooled features of a frozen pagoda feature network between EMA
    samples and real images (logged as monitor/fd_<network>; a cheap training signal, not FID)."""
    if not config["monitor_interval"]:
        return []
    from evaluations.metrics import feature_stats, monitor_fd

    name = config["monitor_network"]
    net = create_feature_network(name, seed=12345).to(device)

    def pooled(x):
        return net(x.to(device))[-1].float().mean(dim=(2, 3)).cpu()

    real = torch.stack([pairs.load(i)["x"] for i in range(min(len(pairs), config["monitor_samples"]))])
    real_stats = feature_stats(real, pooled)
    return [GeneratorMetric(interval=config["monitor_interval"], num_samples=config["monitor_samples"],
                            num_classes=num_classes, sigma_max=config["sigma_max"], sigma_data=config["sigma_data"],
                            metric_fn=lambda fake: monitor_fd(real_stats, fake, pooled, name=name))]


GENERATOR_FLAGS = ("grow_factor", "channel_mult_high", "refit_head", "seed", "sigma_max", "sigma_data",
                   "use_checkpoint", "activate_from")


def build(config, device):
    if config["guided_gan"] and not config["guided_pairs"]:
        raise ValueError("--guided_gan true needs --guided_pairs: the guided teacher's samples are the "
                         "discriminator's reals at w > 1")
    backbone, origin = build_generator(config["init_from"], device=device,
                                       **{k: config[k] for k in GENERATOR_FLAGS})
    guided = None
    if config["guided_pairs"]:
        guided = guided_pairs_for(config["guided_pairs"], backbone, origin, device=device)
        backbone = with_guidance_input(backbone, seed=config["seed"])
    dist_util.sync_params(backbone.parameters())
    image_size = config["image_size"] or backbone.config["output_size"]
    if image_size != backbone.config["output_size"]:
        raise ValueError(f"--image_size {image_size} differs from the generator's output size "
                         f"{backbone.config['output_size']}")
    pairs = PairDataset(config["latent_dir"], image_size=image_size, data_dir=config["data_dir"] or None,
                        shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                        cache=config["cache_images"])
    check_pairs(pairs, backbone, origin, latent_dir=config["latent_dir"], init_from=config["init_from"])
    lineage = common.export_lineage(origin)
    num_classes = backbone.config["num_classes"]
    sampled_classes = real_classes(num_classes, origin["null_class"])
    augment = gan.augment_from_flags(config)
    discriminator, recon_discriminator = build_discriminators(config, image_size=image_size, num_classes=num_classes,
                                                              device=device)
    objective = PaGoDAObjective(generator=backbone, discriminator=discriminator,
                                reconstruction=build_reconstruction(config, augment, device), augment=augment,
                                discriminator_weight=config["discriminator_weight"],
                                adaptive=config["adaptive_weight"], separate_update=config["separate_update"],
                                gan_loss=config["gan_loss"], r1_gamma=config["r1_gamma"],
                                r1_interval=config["r1_interval"], recon_discriminator=recon_discriminator,
                                recon_discriminator_weight=config["recon_discriminator_weight"],
                                sigma_max=config["sigma_max"], sigma_data=config["sigma_data"],
                                ema_rates=config["ema_rates"], lineage=lineage, guided=guided,
                                guided_weight=config["guided_weight"], guided_gan=config["guided_gan"])
    preview = GeneratorPreview(interval=config["preview_interval"], num_classes=sampled_classes,
                               sigma_max=config["sigma_max"], sigma_data=config["sigma_data"])
    optim = {"generator": OptimSpec(name="radam", lr=config["lr_generator"]),
             "discriminator": OptimSpec(name="radam", lr=config["lr_discriminator"]),
             "recon_discriminator": OptimSpec(name="radam", lr=config["lr_discriminator"])}
    return common.Run(objective=objective, data=common.stream(pairs, config, labels=bool(num_classes)), optim=optim,
                      callbacks=[preview] + monitor_callbacks(config, pairs, device, sampled_classes),
                      record=dict(generator=backbone.config, num_pairs=len(pairs)),
                      title=TITLES[config["grow_factor"] > 1])
