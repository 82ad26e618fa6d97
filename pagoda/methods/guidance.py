"""Guidance distillation: a guidance-conditioned one-step generator G(z, y, w) fitted to the guided teacher's pairs
(z_w, y, w) -> x_w (pagoda.guided_pairs), starting from a trained generator (stage 2's, with or without a w input),
while its unguided point w = 1 is held where training found it.

    python scripts/train.py --method guidance --preset mnist16 \
        --init_from runs/stage2/exports/generator_ema0.99.pt --guided_pairs runs/guided/pairs --run_dir runs/guidance

Loss per step: L_rec(G(z_w, y, w), x_w) on a batch of pairs plus anchor_weight * L_rec(G(z, y', 1), G_0(z, y', 1))
on as many fresh prior latents z and uniform real classes y', G_0 the frozen starting generator, plus (with
histogram_weight > 0) histogram_weight * L_rec between the sorted pixel values of G(z_w, y, w) and of x_w (the
pair's contrast; see GuidanceObjective.histogram_term). Why a phase of its own rather than a term of stage 2: there
the pairs share each generator step with the GAN and the data reconstruction, and stage 2's budget (500 generator
updates on the bundled data) left G far short of the teacher at w > 1 (it fitted the pairs to 25.7 dB and guided like
a teacher at w ~ 2.7 when asked for 4). Here a step costs one generator forward and backward with no discriminator, and the anchor keeps
w = 1 (the adversarially trained point, which is not the teacher's: PaGoDA's generator is not a regression of the
teacher's samples) from drifting while the w path and the shared weights learn the guided map. A generator without a
w input gets one (zero last layer: it starts as G_0 at every w).

Export: <run_dir>/exports/generator_ema<rate>.pt, kind 'generator' with guidance_embed, the starting generator's
teacher hash and null class.
"""

import copy

import torch

from .. import dist_util, logger, script_util
from ..generator import generate, generator_sidecar, with_guidance_input
from ..guided_pairs import GuidedPairDataset, load_guided_pairs
from ..image_util import psnr
from ..model_io import load_backbone, real_classes
from ..pair_datasets import check_latent_teacher
from ..train_util import Objective, OptimSpec
from . import common, gan

TITLE = "guidance: guidance distillation"
F, _c = script_util.Flag, script_util
GROUPS = {
    "data": dict(
        guided_pairs=F("", "folder of the guided teacher's pairs (z_w, y, w) -> x_w (scripts/encode.py --direction "
                       "decode) that G(z, y, w) learns; required"),
        num_workers=common.IMAGE_DATA_FLAGS["num_workers"],
    ),
    "model": dict(init_from=F("", "the one-step generator export to add guidance to (stage 2's "
                              "exports/generator_ema<rate>.pt); also the frozen anchor G_0; required")),
    "loss": dict(
        recon_loss=F("pseudo_huber", "distance of the distillation, anchor and histogram terms: pixel (MSE) or "
                     "pseudo_huber (iCT's pseudo-Huber distance)", _c.one_of("pixel", "pseudo_huber"),
                     resume="fixed"),
        anchor_weight=F(1.0, "weight of the anchor term L_rec(G(z, y, 1), G_0(z, y, 1)) on fresh prior latents, "
                        "which holds w = 1 where stage 2 left it", _c.at_least(0)),
        censor_clamped=F(True, "no error where a pair's pixel sits at the clip bound +-1 and G overshoots it "
                         "(sampling clamps both alike)"),
        histogram_weight=F(0.0, "weight of the term between the sorted pixel values of G(z_w, y, w) and of x_w (the "
                           "pair's contrast); 0: off", _c.at_least(0)),
    ),
    "train": common.train_group(
        run_dir="runs/guidance", global_batch_size=32, ema_rates=(0.99,), total_steps=6000,
        lr=F(5e-4, "learning rate of the generator (Adam)", _c.at_least(0)),
        lr_schedule=F("linear", "linear: anneal to 0 over total_steps; constant", _c.one_of(*common.LR_SCHEDULES)),
    ),
}
PRESETS = {
    # commands/guided_mnist.sh: the bundled 16 px generator and its teacher's guided pairs
    "mnist16": dict(global_batch_size=32, lr=5e-4, ema_rates=(0.99,), total_steps=24000,
                    anchor_weight=0.3, histogram_weight=1.0, log_interval=200, save_interval=1000,
                    preview_interval=0),
}
CONSTRAINTS = {}  # relations between flags: none


