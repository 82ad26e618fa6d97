"""The amortised one-step encoder E(x, y) -> z (the official `pgd_encoder` mode; pagoda.amortised_encoder): a UNet
of the teacher's architecture, initialised from the teacher's weights and evaluated at one fixed noise level,
regressing the stored PF-ODE latents z / sigma_max of their images with MSE + L1. Latents encoded from
x + start_sigma n (the bundled ones) are regressed from that same noised image (n re-drawn from the encoder's seed
of each image, encoding.start_state), at level start_sigma; --noised_input false feeds clean x at --encoder_sigma
instead (the official input, which cannot see the noise the latent mostly consists of).

    python scripts/train.py --method encoder --preset mnist16 \
        --init_from runs/teacher/exports/denoiser_ema0.999.pt --latent_dir runs/latents --run_dir runs/encoder

The (image, latent) pairs are the ones stage 2 trains on (same latent folder); latents of another teacher are
refused. Export: <run_dir>/exports/encoder_ema<rate>.pt, kind 'encoder' (model_io.load_encoder), whose sidecar
records the teacher's content hash, image size, classes, sigma_max and the latents' solver settings;
scripts/apply.py --encoder amortised --encoder_path FILE uses it in place of the ODE solve.
"""

from .. import dist_util, logger, script_util
from ..amortised_encoder import LATENT_SETTINGS, encoder_sidecar, predict, regression_loss
from ..encoding import start_seed
from ..image_datasets import check_labels
from ..model_io import load_teacher, real_classes
from ..pair_datasets import PairDataset, check_latent_teacher
from ..random_util import StackedRandomGenerator
from ..train_util import Objective, OptimSpec
from ..unet import UNetModel
from . import common

TITLE = "encoder: amortised one-step encoder"
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": common.PAIR_DATA_FLAGS,
    "model": dict(
        init_from=F("", "the teacher export whose latents the encoder learns; the encoder starts as a copy of its "
                    "UNet; required"),
        noised_input=F(True, "for latents encoded from x + start_sigma n: feed that same noised image at level "
                       "start_sigma; false: clean x at --encoder_sigma (the official input)"),
        encoder_sigma=F(0.002, "noise level the encoder's UNet is evaluated at on clean images (latents without "
                        "start_sigma, or --noised_input false)", _c.greater_than(0)),
        dropout=F(0.0, "dropout probability in the encoder's residual blocks", _c.in_range(0, 1)),
    ),
    "train": common.train_group(
        run_dir="runs/encoder", global_batch_size=32, ema_rates=(0.999,), total_steps=10000,
        lr=F(1e-4, "learning rate of the encoder (Adam)", _c.at_least(0)),
    ),
}
PRESETS = {
    # commands/encoder_mnist.sh: the 16 px bundled teacher and its 2000 encoded digits
    "mnist16": dict(global_batch_size=32, lr=5e-4, ema_rates=(0.99,), total_steps=2000, log_interval=100,
                    save_interval=500, preview_interval=0),
}
CONSTRAINTS = {}  # relations between flags: none


class EncoderObjective(Objective):
    """One player, the encoder's backbone F: loss MSE + L1 of F(c_in(s) x, s, y) against z / sigma_max."""

    def __init__(self, *, backbone, encoder_sigma, input_sigma, sigma_max, sigma_data, ema_rates, lineage):
        self.backbone = backbone
        self.players = {"encoder": backbone}
        self.encoder_sigma, self.sigma_max, self.sigma_data = encoder_sigma, sigma_max, sigma_data
        self.input_sigma = input_sigma  # 0: clean x; else x + input_sigma n with the latent's own n (batch["n"])
        self._ema_rates = tuple(ema_rates)
        self.lineage = lineage  # teacher hash, null class, the latents' solver settings

    def phases(self, step):
        return ["encoder"]

    def losses(self, phase, nets, batch, *, step, generator):
        x, z, y = batch["x"], batch["z"], batch.get("y")
        if self.input_sigma:
            x = x + self.input_sigma * batch["n"]
        pred = predict(nets["encoder"], x, y, encoder_sigma=self.encoder_sigma, sigma_data=self.sigma_data)
        target = z.float() / self.sigma_max
        err = (pred - target).detach().flatten(1)
        return {"loss": regression_loss(pred, target),
                "rel_err": err.norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)}

    def ema_rates(self, player):
        return self._ema_rates

    def export_sidecar(self, player):
        return encoder_sidecar(self.backbone, encoder_sigma=self.encoder_sigma, input_sigma=self.input_sigma,
                               sigma_max=self.sigma_max,
                               sigma_data=self.sigma_data, **self.lineage)


