"""Stage 1: an EDM diffusion teacher, D(x, sigma, y) = precond(ADM UNet), trained with the EDM loss.

    python scripts/train.py --method diffusion --preset mnist16 --run_dir runs/teacher

The trained player is the backbone itself, so its exports (`exports/denoiser_ema<rate>.pt`) are plain ADM state
dicts, the format of the released edm_imagenet64_ema.pt.
"""

import torch

from .. import dist_util, logger, random_util, script_util
from ..callbacks import TeacherPreview
from ..image_datasets import dataset_record, source_identity
from ..losses import EDMLoss
from ..model_io import load_backbone
from ..precond import Denoiser, teacher_sidecar
from ..train_util import Objective, OptimSpec
from ..unet import UNetModel, imagenet64_config
from . import common

TITLE = "stage 1: EDM teacher"
GROUPS = {
    "data": common.image_data_group(image_size=16),
    "model": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
                  num_head_channels=32, dropout=0.0, class_cond=True, use_checkpoint=False, init_from=""),
    "loss": dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, label_dropout=0.0),
    "train": common.train_group(run_dir="runs/teacher", global_batch_size=64, optimizer="adam", lr=1e-3,
                                weight_decay=0.0, warmup_steps=200, total_steps=3000, save_interval=500,
                                preview_interval=500, preview_steps=18),
}
PRESETS = {
    # The CPU recipe on the bundled digits (commands/stage1_teacher_mnist.sh): a 1.0M-parameter teacher at 16 px.
    "mnist16": dict(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, lr=2e-3, warmup_steps=100,
                    total_steps=1000, label_dropout=0.1),
    # The CPU recipe on CIFAR-10 (commands/quickstart_cifar10.sh): the 32 px photos at 16 px, mirrored at random (a
    # mirrored photo is a photo of the same class). Colour and texture get twice the digits' channels at 8 px
    # (channel_mult 1,2,2: 30.7 GFLOP a step against the digits teacher's 17.9, stage1_teacher_mnist.sh's count).
    # Not sized by a width/depth sweep against domain FD yet.
    "cifar16": dict(data_dir="bundled:cifar10", random_flip=True, model_channels=32, channel_mult=(1, 2, 2),
                    num_res_blocks=1, lr=2e-3, warmup_steps=100, total_steps=1500, label_dropout=0.1),
    # EDM (Karras et al. 2022, table 7) ImageNet-64 settings on the ADM architecture: batch 4096, lr 2e-4 with a
    # 10 Mimg warm-up, dropout 0.1, fp16, EMA half-life 50 Mimg (0.5 ** (4096 / 50e6) per step), 2500 Mimg.
    "imagenet64": dict(image_size=64, random_flip=True, cache_images=False, num_workers=8, model_channels=192,
                       channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(2, 4, 8),
                       num_head_channels=64, dropout=0.1, global_batch_size=4096, lr=2e-4, warmup_steps=2441,
                       ema_rates=(0.99994,), precision="fp16", total_steps=610352, log_interval=100,
                       save_interval=5000, preview_interval=5000, preview_steps=40),
}
_c = script_util
CONSTRAINTS = {
    **common.TRAIN_CONSTRAINTS, **common.IMAGE_DATA_CONSTRAINTS, "image_size": _c.at_least(1),
    "model_channels": _c.at_least(1), "channel_mult": _c.each(_c.at_least(1), nonempty=True),
    "num_res_blocks": _c.at_least(1), "attention_resolutions": _c.each(_c.at_least(1)),
    "num_head_channels": _c.at_least(1), "dropout": _c.in_range(0, 1), "P_mean": _c.finite,
    "P_std": _c.greater_than(0), "sigma_data": _c.greater_than(0), "sigma_min": _c.greater_than(0),
    "sigma_max": _c.greater_than(0), ("sigma_min", "sigma_max"): _c.increasing, "label_dropout": _c.in_range(0, 1),
    "optimizer": _c.one_of("adam", "adamw", "radam"), "lr": _c.at_least(0), "weight_decay": _c.at_least(0),
    "warmup_steps": _c.at_least(0), "preview_steps": _c.at_least(1),
}


