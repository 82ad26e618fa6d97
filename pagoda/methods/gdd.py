"""GDD and GDD-I (Zheng & Yang 2024, "Diffusion Models Are Innate One-Step Generators"; docs/method.md 7.1):
the teacher's own denoiser run once at sigma_max, fine-tuned by a GAN alone.

    python scripts/train.py --method gdd --preset mnist16 --init_from runs/teacher/exports/denoiser_ema0.999.pt \
        --run_dir runs/gdd                      # GDD
    python scripts/train.py --method gdd --preset mnist16 --freeze convs ... --run_dir runs/gdd_i   # GDD-I

G(z, y) = D(sigma_max * n; sigma_max, y) = c_skip z + c_out F(c_in z, sigma_max, y): EDM's output scaling, not
PaGoDA's raw backbone (c_skip(80) ~ 4e-5, c_out(80) ~ 0.5, so G starts at the teacher's one-step estimate of x0).
No reconstruction term and no latent pairs: the data stream holds real images only, and the teacher is used only
as the initialisation. Each step is one generator update, then one discriminator update (each phase on its own
batch of the stream). Non-saturating loss over the projected discriminator's heads, lazy R1 on the reals (gamma
1e-4 every 16 D steps, scaled by 16), Adam betas (0, 0.99) for both players and, as GDD does for its
discriminator, StyleGAN2's lazy-regularisation correction on D (lr x 16/17, betas ^ 16/17), no DiffAugment.
GDD-I (`--freeze convs`) freezes the 3x3 convolutions of every residual block (in_layers.2, out_layers.3), the
non-residual up/down-sampling convolutions and the attention output projections; norms, embedding affine maps,
1x1 skips, qkv, the noise and label embeddings, the input and the output convolutions train (frozen_convs).
Exports: <run_dir>/exports/generator_ema<rate>.pt, a generator whose sidecar says `output: denoised`.
"""

import torch

from .. import dist_util, logger, script_util
from ..callbacks import GeneratorPreview
from ..generator import generate, generator_sidecar
from ..image_datasets import check_labels, source_identity
from ..model_io import load_backbone, real_classes
from ..train_util import Objective, OptimSpec
from ..unet import AttentionBlock, ResBlock, NearestUpConv, StridedConvDown
from . import common, gan

TITLE = "gdd: GAN fine-tuning of the teacher"
FREEZE = ("none", "convs")
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": common.image_data_group(),
    "model": dict(
        init_from=F("", "the teacher export GDD fine-tunes (<run_dir>/exports/denoiser_ema<rate>.pt); required"),
        freeze=F("none", "none (GDD: train every weight) or convs (GDD-I: freeze the 3x3 convolutions of the residual "
                 "blocks, the up/down-sampling convolutions and the attention output projections)", _c.one_of(*FREEZE)),
        sigma_max=F(80.0, "the noise level G runs the teacher's denoiser at: G(z, y) = D(z; sigma_max, y) with z ~ "
                    "N(0, sigma_max^2)", _c.greater_than(0)),
    ),
    "discriminator": script_util.with_defaults(
        gan.DISCRIMINATOR_FLAGS, feature_networks=("deit_base_distilled_patch16_224", "tf_efficientnet_lite0"),
        gan_loss="nonsaturating", r1_gamma=1e-4, r1_interval=16, diffaug=False),
    "train": common.train_group(
        run_dir="runs/gdd", global_batch_size=512, total_steps=19532, save_interval=1000,
        lr_generator=F(8e-6, "learning rate of the generator (Adam)", _c.at_least(0)),
        lr_discriminator=F(4e-5, "learning rate of the discriminator heads (Adam; with --lazy_r1_adam scaled for "
                           "lazy R1)", _c.at_least(0)),
        adam_beta1=F(0.0, "Adam beta1 of both players (GDD: 0, no momentum)", _c.in_range(0, 1)),
        adam_beta2=F(0.99, "Adam beta2 of both players", _c.in_range(0, 1)),
        lazy_r1_adam=F(True, "StyleGAN2's correction for lazy R1 on the discriminator's Adam: lr and betas scaled by "
                       "c = r1_interval / (r1_interval + 1) (lr * c, beta ** c); only with --r1_gamma > 0"),
    ),
}
PRESETS = {
    # CPU recipe on the bundled digits: the discriminator that works there (pagoda.py's mnist16: EfficientNet-lite0
    # at 64 px, GroupNorm heads at a quarter width); 500 steps = 500 G + 500 D updates, PaGoDA stage 2's budget.
    "mnist16": dict(feature_networks=("tf_efficientnet_lite0",), feature_resolution=64, d_norm="group",
                    d_channel_scale=0.25, global_batch_size=32, lr_generator=1e-5, lr_discriminator=1e-3,
                    ema_rates=(0.99,), total_steps=500, save_interval=100, preview_interval=100, log_interval=25),
    # GDD's ImageNet-64 train.sh: batch 512, lr G 8e-6 / D 4e-5, 10 Mimg (19,532 steps), DeiT-B + lite0 at 224.
    "imagenet64": dict(image_size=64, random_flip=True, cache_images=False, num_workers=8, precision="bf16",
                       ema_rates=(0.9999,), preview_interval=1000),
}
CONSTRAINTS = {}  # relations between flags: none