def censored(x_hat, x, *, tol=1e-3):
    """x_hat with the overshoot removed where the target sits on the clip bound: a guided pair's x_w is the teacher's
    sample clamped to [-1, 1], so x_w = 1 only says the teacher's value was >= 1 and G's value above 1 (which sampling
    clamps to 1 as well) is no error there. Inside the bounds, and below a bound of +1, x_hat is unchanged (and keeps
    its gradient). Plain regression of the clamped targets pulls G's saturated pixels in towards the mean: G's samples
    then have the teacher's shapes but not its contrast (mapping G's pixel values onto the teacher's closes the gap
    in domain FD at high w)."""
    x_hat = torch.where(x >= 1.0 - tol, x_hat.clamp(max=1.0), x_hat)
    return torch.where(x <= -1.0 + tol, x_hat.clamp(min=-1.0), x_hat)


def sorted_pixels(x):
    """Each sample's pixel values sorted per channel (shape kept): its empirical value distribution, so that a
    pixel-wise loss between sorted_pixels(a) and sorted_pixels(b) is a 1-D transport distance between their
    histograms, zero when a is any rearrangement of b."""
    return x.flatten(2).sort(dim=-1).values.view_as(x)


class GuidanceObjective(Objective):
    """One player, G(z, y, w): distillation on the guided pairs and the w = 1 anchor to the frozen G_0."""

    def __init__(self, *, generator, anchor, reconstruction, anchor_weight, num_classes, sigma_max, sigma_data,
                 ema_rates, sidecar, censor_clamped, histogram_weight):
        self.generator, self.anchor = generator, anchor
        self.censor_clamped, self.histogram_weight = censor_clamped, histogram_weight
        self.players = {"generator": generator}
        self.reconstruction, self.anchor_weight = reconstruction, anchor_weight
        self.num_classes = num_classes  # real classes the anchor's labels are drawn from (None: unconditional)
        self.sigma_max, self.sigma_data = sigma_max, sigma_data
        self._ema_rates, self.sidecar = tuple(ema_rates), sidecar

    def phases(self, step):
        return ["generator"]

    def _g(self, net, z, y, w):
        return generate(net, z, y, w, sigma_max=self.sigma_max, sigma_data=self.sigma_data).float()

    def anchor_inputs(self, n, like, generator):
        """n fresh prior latents, uniform real classes and w = 1: where G must stay G_0."""
        z = torch.randn(like.shape, device=like.device, generator=generator) * self.sigma_max
        y = None
        if self.num_classes:
            y = torch.randint(self.num_classes, (n,), device=like.device, generator=generator)
        return z, y, torch.ones(n, device=like.device)

    def losses(self, phase, nets, batch, *, step, generator):
        z_w, x_w, y_w, w = batch["z"], batch["x"], batch.get("y"), batch["w"]
        n = len(z_w)
        z_1, y_1, ones = self.anchor_inputs(n, z_w, generator)
        with torch.no_grad():
            target_1 = self._g(self.anchor, z_1, y_1, ones)
        y_in = None if y_w is None else torch.cat([y_w, y_1])
        out = self._g(nets["generator"], torch.cat([z_w, z_1]), y_in, torch.cat([w, ones]))
        x_hat = censored(out[:n], x_w) if self.censor_clamped else out[:n]
        distill = self.reconstruction(x_hat, x_w)
        anchor = self.reconstruction(out[n:], target_1)
        terms = {"distill": distill.detach(), "anchor": anchor.detach(),
                 "psnr_guided": psnr(out[:n].detach().clamp(-1, 1), x_w),
                 "psnr_anchor": psnr(out[n:].detach().clamp(-1, 1), target_1.clamp(-1, 1))}
        loss = distill + self.anchor_weight * anchor
        if self.histogram_weight:
            histogram = self.histogram_term(out[:n], x_w)
            terms["histogram"] = histogram.detach()
            loss = loss + self.histogram_weight * histogram
        return dict(terms, loss=loss)

    def histogram_term(self, x_hat, x):
        """L_rec between the sorted pixel values of G's output and of its pair (censored at the bounds like the
        distillation term): regression of x_w pulls uncertain pixels towards the mean, which lowers G's contrast
        below the teacher's; this term is blind to where a value sits and only asks G's values to be distributed
        like the pair's, and vanishes where G fits the pair exactly."""
        x_sorted = sorted_pixels(x)
        x_hat_sorted = sorted_pixels(x_hat)
        if self.censor_clamped:
            x_hat_sorted = censored(x_hat_sorted, x_sorted)
        return self.reconstruction(x_hat_sorted, x_sorted)

    def ema_rates(self, player):
        return self._ema_rates

    def export_sidecar(self, player):
        return dict(generator_sidecar(self.generator, sigma_max=self.sigma_max, sigma_data=self.sigma_data),
                    **self.sidecar)


