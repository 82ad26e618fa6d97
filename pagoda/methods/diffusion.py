"""Stage 1: an EDM diffusion teacher, D(x, sigma, y) = precond(ADM UNet), trained with the EDM loss.

    python scripts/train.py --method diffusion --preset mnist16 --run_dir runs/teacher

The trained player is the backbone itself, so its exports (`exports/denoiser_ema<rate>.pt`) are plain ADM state
dicts, the format of the released edm_imagenet64_ema.pt.
"""

import torch

from .. import dist_util, logger, random_util, script_util
from ..callbacks import TeacherPreview
from ..image_datasets import source_identity
from ..dimr import CONFIGS as DIMR_CONFIGS
from ..dimr import TIME_CONDITIONING, DiMR, dimr_config, multiscale_weights
from ..losses import EDMLoss, MultiScaleEDMLoss
from ..model_io import load_backbone
from ..precond import Denoiser, teacher_sidecar
from ..train_util import Objective, OptimSpec
from ..unet import UNetModel, imagenet64_config
from . import common

TITLE = "stage 1: EDM teacher"
_c, _F = script_util, script_util.Flag
GROUPS = {
    "data": common.image_data_group(image_size=16),
    "model": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
                  num_head_channels=32, dropout=0.0, class_cond=True, use_checkpoint=False, init_from=""),
    "architecture": dict(
        arch=_F("unet", "the teacher's network: 'unet' (ADM, the --model_channels ... flags) or 'dimr' (the "
                        "multi-resolution DiMR backbone, the --dimr_* flags)", _c.one_of("unet", "dimr"), "fixed"),
        dimr_layout=_F("p16_2r", "DiMR branch layout (pagoda/dimr.py CONFIGS): p16_2r / p16_3r / p32_3r are the "
                                 "~1M-parameter pixel layouts, xl2r_256 / xl3r_512 the ImageNet latent ones; the "
                                 "grids follow --image_size", _c.one_of(*DIMR_CONFIGS), "fixed"),
        dimr_time=_F("td", "how time enters DiMR: 'td' (time-dependent norms, DiMR's) or 'scale_shift' (the UNet's "
                           "embedding MLP projected to each norm's scale and shift: the ablation)",
                     _c.one_of(*TIME_CONDITIONING), "fixed"),
        multiscale_loss=_F(True, "with --arch dimr: DiMR's multi-scale loss over every branch's output (weights "
                                 "1/4, (1/2,) 1, coarsest first; losses.MultiScaleEDMLoss); false: the EDM loss on "
                                 "the finest output only")),
    "loss": dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, label_dropout=0.0),
    "train": common.train_group(run_dir="runs/teacher", global_batch_size=64, optimizer="adam", lr=1e-3,
                                weight_decay=0.0, warmup_steps=200, total_steps=3000, save_interval=500,
                                preview_interval=500, preview_steps=18),
}
PRESETS = {
    # The CPU recipe on the bundled digits (commands/stage1_teacher_mnist.sh): a 1.0M-parameter teacher at 16 px.
    "mnist16": dict(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, lr=2e-3, warmup_steps=100,
                    total_steps=1000, label_dropout=0.1),
    # The same recipe with the 1.0M-parameter DiMR P16-2R (transformer at 8 px, ConvNeXt at 16 px) as the teacher.
    "mnist16_dimr": dict(arch="dimr", dimr_layout="p16_2r", lr=2e-3, warmup_steps=100, total_steps=1000,
                         label_dropout=0.1),
    # EDM (Karras et al. 2022, table 7) ImageNet-64 settings on the ADM architecture: batch 4096, lr 2e-4 with a
    # 10 Mimg warm-up, dropout 0.1, fp16, EMA half-life 50 Mimg (0.5 ** (4096 / 50e6) per step), 2500 Mimg.
    "imagenet64": dict(image_size=64, random_flip=True, cache_images=False, num_workers=8, model_channels=192,
                       channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(2, 4, 8),
                       num_head_channels=64, dropout=0.1, global_batch_size=4096, lr=2e-4, warmup_steps=2441,
                       ema_rates=(0.99994,), precision="fp16", total_steps=610352, log_interval=100,
                       save_interval=5000, preview_interval=5000, preview_steps=40),
}
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


