"""PaGoDA stages 2 and 3 (docs/method.md 3-4): distil a one-step generator from the teacher on (latent, image)
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
from ..generator import freeze_for_growth, generate, generator_sidecar, grow_generator
from ..image_datasets import check_labels
from ..image_util import psnr
from ..losses import adaptive_weight, weight_grad_norm
from ..model_io import load_generator_or_teacher_backbone, real_classes
from ..pair_datasets import PairDataset, check_latent_domain, check_latent_teacher
from ..train_util import Objective, OptimSpec
from . import common, gan

# progress-bar titles, "<method>: <what it trains>" as in every method; stage 3 is a grown stage 2
TITLES = ("pagoda: stage 2 one-step generator", "pagoda: stage 3 grown generator")
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": dict(
        common.PAIR_DATA_FLAGS,
        image_size=F(0, "side in pixels of the training images: the generator's output size (stage 3: the grown "
                     "size); 0: that size", _c.at_least(0), resume="fixed"),
    ),
    "model": dict(
        init_from=F("", "start: a teacher export (stage 2: G starts as the teacher's backbone) or a generator export "
                    "(stage 3: grown by --grow_factor); required"),
        grow_factor=F(1, "stage 3: grow the generator's output to this multiple of its input resolution (1: stage "
                      "2, no growth)", _c.one_of(1, 2, 4, 8), resume="fixed"),
        activate_from=F(-1, "train only output_blocks[activate_from:] and the output head (official stage 3: 9); "
                        "a DiMR generator: only branches[activate_from:] (1 on a grown 2-branch P16-2R: its 16 px "
                        "branch and the grown one); -1: train every layer", _c.at_least(-1), resume="fixed"),
        channel_mult_high=F((), "comma list of channel multipliers of the grown levels, one per doubling (of the "
                            "base width); empty: 1 each", _c.each(_c.as_number(_c.greater_than(0))), resume="fixed"),
        refit_head=F(False, "stage 3: re-fit the grown generator's output head so that it starts as the previous "
                     "generator up-sampled; shapes only the initial weights of a fresh run"),
        sigma_max=F(80.0, "the teacher's largest noise level: prior latents are N(0, sigma_max^2) and G reads "
                    "z / sigma_max", _c.greater_than(0)),
        sigma_data=F(0.5, "the teacher's data standard deviation (EDM preconditioning of G's input)",
                     _c.greater_than(0)),
        use_checkpoint=F(False, "gradient checkpointing in the generator: activations recomputed in the backward "
                         "pass, less memory for more compute, same results", resume="free"),
    ),
    "discriminator": gan.DISCRIMINATOR_FLAGS,
    "loss": dict(
        recon_loss=F("feature", "reconstruction loss L_rec(G(z_data, y), x): feature (LPIPS-like distance of "
                     "normalised --feature_networks features, own seeded copies), pixel (MSE) or pseudo_huber (iCT's "
                     "pseudo-Huber distance)",
                     _c.one_of("feature", "pixel", "pseudo_huber"), resume="fixed"),
        discriminator_weight=F(0.2, "weight w_D of the GAN term in the generator's loss (times the adaptive weight)",
                               _c.at_least(0)),
        adaptive_weight=F(True, "scale the GAN term by lambda = ||dL_rec/dW|| / ||dL_G/dW|| at G's last ResBlock "
                          "convolution (clipped to [0.01, 10]); false: lambda = 1"),
        separate_update=F(False, "split the generator step into a reconstruction update and a GAN update (the "
                          "official 256 and 512 px setting)"),
        recon_discriminator=F(False, "add a second discriminator that tells reals from G's reconstructions of their "
                              "own latents (the official 512 px setting)", resume="fixed"),
        recon_discriminator_weight=F(0.5, "weight of the reconstruction discriminator's GAN term (times its own "
                                     "adaptive weight)", _c.at_least(0)),
    ),
    "train": common.train_group(
        run_dir="runs/stage2", total_steps=600000,
        lr_generator=F(8e-6, "learning rate of the generator (RAdam)", _c.at_least(0)),
        lr_discriminator=F(2e-3, "learning rate of the discriminator heads (RAdam)", _c.at_least(0)),
        monitor_interval=F(0, "steps between Frechet distances of --monitor_network features, EMA samples vs real "
                           "images (logged as monitor/fd_<network>; a cheap signal, not FID); 0: off",
                           _c.at_least(0), resume="free"),
        monitor_samples=F(256, "samples (and real images) per monitor measurement", _c.at_least(2), resume="free"),
        monitor_network=F("random_conv", "feature network of the monitor (a name of --feature_networks' list)",
                          resume="free"),
    ),
}

PAPER = dict(feature_networks=("deit_base_distilled_patch16_224", "tf_efficientnet_lite0"), precision="bf16",
             num_workers=8, cache_images=False, save_interval=10000, preview_interval=10000)
# CPU recipes on the bundled digits (16 px teacher). Short runs need far larger learning rates than the paper's.
BUNDLED = dict(recon_loss="pseudo_huber", d_channel_scale=0.25, lr_discriminator=1e-3, ema_rates=(0.99,),
               total_steps=1000, global_batch_size=32, save_interval=200, preview_interval=200, log_interval=50,
               monitor_interval=100, monitor_samples=200)
PRESETS = {
    "mnist16": dict(BUNDLED, image_size=16, feature_networks=("tf_efficientnet_lite0",), feature_resolution=64,
                    d_norm="group", discriminator_weight=6.0, lr_generator=2e-3),
    "mnist16to32": dict(BUNDLED, image_size=32, grow_factor=2, activate_from=4, refit_head=True,
                        feature_networks=("random_conv",), discriminator_weight=1.0, lr_generator=1e-3,
                        total_steps=850),
    # The paper's ImageNet settings (docs/method.md 6), corrected: the official 64->64 recipe trains nothing.
    # Names: the data, the latents' resolution and (growth) the generator's output resolution.
    "imagenet64": dict(PAPER, image_size=64, discriminator_weight=0.2, global_batch_size=96),
    "imagenet64to128": dict(PAPER, image_size=128, grow_factor=2, activate_from=9, discriminator_weight=1.0,
                            global_batch_size=256),
    "imagenet64to256": dict(PAPER, image_size=256, grow_factor=2, activate_from=9, discriminator_weight=1.0,
                            separate_update=True, adaptive_weight=False, global_batch_size=360),
    "imagenet64to512": dict(PAPER, image_size=512, grow_factor=2, activate_from=9, discriminator_weight=1.0,
                            separate_update=True, adaptive_weight=False, global_batch_size=512, use_checkpoint=True,
                            recon_discriminator=True),
}
# CIFAR-10 (commands/quickstart_cifar10.sh): the digits' stage 2 at GAN weight 1 (at the digits' 6 the generator
# collapsed to one image on photos: recall 0.002, reconstruction 14 dB); growth with stage 2's discriminator (lite0 at
# 64 px, GroupNorm heads), whose ImageNet features read photos, at the growth weight of the digits.
PRESETS["cifar16"] = dict(PRESETS["mnist16"], discriminator_weight=1.0)
PRESETS["cifar16to32"] = dict(PRESETS["mnist16to32"], feature_networks=("tf_efficientnet_lite0",),
                              feature_resolution=64, d_norm="group", total_steps=600)

CONSTRAINTS = {}  # relations between flags: none


class PaGoDAObjective(Objective):
    """PaGoDA's distillation objective (stages 2 and 3; stage 3 is this objective with a grown generator and
    high-resolution images: a config, not a new loop). For an encoded pair (z_data, x) of class y:

        L_G = L_rec(G(z_data, y), x) + w_D * lambda * L_adv(G(z, y)),    z ~ N(0, sigma_max^2 I)

    lambda the adaptive weight at G's last ResBlock conv (losses.adaptive_weight; 1 with `adaptive` off). The
    discriminator phase, on its own batch, is the GAN loss on reals against fresh fakes, with the same DiffAugment
    parameters on both. Even steps are generator phases, odd steps discriminator phases, as in the official loop.
    `separate_update` (the official 256/512 setting) splits the generator phase into a reconstruction update and an
    adversarial one, whose lambda uses the reconstruction gradient norm measured just before. A `recon_adversary`
    (the official 512 setting) adds w_r * lambda_r * L_adv(D_r(G(z_data, y))), lambda_r the adaptive weight against
    L_rec, and its discriminator D_r (reals against reconstructions) updates right after every generator phase.
    """

    def __init__(self, *, generator, adversary, reconstruction, discriminator_weight, adaptive, separate_update,
                 recon_adversary, recon_discriminator_weight, sigma_max, sigma_data, ema_rates, lineage):
        self.generator, self.reconstruction = generator, reconstruction
        self.adversary, self.recon_adversary, self.discriminator = adversary, recon_adversary, adversary.discriminator
        self.players = {"generator": generator, "discriminator": adversary.player}
        if recon_adversary is not None:
            self.recon_discriminator = recon_adversary.discriminator
            self.players["recon_discriminator"] = recon_adversary.player
        self.w_D, self.w_r = discriminator_weight, recon_discriminator_weight
        self.adaptive, self.separate_update = adaptive, separate_update
        self.sigma_max, self.sigma_data = sigma_max, sigma_data
        self._ema_rates, self.lineage = tuple(ema_rates), dict(lineage or {})  # lineage: the teacher it descends from
        self._rec_grad_norm = None  # ||dL_rec/dW|| of the reconstruction update, for the adversarial one after it

    def phases(self, step):
        if step % 2:
            return ["discriminator"]
        g = ["generator:rec", "generator:gan"] if self.separate_update else ["generator"]
        return g + (["recon_discriminator"] if self.recon_adversary is not None else [])

    def _g(self, net, z, y):
        return generate(net, z, y, sigma_max=self.sigma_max, sigma_data=self.sigma_data).float()

    def _prior(self, z_like, generator):
        return torch.randn(z_like.shape, device=z_like.device, generator=generator) * self.sigma_max

    def losses(self, phase, nets, batch, *, step, generator):
        x, y, z = batch["x"], batch.get("y"), batch["z"]
        if phase == "discriminator":
            with torch.no_grad():
                x_fake = self._g(self.generator, self._prior(z, generator), y)
            return self.adversary.discriminator_terms(nets["discriminator"], x, x_fake, y, d_step=step // 2,
                                                      generator=generator)
        if phase == "recon_discriminator":
            with torch.no_grad():
                x_rec = self._g(self.generator, z, y)
            terms = self.recon_adversary.discriminator_terms(nets["recon_discriminator"], x, x_rec, y, d_step=1,
                                                             generator=generator)
            return {"loss": terms["loss"], "logits_real": terms["logits_real"], "logits_rec": terms["logits_fake"]}
        return self.generator_losses(phase, nets["generator"], batch, generator)

    def generator_losses(self, phase, net, batch, generator):
        """L_G's terms ("generator"), or its reconstruction ("generator:rec") or adversarial ("generator:gan") half.
        G runs once on the data latents and the prior latents together: one DDP forward per backward."""
        x, y, z = batch["x"], batch.get("y"), batch["z"]
        want_rec, want_gan = phase != "generator:gan", phase != "generator:rec"
        latents = ([z] if want_rec else []) + ([self._prior(z, generator)] if want_gan else [])
        out = self._g(net, torch.cat(latents), None if y is None else torch.cat([y] * len(latents))).split(len(z))
        last, n = self.generator.adaptive_weight_layer().weight, len(z)
        terms, loss, rec = {}, 0.0, None
        if want_rec:
            rec = self.reconstruction(out[0], x, generator=generator)
            terms.update(rec=rec.detach(), psnr=psnr(out[0].detach().clamp(-1, 1), x))
            loss = rec
            if self.recon_adversary is not None:
                recon_gan = self.recon_adversary.generator_term(out[0], y, generator=generator)
                lam_r = adaptive_weight(rec, recon_gan, last)
                terms.update(recon_gan=recon_gan.detach(), recon_adaptive_weight=lam_r.expand(n))
                loss = loss + self.w_r * lam_r * recon_gan
        if want_gan:
            gan_term = self.adversary.generator_term(out[-1], y, generator=generator)
            lam = self.adaptive_lambda(rec, gan_term, last)
            at_clamp = ((lam >= gan.ADAPTIVE_CLIP[1]) | (lam <= gan.ADAPTIVE_CLIP[0])).float()
            terms.update(gan=gan_term.detach(), adaptive_weight=lam.expand(n), adaptive_at_clamp=at_clamp.expand(n))
            loss = loss + self.w_D * lam * gan_term
        elif self.adaptive:
            self._rec_grad_norm = weight_grad_norm(rec, last)
        return dict(terms, loss=loss)

    def adaptive_lambda(self, rec, gan_term, last):
        """lambda for L_adv: against `rec`, or (a separate adversarial update, rec None) against the reconstruction
        gradient norm of the update before; 1 when off or when no such norm was measured."""
        if not self.adaptive or (rec is None and self._rec_grad_norm is None):
            return torch.ones((), device=gan_term.device)
        return adaptive_weight(rec, gan_term, last, rec_norm=None if rec is not None else self._rec_grad_norm,
                               clip=gan.ADAPTIVE_CLIP)

    def ema_rates(self, player):
        return self._ema_rates if player == "generator" else ()

    def export_sidecar(self, player):
        if player != "generator":
            return None
        return dict(generator_sidecar(self.generator, sigma_max=self.sigma_max, sigma_data=self.sigma_data),
                    **self.lineage)

    def state_dict(self):  # the reconstruction's frozen projections (the discriminator's travel with its player)
        return {"reconstruction": [net.state_dict() for net in getattr(self.reconstruction, "feature_networks", [])]}

    def load_state_dict(self, state):
        nets, saved = getattr(self.reconstruction, "feature_networks", []), state.get("reconstruction", [])
        if len(saved) != len(nets):
            raise ValueError(f"checkpoint has {len(saved)} reconstruction feature networks, this run {len(nets)}")
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
        logger.log(f"training from block {activate_from} on: {trainable:,} trainable, {frozen:,} frozen parameters")
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


def build_adversaries(config, *, image_size, num_classes, device):
    """The projected discriminator's Adversary and, with --recon_discriminator, the reconstruction one's (its own
    heads over the same frozen feature networks: the official 512 setting); augmentation shared."""
    augment = gan.augment_from_flags(config)
    d = gan.discriminator_from_flags(config, image_size=image_size, num_classes=num_classes, device=device)
    adversary = gan.Adversary(d, augment=augment, gan_loss=config["gan_loss"], r1_gamma=config["r1_gamma"],
                              r1_interval=config["r1_interval"])
    if not config["recon_discriminator"]:
        return adversary, None, augment
    d_r = gan.discriminator_from_flags(config, image_size=image_size, num_classes=num_classes, device=device,
                                       stream="recon_discriminator", nets=dict(d.feature_networks))
    return adversary, gan.Adversary(d_r, augment=augment, gan_loss=config["gan_loss"]), augment


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
    backbone, origin = build_generator(config["init_from"], device=device,
                                       **{k: config[k] for k in GENERATOR_FLAGS})
    dist_util.sync_params(backbone.parameters())
    image_size = config["image_size"] or backbone.config["output_size"]
    if image_size != backbone.config["output_size"]:
        raise ValueError(f"--image_size {image_size} differs from the generator's output size "
                         f"{backbone.config['output_size']}")
    pairs = PairDataset(config["latent_dir"], image_size=image_size, data_dir=config["data_dir"] or None,
                        shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                        cache=config["cache_images"])
    check_pairs(pairs, backbone, origin, latent_dir=config["latent_dir"], init_from=config["init_from"])
    num_classes = backbone.config["num_classes"]
    sampled_classes = real_classes(num_classes, origin["null_class"])
    adversary, recon_adversary, augment = build_adversaries(config, image_size=image_size, num_classes=num_classes,
                                                            device=device)
    objective = PaGoDAObjective(generator=backbone, adversary=adversary,
                                reconstruction=gan.reconstruction_from_flags(config, augment, device),
                                discriminator_weight=config["discriminator_weight"],
                                adaptive=config["adaptive_weight"], separate_update=config["separate_update"],
                                recon_adversary=recon_adversary,
                                recon_discriminator_weight=config["recon_discriminator_weight"],
                                sigma_max=config["sigma_max"], sigma_data=config["sigma_data"],
                                ema_rates=config["ema_rates"], lineage=common.export_lineage(origin))
    preview = GeneratorPreview(interval=config["preview_interval"], num_classes=sampled_classes,
                               sigma_max=config["sigma_max"], sigma_data=config["sigma_data"])
    optim = {"generator": OptimSpec(name="radam", lr=config["lr_generator"]),
             "discriminator": OptimSpec(name="radam", lr=config["lr_discriminator"]),
             "recon_discriminator": OptimSpec(name="radam", lr=config["lr_discriminator"])}
    return common.Run(objective=objective, data=common.stream(pairs, config, labels=bool(num_classes)), optim=optim,
                      callbacks=[preview] + monitor_callbacks(config, pairs, device, sampled_classes),
                      record=dict(generator=backbone.config, num_pairs=len(pairs)),
                      title=TITLES[config["grow_factor"] > 1])
