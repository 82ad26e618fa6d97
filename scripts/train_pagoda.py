"""PaGoDA stages 2 and 3: distil a one-step generator from the teacher, or grow it to 2x resolution.

    # stage 2: G starts as a copy of the teacher, trained on (latent, image) pairs at the teacher's resolution
    python scripts/train_pagoda.py --preset mnist16 --init_from runs/teacher/exports/denoiser_ema0.999.pt \
        --latent_dir runs/latents --run_dir runs/stage2
    # stage 3: grow the stage-2 generator to 2x, train on the same latents and 2x images
    python scripts/train_pagoda.py --preset mnist16to32 --init_from runs/stage2/exports/generator_ema0.999.pt \
        --latent_dir runs/latents --run_dir runs/stage3

Rerunning the same command resumes. Exports: <run_dir>/exports/generator_ema<rate>.pt (+ .json sidecar).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda import dist_util, logger, random_util, script_util  # noqa: E402
import torch  # noqa: E402

from pagoda.amp import PRECISION_CHOICES, resolve_precision  # noqa: E402
from pagoda.callbacks import GeneratorMetric, GeneratorPreview  # noqa: E402
from pagoda.diffaug import DiffAugment  # noqa: E402
from pagoda.discriminator import HEAD_NORMS, ProjectedDiscriminator  # noqa: E402
from pagoda.features import MIN_FEATURE_RESOLUTION, create_feature_network  # noqa: E402
from pagoda.generator import freeze_for_growth, grow_generator  # noqa: E402
from pagoda.image_datasets import check_labels, infinite_batches  # noqa: E402
from pagoda.losses import PixelLoss, PseudoHuberLoss, ReconstructionLoss  # noqa: E402
from pagoda.model_io import load_generator_or_teacher_backbone  # noqa: E402
from pagoda.objectives import PaGoDAObjective  # noqa: E402
from pagoda.pair_datasets import PairDataset, check_latent_teacher  # noqa: E402
from pagoda.train_util import OptimSpec, TrainLoop  # noqa: E402

GROUPS = {
    "data": dict(latent_dir="runs/latents", data_dir="", image_size=0, num_workers=0, cache_images=True),
    "model": dict(init_from="", grow_factor=1, activate_from=-1, channel_mult_high=(), refit_head=False,
                  use_checkpoint=False),
    "loss": dict(recon_loss="feature", feature_networks=("random_conv",), feature_weights=(), feature_seed=0,
                 discriminator_weight=0.2, adaptive_weight=True, separate_update=False, gan_loss="hinge",
                 r1_gamma=0.0, recon_discriminator=False, recon_discriminator_weight=0.5,
                 translation_ratio=0.125, cutout_ratio=0.2, d_channel_scale=1.0, d_norm="batch", feature_resolution=0,
                 teacher_feature_sigma=0.5, sigma_max=80.0, sigma_data=0.5),
    "train": dict(run_dir="runs/stage2", global_batch_size=32, microbatch=0, lr_generator=8e-6,
                  lr_discriminator=2e-3, ema_rates=(0.999,), precision="auto", total_steps=600000,
                  log_interval=100, save_interval=1000, keep_checkpoints=2, seed=0, preview_interval=1000,
                  monitor_interval=0, monitor_samples=256, monitor_network="random_conv", allow_config_change=False),
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


_c = script_util
CONSTRAINTS = {
    "image_size": _c.at_least(0), "num_workers": _c.at_least(0), "grow_factor": _c.one_of(1, 2, 4, 8),
    "activate_from": _c.at_least(-1), "channel_mult_high": _c.each(_c.as_number(_c.greater_than(0))),
    "recon_loss": _c.one_of("feature", "pixel", "pseudo_huber"), "feature_seed": _c.at_least(0),
    "discriminator_weight": _c.at_least(0), "gan_loss": _c.one_of("hinge", "nonsaturating"),
    "r1_gamma": _c.at_least(0), "recon_discriminator_weight": _c.at_least(0),
    "translation_ratio": _c.in_range(0, 1, high_included=True), "cutout_ratio": _c.in_range(0, 1, high_included=True),
    "d_channel_scale": _c.greater_than(0), "d_norm": _c.one_of(*HEAD_NORMS),
    "feature_resolution": _c.zero_or_at_least(MIN_FEATURE_RESOLUTION), "teacher_feature_sigma": _c.at_least(0),
    "sigma_max": _c.greater_than(0), "sigma_data": _c.greater_than(0), "global_batch_size": _c.at_least(1),
    "microbatch": _c.at_least(0),
    "lr_generator": _c.at_least(0), "lr_discriminator": _c.at_least(0), "ema_rates": _c.each(_c.in_range(0, 1)),
    "precision": _c.one_of(*PRECISION_CHOICES), "total_steps": _c.at_least(1), "log_interval": _c.at_least(1),
    "save_interval": _c.at_least(1), "keep_checkpoints": _c.at_least(1), "seed": _c.at_least(0),
    "preview_interval": _c.at_least(0), "monitor_interval": _c.at_least(0), "monitor_samples": _c.at_least(2),
}


def build_generator(args, device):
    """(backbone, origin): the generator backbone, the teacher's (stage 2) or a previous generator's, grown for
    stage 3 (with --refit_head, its output head re-fitted so that it starts as the previous generator up-sampled);
    origin: the content hash of the teacher it descends from (None for a generator that predates the record) and
    the teacher's null class."""
    if not args.init_from:
        raise ValueError("--init_from is required: a teacher export (stage 2) or a generator export (stage 3)")
    backbone, side = load_generator_or_teacher_backbone(args.init_from)
    origin = {"teacher_sha256": backbone.content_sha256 if side["kind"] == "denoiser" else side.get("teacher_sha256"),
              "null_class": side.get("null_class")}
    backbone = backbone.to(device)
    if args.grow_factor > 1:
        backbone, new_keys, fit = grow_generator(
            backbone, factor=args.grow_factor, channel_mult_high=[float(m) for m in args.channel_mult_high] or None,
            refit_head=args.refit_head, seed=args.seed, sigma_max=args.sigma_max, sigma_data=args.sigma_data)
        logger.log(f"grew {side['kind']} from {args.init_from} to {backbone.config['output_size']} px: "
                   f"{len(new_keys)} new tensors")
        if fit:
            logger.log(f"re-fitted the output head: PSNR against the bicubically up-sampled parent "
                       f"{fit[0]:.2f} -> {fit[1]:.2f} dB")
    if args.use_checkpoint:  # gradient checkpointing is a run setting, not part of the exported architecture
        for module in backbone.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = True
    backbone.requires_grad_(True).train()
    if args.activate_from >= 0:
        trainable, frozen = freeze_for_growth(backbone, activate_from=args.activate_from)
        logger.log(f"training output_blocks[{args.activate_from}:] + out: {trainable:,} trainable, "
                   f"{frozen:,} frozen parameters")
    return backbone, origin


