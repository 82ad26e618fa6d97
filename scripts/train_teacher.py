"""Stage 1: train an EDM diffusion teacher (ADM UNet + EDM preconditioning) at the low resolution.

    python scripts/train_teacher.py --preset mnist16 --run_dir runs/teacher
    mpiexec -n 8 python scripts/train_teacher.py --preset imagenet64 --data_dir /data/imagenet/train ...

Rerunning the same command resumes from the latest training state in --run_dir. Exports:
<run_dir>/exports/denoiser_ema<rate>.pt (+ .json sidecar), the teacher path for every later stage.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda import dist_util, logger, random_util, script_util  # noqa: E402
from pagoda.amp import PRECISION_CHOICES, resolve_precision  # noqa: E402
from pagoda.callbacks import TeacherPreview  # noqa: E402
from pagoda.image_datasets import ImageDataset, infinite_batches, open_source, source_identity  # noqa: E402
from pagoda.losses import EDMLoss  # noqa: E402
from pagoda.model_io import load_backbone  # noqa: E402
from pagoda.objectives import DiffusionObjective  # noqa: E402
from pagoda.train_util import OptimSpec, TrainLoop  # noqa: E402
from pagoda.unet import UNetModel, imagenet64_config  # noqa: E402


def data_defaults():
    return dict(data_dir="bundled:mnist", image_size=16, random_flip=False, num_workers=0, cache_images=True,
                on_error="raise")


def model_defaults():
    return dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
                num_head_channels=32, dropout=0.0, class_cond=True, use_checkpoint=False, init_from="")


def loss_defaults():
    return dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, label_dropout=0.0)


def train_defaults():
    return dict(run_dir="runs/teacher", global_batch_size=64, microbatch=0, optimizer="adam", lr=1e-3,
                weight_decay=0.0, warmup_steps=200, ema_rates=(0.999,), precision="auto", total_steps=3000,
                log_interval=100, save_interval=500, keep_checkpoints=2, seed=0, preview_interval=500,
                preview_steps=18, allow_config_change=False)


PRESETS = {
    # The CPU recipe on the bundled digits (commands/stage1_teacher_mnist.sh): a 1.0M-parameter teacher at 16 px.
    "mnist16": dict(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, lr=2e-3, warmup_steps=100,
                    total_steps=1000),
    # EDM (Karras et al. 2022, table 7) ImageNet-64 settings on the ADM architecture: batch 4096, lr 2e-4 with a
    # 10 Mimg warm-up, dropout 0.1, fp16, EMA half-life 50 Mimg (0.5 ** (4096 / 50e6) per step), 2500 Mimg.
    "imagenet64": dict(image_size=64, random_flip=True, cache_images=False, num_workers=8, model_channels=192,
                       channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(2, 4, 8),
                       num_head_channels=64, dropout=0.1, global_batch_size=4096, lr=2e-4, warmup_steps=2441,
                       ema_rates=(0.99994,), precision="fp16", total_steps=610352, log_interval=100,
                       save_interval=5000, preview_interval=5000, preview_steps=40),
}

GROUPS = {"data": data_defaults(), "model": model_defaults(), "loss": loss_defaults(), "train": train_defaults()}


_c = script_util
CONSTRAINTS = {
    "image_size": _c.at_least(1), "num_workers": _c.at_least(0), "on_error": _c.one_of("raise", "skip"),
    "model_channels": _c.at_least(1), "channel_mult": _c.each(_c.at_least(1), nonempty=True),
    "num_res_blocks": _c.at_least(1), "attention_resolutions": _c.each(_c.at_least(1)),
    "num_head_channels": _c.at_least(1), "dropout": _c.in_range(0, 1), "P_mean": _c.finite,
    "P_std": _c.greater_than(0), "sigma_data": _c.greater_than(0), "sigma_min": _c.greater_than(0),
    "sigma_max": _c.greater_than(0), ("sigma_min", "sigma_max"): _c.increasing, "label_dropout": _c.in_range(0, 1),
    "global_batch_size": _c.at_least(1), "microbatch": _c.at_least(0), "optimizer": _c.one_of("adam", "adamw", "radam"),
    "lr": _c.at_least(0), "weight_decay": _c.at_least(0), "warmup_steps": _c.at_least(0),
    "ema_rates": _c.each(_c.in_range(0, 1)), "precision": _c.one_of(*PRECISION_CHOICES),
    "total_steps": _c.at_least(1), "log_interval": _c.at_least(1), "save_interval": _c.at_least(1),
    "keep_checkpoints": _c.at_least(1), "seed": _c.at_least(0), "preview_interval": _c.at_least(0),
    "preview_steps": _c.at_least(1),
}


def build_backbone(args, num_classes):
    if args.init_from:
        backbone, _ = load_backbone(args.init_from, expect_kind="denoiser")
        return backbone
    classes = (num_classes + (1 if args.label_dropout > 0 else 0)) if args.class_cond else None
    if args.image_size == 64 and args.model_channels == 192 and classes == 1000:
        cfg = dict(imagenet64_config(), dropout=args.dropout, use_checkpoint=args.use_checkpoint)
        return UNetModel(**cfg)
    return UNetModel(image_size=args.image_size, model_channels=args.model_channels,
                     channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
                     attention_resolutions=args.attention_resolutions, num_head_channels=args.num_head_channels,
                     dropout=args.dropout, num_classes=classes, use_checkpoint=args.use_checkpoint)


def main(argv=None):
    parser = script_util.create_parser(GROUPS, description=__doc__, presets=PRESETS, constraints=CONSTRAINTS)
    args = script_util.parse_args(parser, PRESETS, argv)
    script_util.handle_dry_run(args)
    device = dist_util.setup_dist()
    random_util.seed_all(args.seed, "run", dist_util.get_rank())
    logger.configure(args.run_dir)
    source = open_source(args.data_dir, on_error=args.on_error)
    if source.num_skipped:
        logger.log(f"on_error=skip: skipped {source.num_skipped} files while indexing {args.data_dir}")
    dataset = ImageDataset(source, image_size=args.image_size, random_flip=args.random_flip,
                           shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                           on_error=args.on_error, cache=args.cache_images)
    with random_util.seeded(args.seed, "teacher"):
        backbone = build_backbone(args, source.num_classes).to(device)
    dist_util.sync_params(backbone.parameters())
    args.precision = resolve_precision(args.precision, device, log=logger.log)
    null_class = source.num_classes if (args.label_dropout > 0 and args.class_cond) else None
    loss = EDMLoss(P_mean=args.P_mean, P_std=args.P_std, sigma_data=args.sigma_data,
                   label_dropout=args.label_dropout, null_class=null_class)
    objective = DiffusionObjective(backbone=backbone, loss=loss, sigma_data=args.sigma_data,
                                   sigma_min=args.sigma_min, sigma_max=args.sigma_max, ema_rates=args.ema_rates)
    per_rank = args.global_batch_size // dist_util.get_world_size()

    def data(start_batch):
        for batch in infinite_batches(dataset, batch_size=per_rank, seed=args.seed, start_batch=start_batch,
                                      num_workers=args.num_workers):
            yield batch if args.class_cond else {"x": batch["x"]}

    config = script_util.write_config(args.run_dir, args, allow_change=args.allow_config_change,
                                      dataset=source.origin, dataset_identity=source_identity(source),
                                      num_images=len(source), num_classes=source.num_classes,
                                      unet=backbone.config)
    preview = TeacherPreview(interval=args.preview_interval, num_steps=args.preview_steps,
                             num_classes=source.num_classes if args.class_cond else None)
    loop = TrainLoop(objective=objective, data=data, run_dir=args.run_dir,
                     global_batch_size=args.global_batch_size, microbatch=args.microbatch,
                     optim={"denoiser": OptimSpec(name=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                                  warmup_steps=args.warmup_steps)},
                     precision=args.precision, total_steps=args.total_steps, log_interval=args.log_interval,
                     save_interval=args.save_interval, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                     callbacks=[preview], config=config, title="stage 1: EDM teacher")
    loop.run()
    if args.on_error == "skip":  # images found unreadable while training (DataLoader workers count their own)
        logger.log(f"on_error=skip: skipped {dataset.num_skipped} unreadable images in this process")
    logger.log(f"done: teacher exports in {os.path.join(args.run_dir, 'exports')}")
    dist_util.cleanup()


if __name__ == "__main__":
    main()
