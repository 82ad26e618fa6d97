"""Stage 1: an EDM diffusion teacher, D(x, sigma, y) = precond(ADM UNet), trained with the EDM loss.

    python scripts/train.py --method diffusion --preset mnist16 --run_dir runs/teacher

The trained player is the backbone itself, so its exports (`exports/denoiser_ema<rate>.pt`) are plain ADM state
dicts, the format of the released edm_imagenet64_ema.pt.
"""

import torch

from .. import dist_util, logger, random_util, script_util
from ..callbacks import TeacherPreview
from ..image_datasets import dataset_record, source_identity
from ..dimr import CONFIGS as DIMR_CONFIGS
from ..dimr import TIME_CONDITIONING, DiMR, dimr_config, multiscale_weights
from ..losses import EDMLoss, MultiScaleEDMLoss
from ..model_io import load_backbone
from ..precond import Denoiser, teacher_sidecar
from ..train_util import Objective, OptimSpec
from ..unet import UNetModel, imagenet64_config
from . import common

TITLE = "diffusion: stage 1 EDM teacher"
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": common.image_data_group(image_size=F(16, "side in pixels the training images are resized and "
                                                 "centre-cropped to (ADM preprocessing): the teacher's resolution",
                                                 _c.at_least(1), resume="fixed")),
    "model": dict(
        model_channels=F(64, "base channel count of the UNet (level i has model_channels * channel_mult[i])",
                         _c.at_least(1), resume="fixed"),
        channel_mult=F((1, 2, 2), "comma list of channel multipliers, one UNet level per entry (each level after the "
                       "first halves the resolution)", _c.each(_c.at_least(1), nonempty=True), resume="fixed"),
        num_res_blocks=F(2, "residual blocks per UNet level", _c.at_least(1), resume="fixed"),
        attention_resolutions=F((2, 4), "comma list of downsampling factors whose levels get self-attention (2: the "
                                "level at half the image side); empty: none", _c.each(_c.at_least(1)),
                                resume="fixed"),
        num_head_channels=F(32, "channels per attention head", _c.at_least(1), resume="fixed"),
        dropout=F(0.0, "dropout probability in the residual blocks; raise it when the teacher overfits small data",
                  _c.in_range(0, 1)),
        class_cond=F(True, "condition the UNet on the class labels of the data (false: unconditional)",
                     resume="fixed"),
        use_checkpoint=F(False, "gradient checkpointing in the UNet: activations recomputed in the backward pass, "
                         "less memory for more compute, same results", resume="free"),
        init_from=F("", "start from these weights: a denoiser export (<run_dir>/exports/denoiser_ema<rate>.pt) or the "
                    "released edm_imagenet64_ema.pt, whose architecture then replaces the model flags; '': random "
                    "initial weights"),
    ),
    "architecture": dict(
        arch=F("unet", "the teacher's network: 'unet' (ADM, the --model_channels ... flags) or 'dimr' (the "
                       "multi-resolution DiMR backbone, the --dimr_* flags)", _c.one_of("unet", "dimr"),
               resume="fixed"),
        dimr_layout=F("p16_2r", "DiMR branch layout (pagoda/dimr.py CONFIGS): p16_2r / p16_3r / p32_3r are the "
                                "~1M-parameter pixel layouts, xl2r_256 / xl3r_512 the ImageNet latent ones; the "
                                "grids follow --image_size", _c.one_of(*DIMR_CONFIGS), resume="fixed"),
        dimr_time=F("td", "how time enters DiMR: 'td' (time-dependent norms, DiMR's) or 'scale_shift' (the UNet's "
                          "embedding MLP projected to each norm's scale and shift: the ablation)",
                    _c.one_of(*TIME_CONDITIONING), resume="fixed"),
        multiscale_loss=F(True, "with --arch dimr: DiMR's multi-scale loss over every branch's output (weights "
                                "1/4, (1/2,) 1, coarsest first; losses.MultiScaleEDMLoss); false: the EDM loss on "
                                "the finest output only"),
    ),
    "loss": dict(
        P_mean=F(-1.2, "mean of ln(sigma) of the training noise levels (EDM's log-normal)", _c.finite),
        P_std=F(1.2, "standard deviation of ln(sigma) of the training noise levels", _c.greater_than(0)),
        sigma_data=F(0.5, "standard deviation of the data in [-1, 1] the preconditioning assumes (EDM c_skip, "
                     "c_out, c_in)", _c.greater_than(0)),
        sigma_min=F(0.002, "smallest noise level of the exported denoiser (its sampling grid starts at sigma_max and "
                    "ends here)", _c.greater_than(0)),
        sigma_max=F(80.0, "largest noise level of the exported denoiser: the prior N(0, sigma_max^2) that sampling "
                    "and the PF-ODE latents start from", _c.greater_than(0)),
        label_dropout=F(0.0, "fraction of labels replaced by an extra null class during training, so that the "
                        "teacher supports classifier-free guidance; 0: no null class", _c.in_range(0, 1),
                        resume="fixed"),
    ),
    "train": common.train_group(
        run_dir="runs/teacher", global_batch_size=64, total_steps=3000, save_interval=500, preview_interval=500,
        optimizer=F("adam", "optimiser of the denoiser: adam, adamw (decoupled weight decay) or radam",
                    _c.one_of("adam", "adamw", "radam")),
        lr=F(1e-3, "learning rate of the denoiser (after the warm-up)", _c.at_least(0)),
        weight_decay=F(0.0, "weight decay of the optimiser (L2 for adam and radam, decoupled for adamw)",
                       _c.at_least(0)),
        warmup_steps=F(200, "optimiser steps over which the learning rate rises linearly from lr / warmup_steps to "
                       "lr; 0: none", _c.at_least(0)),
        preview_steps=F(18, "Heun steps of the preview sampler (2 * steps - 1 network evaluations)", _c.at_least(1),
                        resume="free"),
    ),
}
PRESETS = {
    # The CPU recipe on the bundled digits (commands/stage1_teacher_mnist.sh): a 1.0M-parameter teacher at 16 px.
    "mnist16": dict(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, lr=2e-3, warmup_steps=100,
                    total_steps=1000, label_dropout=0.1),
    # The same recipe with the 1.0M-parameter DiMR P16-2R (transformer at 8 px, ConvNeXt at 16 px) as the teacher.
    "mnist16_dimr": dict(arch="dimr", dimr_layout="p16_2r", lr=2e-3, warmup_steps=100, total_steps=1000,
                         label_dropout=0.1),
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
CONSTRAINTS = {("sigma_min", "sigma_max"): _c.increasing}


class DiffusionObjective(Objective):
    """The EDM loss on the denoiser; its loss is also logged by sigma quartile of the training distribution."""

    def __init__(self, *, backbone, loss, sigma_data, sigma_min, sigma_max, ema_rates, dataset=None):
        self.players = {"denoiser": backbone}
        self.dataset = dataset
        self.loss = loss
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
                                   ema_rates=config["ema_rates"], dataset=dataset_record(source))
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