def build_backbone(*, num_classes, image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                   num_head_channels, dropout=0.0, use_checkpoint=False, init_from="", arch="unet",
                   dimr_layout="p16_2r", dimr_time="td"):
    """The teacher's network: loaded from `init_from`; else DiMR of `dimr_layout` at `image_size` (arch 'dimr'),
    the ADM ImageNet-64 network when the settings are its own, or a UNet of these settings. `num_classes` counts
    the null class (None: unconditional)."""
    if init_from:
        backbone, _ = load_backbone(init_from, expect_kind="denoiser")
        return backbone
    if arch == "dimr":
        return DiMR(**dimr_config(dimr_layout, image_size=image_size, num_classes=num_classes or 0,
                                  time_conditioning=dimr_time))
    if image_size == 64 and model_channels == 192 and num_classes == 1000:
        return UNetModel(**dict(imagenet64_config(), dropout=dropout, use_checkpoint=use_checkpoint))
    return UNetModel(image_size=image_size, model_channels=model_channels, channel_mult=channel_mult,
                     num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                     num_head_channels=num_head_channels, dropout=dropout, num_classes=num_classes,
                     use_checkpoint=use_checkpoint)


ARCHITECTURE = ("image_size", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                "num_head_channels", "dropout", "use_checkpoint", "init_from", "arch", "dimr_layout", "dimr_time")


def preset_architecture(preset):
    """The ARCHITECTURE flags of `preset` (the defaults where it sets none): build_backbone's arguments."""
    flags = {k: v for group in GROUPS.values() for k, v in script_util.defaults(group).items()}
    flags.update(PRESETS[preset])
    return {k: flags[k] for k in ARCHITECTURE}


def build(config, device):
    source, dataset = common.image_dataset(config, image_size=config["image_size"])
    guided = config["label_dropout"] > 0 and config["class_cond"]
    classes = (source.num_classes + guided) if config["class_cond"] else None
    with random_util.seeded(config["seed"], "teacher"):
        backbone = build_backbone(num_classes=classes, **{k: config[k] for k in ARCHITECTURE}).to(device)
    dist_util.sync_params(backbone.parameters())
    loss_args = dict(P_mean=config["P_mean"], P_std=config["P_std"], sigma_data=config["sigma_data"],
                     label_dropout=config["label_dropout"], null_class=source.num_classes if guided else None)
    if isinstance(backbone, DiMR) and config["multiscale_loss"]:
        loss = MultiScaleEDMLoss(weights=multiscale_weights(len(backbone.branches)), **loss_args)
    else:
        loss = EDMLoss(**loss_args)
    objective = DiffusionObjective(backbone=backbone, loss=loss, sigma_data=config["sigma_data"],
                                   sigma_min=config["sigma_min"], sigma_max=config["sigma_max"],
                                   ema_rates=config["ema_rates"])
    preview = TeacherPreview(interval=config["preview_interval"], num_steps=config["preview_steps"],
                             num_classes=source.num_classes if config["class_cond"] else None)
    optim = {"denoiser": OptimSpec(name=config["optimizer"], lr=config["lr"], weight_decay=config["weight_decay"],
                                   warmup_steps=config["warmup_steps"])}

    def finish():
        if config["on_error"] == "skip":  # images found unreadable while training (DataLoader workers count theirs)
            logger.log(f"on_error=skip: skipped {dataset.num_skipped} unreadable images in this process")

    record = dict(dataset=source.origin, dataset_identity=source_identity(source), num_images=len(source),
                  num_classes=source.num_classes, **{backbone.SIDECAR_KEY: backbone.config})
    return common.Run(objective=objective, data=common.stream(dataset, config, labels=config["class_cond"]),
                      optim=optim, callbacks=[preview], record=record, title=TITLE, finish=finish)