def check_pairs(args, pairs, backbone, origin):
    """Refuse latents this generator cannot use: another resolution, another teacher, unknown labels."""
    if pairs.manifest["image_size"] != backbone.config["image_size"]:
        raise ValueError(f"latents in {args.latent_dir} are {pairs.manifest['image_size']} px but the generator takes "
                         f"{backbone.config['image_size']} px latents")
    check_latent_teacher(pairs.manifest, origin["teacher_sha256"], latent_dir=args.latent_dir, model=args.init_from)
    num_classes = backbone.config["num_classes"]
    if num_classes:
        num_classes -= origin["null_class"] is not None
        check_labels([pairs.images.labels[k] for k in pairs.positions], num_classes,
                     data=pairs.manifest["data_dir"], model=f"the generator from {args.init_from}")


def feature_networks(args, seed):
    """The frozen feature networks of --feature_networks (D's, and the feature reconstruction loss's), images resized
    to --feature_resolution before the resizing ones (0: each network's own size; 'teacher' keeps its own)."""
    if len(args.feature_weights) > len(args.feature_networks):
        raise ValueError(f"--feature_weights has {len(args.feature_weights)} entries for "
                         f"{len(args.feature_networks)} --feature_networks")
    weights = list(args.feature_weights) + [None] * len(args.feature_networks)
    return {name: create_feature_network(name, weights_path=w or None, seed=seed,
                                         teacher_sigma=args.teacher_feature_sigma, input_size=args.feature_resolution)
            for name, w in zip(args.feature_networks, weights)}


def build_discriminators(args, image_size, num_classes, device):
    """The projected discriminator and, with --recon_discriminator, the reconstruction one (its own heads over the
    same frozen feature networks: the official 512 setting). Heads come from --seed, the frozen networks from
    --feature_seed, so every rank builds the same ones."""
    with random_util.seeded(args.seed, "discriminator"):
        discriminator = ProjectedDiscriminator(feature_networks=feature_networks(args, args.feature_seed),
                                               image_size=image_size, num_classes=num_classes,
                                               channel_scale=args.d_channel_scale, norm=args.d_norm).to(device)
    dist_util.sync_params(discriminator.parameters())
    dist_util.check_same_across_ranks(discriminator.feature_networks, what="discriminator feature networks")
    recon_discriminator = None
    if args.recon_discriminator:
        with random_util.seeded(args.seed, "recon_discriminator"):
            recon_discriminator = ProjectedDiscriminator(feature_networks=dict(discriminator.feature_networks),
                                                         image_size=image_size, num_classes=num_classes,
                                                         channel_scale=args.d_channel_scale,
                                                         norm=args.d_norm).to(device)
        dist_util.sync_params(recon_discriminator.parameters())
    return discriminator, recon_discriminator