class DiffusionObjective(Objective):
    """The EDM loss on the denoiser; its loss is also logged by sigma quartile of the training distribution."""

    def __init__(self, *, backbone, loss=None, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, ema_rates=(0.999,),
                 dataset=None):
        self.players = {"denoiser": backbone}
        self.dataset = dataset
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
        sidecar = teacher_sidecar(self.players["denoiser"], null_class=self.loss.null_class, **self.precond)
        # what it was trained on, so that later stages can refuse latents of another domain by name
        return dict(sidecar, dataset=self.dataset) if self.dataset else sidecar


def build_backbone(*, num_classes, image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                   num_head_channels, dropout=0.0, use_checkpoint=False, init_from=""):
    """The teacher's UNet: loaded from `init_from`, the ADM ImageNet-64 network when the settings are its own,
    else a UNet of these settings. `num_classes` counts the null class (None: unconditional)."""
    if init_from:
        backbone, _ = load_backbone(init_from, expect_kind="denoiser")
        return backbone
    if image_size == 64 and model_channels == 192 and num_classes == 1000:
        return UNetModel(**dict(imagenet64_config(), dropout=dropout, use_checkpoint=use_checkpoint))
    return UNetModel(image_size=image_size, model_channels=model_channels, channel_mult=channel_mult,
                     num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                     num_head_channels=num_head_channels, dropout=dropout, num_classes=num_classes,
                     use_checkpoint=use_checkpoint)


ARCHITECTURE = ("image_size", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                "num_head_channels", "dropout", "use_checkpoint", "init_from")


def preset_architecture(preset):
    """The ARCHITECTURE flags of `preset` (the defaults where it sets none): build_backbone's arguments."""
    flags = {k: v for group in GROUPS.values() for k, v in group.items()}
    flags.update(PRESETS[preset])
    return {k: flags[k] for k in ARCHITECTURE}


def build(config, device):
    source, dataset = common.image_dataset(config, image_size=config["image_size"])
    guided = config["label_dropout"] > 0 and config["class_cond"]
    classes = (source.num_classes + guided) if config["class_cond"] else None
    with random_util.seeded(config["seed"], "teacher"):
        backbone = build_backbone(num_classes=classes, **{k: config[k] for k in ARCHITECTURE}).to(device)
    dist_util.sync_params(backbone.parameters())
    loss = EDMLoss(P_mean=config["P_mean"], P_std=config["P_std"], sigma_data=config["sigma_data"],
                   label_dropout=config["label_dropout"], null_class=source.num_classes if guided else None)
    objective = DiffusionObjective(backbone=backbone, loss=loss, sigma_data=config["sigma_data"],
                                   sigma_min=config["sigma_min"], sigma_max=config["sigma_max"],
                                   ema_rates=config["ema_rates"], dataset=dataset_record(source))
    preview = TeacherPreview(interval=config["preview_interval"], num_steps=config["preview_steps"],
                             num_classes=source.num_classes if config["class_cond"] else None)
    optim = {"denoiser": OptimSpec(name=config["optimizer"], lr=config["lr"], weight_decay=config["weight_decay"],
                                   warmup_steps=config["warmup_steps"])}

    def finish():
        if config["on_error"] == "skip":  # images found unreadable while training (DataLoader workers count theirs)
            logger.log(f"on_error=skip: skipped {dataset.num_skipped} unreadable images in this process")

    record = dict(dataset=source.origin, dataset_identity=source_identity(source), num_images=len(source),
                  num_classes=source.num_classes, unet=backbone.config)
    return common.Run(objective=objective, data=common.stream(dataset, config, labels=config["class_cond"]),
                      optim=optim, callbacks=[preview], record=record, title=TITLE, finish=finish)