class NoisedPairs(PairDataset):
    """(image, latent, label) pairs plus `n`, the start noise the ODE encoder added to the image (seed 2 * source
    index + flip, encoding.start_state), so the encoder can be shown the very input the latent came from."""

    def load(self, i, *, flip=False):
        item = super().load(i, flip=flip)
        flip = flip if self.random_flip else self.flips[0]
        index = self.images.indices[self.positions[i]]
        item["n"] = StackedRandomGenerator("cpu", [start_seed(index, flip)]).randn((1, *item["x"].shape))[0]
        return item


def latent_settings(manifest):
    """The solver settings the latents were encoded with (the encoder approximates exactly that map)."""
    return {k: manifest.get(k) for k in LATENT_SETTINGS}


def check_encoder_pairs(pairs, teacher, *, latent_dir, init_from):
    """Refuse latents of another resolution or teacher, or labels the teacher does not know."""
    size = teacher.backbone.config["image_size"]
    if pairs.manifest["image_size"] != size:
        raise ValueError(f"latents in {latent_dir} are {pairs.manifest['image_size']} px but the teacher "
                         f"{init_from} works at {size} px")
    check_latent_teacher(pairs.manifest, teacher.backbone.content_sha256, latent_dir=latent_dir, model=init_from)
    num_classes = real_classes(teacher.backbone.config["num_classes"], teacher.null_class)
    if num_classes:
        check_labels([pairs.images.labels[k] for k in pairs.positions], num_classes,
                     data=pairs.manifest["data_dir"], model=f"the teacher {init_from}")


def build_backbone(teacher, *, dropout, device):
    """A trainable copy of the teacher's backbone (every embedding row, the null class's included)."""
    backbone = UNetModel(**dict(teacher.backbone.config, dropout=dropout))
    backbone.load_state_dict(teacher.backbone.state_dict())
    return backbone.to(device).requires_grad_(True).train()


def build(config, device):
    if not config["init_from"]:
        raise ValueError("--init_from is required: the teacher export whose latents the encoder learns")
    teacher = load_teacher(config["init_from"])
    backbone = build_backbone(teacher, dropout=config["dropout"], device=device)
    dist_util.sync_params(backbone.parameters())
    pairs = NoisedPairs(config["latent_dir"], image_size=teacher.backbone.config["image_size"],
                        data_dir=config["data_dir"] or None, shard=dist_util.get_rank(),
                        num_shards=dist_util.get_world_size(), cache=config["cache_images"])
    check_encoder_pairs(pairs, teacher, latent_dir=config["latent_dir"], init_from=config["init_from"])
    lineage = dict(teacher_sha256=teacher.backbone.content_sha256, null_class=teacher.null_class,
                   latent_settings=latent_settings(pairs.manifest))
    start_sigma = float(pairs.manifest.get("start_sigma") or 0.0)
    input_sigma = start_sigma if config["noised_input"] else 0.0
    encoder_sigma = input_sigma or config["encoder_sigma"]
    objective = EncoderObjective(backbone=backbone, encoder_sigma=encoder_sigma, input_sigma=input_sigma,
                                 sigma_max=teacher.sigma_max, sigma_data=teacher.sigma_data,
                                 ema_rates=[float(r) for r in config["ema_rates"]], lineage=lineage)
    logger.log(f"amortised encoder: {len(pairs)} (image, latent) pairs from {config['latent_dir']}, the teacher's "
               f"UNet at sigma {encoder_sigma} on {'x + %g n' % input_sigma if input_sigma else 'clean x'}")
    labels = bool(teacher.backbone.config["num_classes"])
    optim = {"encoder": OptimSpec(name="adam", lr=config["lr"])}
    record = dict(encoder=backbone.config, num_pairs=len(pairs), **lineage)
    return common.Run(objective=objective, data=common.stream(pairs, config, labels=labels), optim=optim,
                      record=record, title=TITLE)