def build_reconstruction(args, augment, device):
    if args.recon_loss == "pixel":
        return PixelLoss()
    if args.recon_loss == "pseudo_huber":
        return PseudoHuberLoss()
    if args.recon_loss != "feature":
        raise ValueError(f"--recon_loss must be feature, pixel or pseudo_huber, got {args.recon_loss!r}")
    # its own instances, seeded apart from the discriminator's, identical on every rank
    nets = {k: v.to(device) for k, v in feature_networks(args, args.feature_seed + 1).items()}
    for name, net in nets.items():
        dist_util.check_same_across_ranks(net, what=f"reconstruction feature network {name}")
    return ReconstructionLoss(feature_networks=nets, augment=augment)


def monitor_callbacks(args, pairs, device, num_classes):
    """--monitor_interval: Frechet distance of pooled features of a frozen pagoda feature network between EMA
    samples and real images (logged as monitor/fd_<network>; a cheap training signal, not FID)."""
    if not args.monitor_interval:
        return []
    from evaluations.metrics import feature_stats, monitor_fd

    net = create_feature_network(args.monitor_network, seed=12345).to(device)

    def pooled(x):
        return net(x.to(device))[-1].float().mean(dim=(2, 3)).cpu()

    real = torch.stack([pairs.load(i)["x"] for i in range(min(len(pairs), args.monitor_samples))])
    real_stats = feature_stats(real, pooled)
    return [GeneratorMetric(interval=args.monitor_interval, num_samples=args.monitor_samples, num_classes=num_classes,
                            sigma_max=args.sigma_max, sigma_data=args.sigma_data,
                            metric_fn=lambda fake: monitor_fd(real_stats, fake, pooled, name=args.monitor_network))]


def main(argv=None):
    parser = script_util.create_parser(GROUPS, description=__doc__, presets=PRESETS, constraints=CONSTRAINTS)
    args = script_util.parse_args(parser, PRESETS, argv)
    script_util.handle_dry_run(args)
    device = dist_util.setup_dist()
    random_util.seed_all(args.seed, "run", dist_util.get_rank())
    logger.configure(args.run_dir)
    backbone, origin = build_generator(args, device)
    dist_util.sync_params(backbone.parameters())
    args.precision = resolve_precision(args.precision, device, log=logger.log)
    image_size = args.image_size or backbone.config["output_size"]
    if image_size != backbone.config["output_size"]:
        raise ValueError(f"--image_size {image_size} differs from the generator's output size "
                         f"{backbone.config['output_size']}")
    pairs = PairDataset(args.latent_dir, image_size=image_size, data_dir=args.data_dir or None,
                        shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(), cache=args.cache_images)
    check_pairs(args, pairs, backbone, origin)
    # the generator's exports name their teacher, so stage 3 can check the latents it is given
    lineage = {"teacher_sha256": origin["teacher_sha256"]} if origin["teacher_sha256"] else None
    num_classes = backbone.config["num_classes"]
    augment = DiffAugment(translation_ratio=args.translation_ratio, cutout_ratio=args.cutout_ratio)
    discriminator, recon_discriminator = build_discriminators(args, image_size, num_classes, device)
    objective = PaGoDAObjective(generator=backbone, discriminator=discriminator,
                                reconstruction=build_reconstruction(args, augment, device), augment=augment,
                                discriminator_weight=args.discriminator_weight, adaptive=args.adaptive_weight,
                                separate_update=args.separate_update, gan_loss=args.gan_loss,
                                r1_gamma=args.r1_gamma, recon_discriminator=recon_discriminator,
                                recon_discriminator_weight=args.recon_discriminator_weight,
                                sigma_max=args.sigma_max, sigma_data=args.sigma_data,
                                ema_rates=args.ema_rates, lineage=lineage)
    per_rank = args.global_batch_size // dist_util.get_world_size()

    def data(start_batch):
        for batch in infinite_batches(pairs, batch_size=per_rank, seed=args.seed, start_batch=start_batch,
                                      num_workers=args.num_workers):
            yield batch if num_classes else {k: v for k, v in batch.items() if k != "y"}

    config = script_util.write_config(args.run_dir, args, allow_change=args.allow_config_change,
                                      generator=backbone.config, num_pairs=len(pairs))
    preview = GeneratorPreview(interval=args.preview_interval, num_classes=num_classes, sigma_max=args.sigma_max,
                               sigma_data=args.sigma_data)
    optim = {"generator": OptimSpec(name="radam", lr=args.lr_generator),
             "discriminator": OptimSpec(name="radam", lr=args.lr_discriminator),
             "recon_discriminator": OptimSpec(name="radam", lr=args.lr_discriminator)}
    stage = "stage 3: grown generator" if args.grow_factor > 1 else "stage 2: one-step generator"
    loop = TrainLoop(objective=objective, data=data, run_dir=args.run_dir, global_batch_size=args.global_batch_size,
                     microbatch=args.microbatch, optim=optim, precision=args.precision, total_steps=args.total_steps,
                     log_interval=args.log_interval, save_interval=args.save_interval,
                     keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                     callbacks=[preview] + monitor_callbacks(args, pairs, device, num_classes), config=config,
                     title=stage)
    loop.run()
    logger.log(f"done: generator exports in {os.path.join(args.run_dir, 'exports')}")
    dist_util.cleanup()


if __name__ == "__main__":
    main()