def guided_pairs_for(folder, backbone, origin, *, device):
    """The guided pairs (pagoda.guided_pairs) on `device`, refused unless the generator's teacher made them at the
    generator's output size."""
    pairs = load_guided_pairs(folder)
    check_latent_teacher(pairs["manifest"], origin["teacher_sha256"], latent_dir=folder, model="this generator")
    size = backbone.config["output_size"] or backbone.config["image_size"]
    if pairs["x"].shape[-1] != size:
        raise ValueError(f"guided pairs in {folder} are {pairs['x'].shape[-1]} px images but the generator makes "
                         f"{size} px ones")
    logger.log(f"guided pairs: {len(pairs['z'])} from {folder} at w in {pairs['manifest']['guidance_scales']}")
    return {k: None if v is None else v.to(device) for k, v in pairs.items() if k != "manifest"}


def load_start(init_from, *, device, seed):
    """(G with a w input, trainable; the frozen G_0 it starts as; the start's sidecar)."""
    if not init_from:
        raise ValueError("--init_from is required: a one-step generator export (stage 2's) to add guidance to")
    backbone, side = load_backbone(init_from, expect_kind="generator")
    if side.get("output", "raw") != "raw":
        raise ValueError(f"{init_from} is a '{side['output']}' generator (GDD); guidance distillation trains "
                         "PaGoDA's raw-output generators")
    backbone = with_guidance_input(backbone.to(device), seed=seed)
    anchor = copy.deepcopy(backbone).requires_grad_(False).eval()
    return backbone.requires_grad_(True).train(), anchor, side


def build(config, device):
    if not config["guided_pairs"]:
        raise ValueError("--guided_pairs is required: the guided teacher's pairs (scripts/encode.py --direction "
                         "decode) that G(z, y, w) learns")
    backbone, anchor, side = load_start(config["init_from"], device=device, seed=config["seed"])
    origin = {"teacher_sha256": side.get("teacher_sha256"), "null_class": side.get("null_class")}
    pairs = guided_pairs_for(config["guided_pairs"], backbone, origin, device="cpu")
    dist_util.sync_params(backbone.parameters())
    num_classes = real_classes(backbone.config["num_classes"], origin["null_class"])
    dataset = GuidedPairDataset(pairs, shard=dist_util.get_rank(), num_shards=dist_util.get_world_size())
    reconstruction = gan.reconstruction_from_flags(config, None, device)  # pixel or pseudo-Huber: no feature nets
    objective = GuidanceObjective(generator=backbone, anchor=anchor, reconstruction=reconstruction,
                                  anchor_weight=config["anchor_weight"], num_classes=num_classes,
                                  sigma_max=side.get("sigma_max", 80.0), sigma_data=side.get("sigma_data", 0.5),
                                  ema_rates=[float(r) for r in config["ema_rates"]],
                                  sidecar=common.export_lineage(origin) or {},
                                  censor_clamped=config["censor_clamped"],
                                  histogram_weight=config["histogram_weight"])
    logger.log(f"guidance distillation from {config['init_from']}: {len(pairs['z'])} guided pairs, w = 1 anchored "
               f"(weight {config['anchor_weight']:g})")
    optim = {"generator": OptimSpec(name="adam", lr=config["lr"], decay_steps=common.decay_steps(config))}
    record = dict(generator=backbone.config, num_guided_pairs=len(pairs["z"]), start=side.get("content_sha256"))
    return common.Run(objective=objective, data=common.stream(dataset, config), optim=optim, record=record,
                      title=TITLE)