def frozen_convs(backbone):
    """GDD-I's frozen set on the ADM UNet, by module type (not by name substrings, which depend on naming): the
    3x3 convolutions of every ResBlock (in_layers.2, out_layers.3; up/down ResBlocks included), the plain
    up/down-sampling convolutions, and every attention block's output projection. Sorted parameter names."""
    convs = []
    for prefix, module in backbone.named_modules():
        if isinstance(module, ResBlock):
            convs += [(f"{prefix}.in_layers.2", module.in_layers[2]), (f"{prefix}.out_layers.3", module.out_layers[3])]
        elif isinstance(module, AttentionBlock):
            convs.append((f"{prefix}.proj_out", module.proj_out))
        elif isinstance(module, (StridedConvDown, NearestUpConv)):
            convs.append((f"{prefix}.{'op' if isinstance(module, StridedConvDown) else 'conv'}",
                          module.op if isinstance(module, StridedConvDown) else module.conv))
    return sorted(f"{name}.{p}" for name, conv in convs for p, _ in conv.named_parameters())


def freeze(backbone, kind):
    """Apply --freeze: 'none' (GDD) trains everything, 'convs' (GDD-I) freezes frozen_convs(backbone)."""
    if kind not in FREEZE:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {kind!r}")
    backbone.requires_grad_(True)
    if kind == "convs":
        params = dict(backbone.named_parameters())
        for name in frozen_convs(backbone):
            params[name].requires_grad_(False)
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters())
    return total - frozen, frozen


class GDDObjective(Objective):
    """One generator update (L_G on fresh samples), then one discriminator update (L_D + lazy R1), every step."""

    def __init__(self, *, generator, adversary, sigma_max, sigma_data, ema_rates, lineage):
        self.generator, self.adversary = generator, adversary
        self.discriminator = adversary.discriminator
        self.players = {"generator": generator, "discriminator": adversary.player}
        self.sigma_max, self.sigma_data = sigma_max, sigma_data
        self._ema_rates = tuple(ema_rates)
        self.lineage = dict(lineage or {})

    def phases(self, step):
        return ["generator", "discriminator"]

    def _fake(self, net, like, y, generator):
        z = torch.randn(like.shape, device=like.device, generator=generator) * self.sigma_max
        return generate(net, z, y, sigma_max=self.sigma_max, sigma_data=self.sigma_data, output="denoised").float()

    def losses(self, phase, nets, batch, *, step, generator):
        x, y = batch["x"], batch.get("y")
        if phase == "generator":
            gan_term = self.adversary.generator_term(self._fake(nets["generator"], x, y, generator), y,
                                                     generator=generator)
            return {"loss": gan_term, "gan": gan_term.detach()}
        with torch.no_grad():
            x_fake = self._fake(self.generator, x, y, generator)
        return self.adversary.discriminator_terms(nets["discriminator"], x, x_fake, y, d_step=step,
                                                  generator=generator)

    def ema_rates(self, player):
        return self._ema_rates if player == "generator" else ()

    def export_sidecar(self, player):
        if player != "generator":
            return None
        side = generator_sidecar(self.generator, sigma_max=self.sigma_max, sigma_data=self.sigma_data,
                                 output="denoised")
        return dict(side, **self.lineage)


def build_generator(init_from, *, freeze_kind, device):
    """(backbone, teacher sidecar): a trainable copy of the teacher export's backbone, frozen per --freeze."""
    if not init_from:
        raise ValueError("--init_from is required: the teacher export GDD fine-tunes")
    backbone, side = load_backbone(init_from, expect_kind="denoiser")
    backbone = backbone.to(device).train()
    trainable, frozen = freeze(backbone, freeze_kind)
    logger.log(f"GDD{'-I' if freeze_kind == 'convs' else ''} generator from {init_from}: {trainable:,} trainable, "
               f"{frozen:,} frozen parameters")
    return backbone, side


def build(config, device):
    backbone, side = build_generator(config["init_from"], freeze_kind=config["freeze"], device=device)
    dist_util.sync_params(backbone.parameters())
    size = backbone.config["image_size"]
    if config["image_size"] not in (0, size):
        raise ValueError(f"--image_size {config['image_size']} differs from the teacher's resolution {size}")
    source, dataset = common.image_dataset(config, image_size=size)
    num_classes = backbone.config["num_classes"]
    sampled_classes = real_classes(num_classes, side.get("null_class"))
    if sampled_classes:
        check_labels(source.labels, sampled_classes, data=config["data_dir"],
                     model=f"the teacher {config['init_from']}")
    d = gan.discriminator_from_flags(config, image_size=size, num_classes=num_classes, device=device)
    adversary = gan.Adversary(d, augment=gan.augment_from_flags(config), gan_loss=config["gan_loss"],
                              r1_gamma=config["r1_gamma"], r1_interval=config["r1_interval"])
    objective = GDDObjective(generator=backbone, adversary=adversary, sigma_max=config["sigma_max"],
                             sigma_data=side.get("sigma_data", 0.5), ema_rates=config["ema_rates"],
                             lineage=common.export_lineage({"teacher_sha256": backbone.content_sha256,
                                                                   "null_class": side.get("null_class")}))
    betas = (config["adam_beta1"], config["adam_beta2"])
    lr_d, betas_d = config["lr_discriminator"], betas
    if config["lazy_r1_adam"] and config["r1_gamma"] > 0:
        lr_d, betas_d = gan.lazy_regularised(lr_d, betas, config["r1_interval"])
    optim = {"generator": OptimSpec(name="adam", lr=config["lr_generator"], betas=betas),
             "discriminator": OptimSpec(name="adam", lr=lr_d, betas=betas_d)}
    preview = GeneratorPreview(interval=config["preview_interval"], num_classes=sampled_classes,
                               sigma_max=config["sigma_max"], sigma_data=side.get("sigma_data", 0.5),
                               output="denoised")
    record = dict(generator=backbone.config, dataset=source.origin, dataset_identity=source_identity(source),
                  num_images=len(source))
    return common.Run(objective=objective, data=common.stream(dataset, config, labels=bool(num_classes)),
                      optim=optim, callbacks=[preview], record=record, title=TITLE)
