"""Progressive distillation (Salimans & Ho 2022) in EDM form: one round distils an N-step deterministic Euler
(DDIM) sampler of the teacher into an N/2-step student; rounds N -> N/2 -> ... -> 1 each start from the previous
round's export (commands/progressive_mnist.sh runs them all).

    python scripts/train.py --method progressive --init_from runs/teacher/exports/denoiser_ema0.999.pt \
        --teacher_steps 32 --run_dir runs/progressive/steps16
    python scripts/train.py --method progressive --init_from runs/progressive/steps16/exports/student.pt \
        --run_dir runs/progressive/steps8

The teacher's grid: karras_sigmas(N, sigma_min, sigma_max, rho) for a teacher export (N = --teacher_steps), the
sidecar's `sigmas` for a previous round's export. The student's grid is every second point of it, then 0
(sampling.halved_grid). Per sample: i ~ U{0..N/2-1}, sigma_t, sigma_mid, sigma_s = grid[2i], grid[2i+1], grid[2i+2],
x_t = x + sigma_t eps; the frozen teacher takes two Euler steps x_t -> x_mid -> x_s, and the student's target is
the denoised estimate whose ONE Euler step from x_t lands exactly on x_s (paper, algorithm 2, in EDM form):
    x~ = (x_s - (sigma_s / sigma_t) x_t) / (1 - sigma_s / sigma_t)        (x~ = x_s on the last interval),
loss lambda(sigma_t) ||D_student(x_t, sigma_t, y) - x~||^2 with EDM's weight lambda = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2, which already behaves like the paper's "SNR + 1" (no v-prediction needed).
The student starts as a copy of the teacher; Adam, the learning rate annealed linearly to 0 within the round, no
EMA (PD's settings). Export: <run_dir>/exports/student.pt, a 'denoiser' whose sidecar adds `sigmas` (the student's
grid: the sampler uses exactly that, NFE = N/2) and `distilled_from` (its teacher's content hash).

Unlike the v-diffusion seed repository (docs/method.md 7.2), the target is the exact two-step one: that code
takes ONE teacher step and regresses on the teacher's intermediate denoised estimate, which is the right target
only on the last step (elsewhere its implied eps explodes at small sigma), and it calls the teacher and the student
at different times for the same noise level (off by one index). Here both see (x_t, sigma_t), and the teacher
continues to sigma_mid and sigma_s on the grid the student must skip.
"""

import dataclasses

import torch

from .. import dist_util, logger, script_util
from ..callbacks import TeacherPreview
from ..image_datasets import check_labels, source_identity
from ..model_io import load_teacher, real_classes
from ..nn import append_dims, mean_flat
from ..precond import Denoiser, teacher_sidecar
from ..sampling import euler_step, euler_target, halved_grid, karras_sigmas
from ..train_util import Objective, OptimSpec
from ..unet import UNetModel
from . import common

TITLE = "progressive: progressive distillation"


def _zero_or_even(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v % 2 == 0
    return None if ok else "must be 0 (the export's own grid) or an even number of steps: a round halves them"


F, _c = script_util.Flag, script_util
GROUPS = {
    "data": common.image_data_group(image_size=0),
    "model": dict(
        init_from=F("", "the round's teacher: a teacher export, or the previous round's student export "
                    "(<run_dir>/exports/student.pt); the student starts as a copy of it; required"),
        teacher_steps=F(0, "N, the teacher's Euler steps on karras_sigmas(N, sigma_min, sigma_max, rho) of a teacher "
                        "export (the student learns N / 2); 0: the grid a previous round's export carries",
                        _zero_or_even),
        rho=F(7.0, "rho of the Karras grid of --teacher_steps (higher: steps denser at small sigma)",
              _c.greater_than(0)),
        dropout=F(0.0, "dropout probability in the student's residual blocks (PD: 0)", _c.in_range(0, 1)),
        use_checkpoint=F(False, "gradient checkpointing in the student: activations recomputed in the backward "
                         "pass, less memory for more compute, same results", resume="free"),
    ),
    "train": common.train_group(
        run_dir="runs/progressive", global_batch_size=32, total_steps=200, log_interval=50, save_interval=200,
        preview_interval=200,
        # PD keeps no EMA; an empty default makes the entries text, so they are read as numbers
        ema_rates=dataclasses.replace(common.TRAIN_FLAGS["ema_rates"], default=(),
                                      check=_c.each(_c.as_number(_c.in_range(0, 1)))),
        lr=F(1e-4, "learning rate of the student (Adam)", _c.at_least(0)),
        lr_schedule=F("linear", "linear: anneal the learning rate to 0 over --total_steps (PD, per round); constant",
                      _c.one_of(*common.LR_SCHEDULES)),
        grad_clip=F(1.0, "clip the gradient norm to this; 0: no clipping", _c.at_least(0)),
    ),
}
PRESETS = {
    # One round of commands/progressive_mnist.sh (the 16 px bundled teacher); the recipe adds the round's flags.
    "mnist16": dict(image_size=16, global_batch_size=32, lr=1e-3, total_steps=200, log_interval=50, save_interval=100,
                    preview_interval=200),
    # PD's ImageNet-64 settings (paper, appendix; official config): batch 2048, Adam lr 1e-4 annealed linearly to 0
    # in each round of 50k updates, gradient clipping at 1, no EMA, dropout 0.
    "imagenet64": dict(image_size=64, random_flip=True, cache_images=False, num_workers=8, global_batch_size=2048,
                       lr=1e-4, total_steps=50000, precision="bf16", log_interval=100, save_interval=5000,
                       preview_interval=5000),
}


CONSTRAINTS = {}  # relations between flags: none


class ProgressiveObjective(Objective):
    """One halving round: the student's denoised estimate at grid[2i] regresses on the target x~ of the frozen
    teacher's two Euler steps grid[2i] -> grid[2i+1] -> grid[2i+2] (module docstring)."""

    def __init__(self, *, student, teacher, teacher_sigmas, ema_rates, lineage):
        self.student, self.teacher = student, teacher
        self.players = {"student": student}
        self.teacher_sigmas = torch.as_tensor(teacher_sigmas)
        self.sigmas = halved_grid(self.teacher_sigmas)
        self.precond = dict(sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min, sigma_max=teacher.sigma_max)
        self._ema_rates = tuple(ema_rates)
        self.lineage = dict(lineage or {})

    def phases(self, step):
        return ["student"]

    def draw_interval(self, n, generator, *, device, dtype):
        """(sigma_t, sigma_mid, sigma_s), each (n,): the teacher's two steps of a uniformly drawn student step."""
        grid = self.teacher_sigmas.to(device=device, dtype=dtype)
        i = torch.randint(len(self.sigmas) - 1, (n,), device=device, generator=generator)
        return grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]

    @torch.no_grad()
    def target(self, x_t, sigma_t, sigma_mid, sigma_s, y):
        """x~: the denoised estimate whose single Euler step sigma_t -> sigma_s lands on the teacher's two steps."""
        x_mid = euler_step(x_t, self.teacher(x_t, sigma_t, y), sigma_t, sigma_mid)
        x_s = euler_step(x_mid, self.teacher(x_mid, sigma_mid, y), sigma_mid, sigma_s)
        return euler_target(x_t, x_s, sigma_t, sigma_s)

    def losses(self, phase, nets, batch, *, step, generator):
        x, y = batch["x"], batch.get("y")
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # as the Denoiser's output: fp32 under autocast
        sigma_t, sigma_mid, sigma_s = self.draw_interval(x.shape[0], generator, device=x.device, dtype=x.dtype)
        eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x_t = x + append_dims(sigma_t, x.ndim) * eps
        target = self.target(x_t, sigma_t, sigma_mid, sigma_s, y)
        denoised = Denoiser(nets["student"], **self.precond)(x_t, sigma_t, y)
        mse = mean_flat((denoised - target) ** 2)
        sigma_data = self.precond["sigma_data"]
        weight = (sigma_t**2 + sigma_data**2) / (sigma_t * sigma_data) ** 2
        return {"loss": weight * mse, "mse": mse.detach()}

    def ema_rates(self, player):
        return self._ema_rates

    def export_sidecar(self, player):
        side = teacher_sidecar(self.student, null_class=self.teacher.null_class, **self.precond)
        return dict(side, sigmas=self.sigmas.tolist(), **self.lineage)


def teacher_grid(teacher, *, teacher_steps, rho, source):
    """The grid the teacher samples on (N + 1 sigmas ending in 0): a distilled export's own (its sidecar's
    `sigmas`; a --teacher_steps that disagrees is an error), else karras_sigmas(teacher_steps) of its range."""
    own = teacher.sigmas
    if own is not None:
        if teacher_steps and teacher_steps != len(own) - 1:
            raise ValueError(f"--teacher_steps {teacher_steps} disagrees with {source}: it was distilled for "
                             f"{len(own) - 1} steps on its own grid (its sidecar's sigmas); pass --teacher_steps "
                             f"{len(own) - 1}, or 0 to take the export's grid")
        grid = torch.tensor(own, dtype=torch.float32)
    elif not teacher_steps:
        raise ValueError(f"--teacher_steps is required: {source} is a teacher without a grid of its own; the round "
                         "distils its karras_sigmas(N, sigma_min, sigma_max, rho) Euler sampler, N even (e.g. 32)")
    else:
        grid = karras_sigmas(teacher_steps, teacher.sigma_min, teacher.sigma_max, rho)
    if (len(grid) - 1) % 2:
        raise ValueError(f"{source} samples in {len(grid) - 1} steps, an odd number: a round halves the steps, "
                         "so it needs an even number; distil that export no further")
    return grid


def build_student(teacher, *, dropout=0.0, use_checkpoint=False):
    """A trainable copy of the teacher's backbone (PD's student starts as the teacher), with its own dropout."""
    student = UNetModel(**dict(teacher.backbone.config, dropout=dropout))
    student.load_state_dict(teacher.backbone.state_dict())
    if use_checkpoint:  # gradient checkpointing is a run setting, not part of the exported architecture
        for module in student.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = True
    return student.requires_grad_(True).train()


def data_for(teacher, config):
    """(source, dataset) at the teacher's resolution; the labels must be classes the teacher knows (a guided
    teacher's null class is one more embedding, never a data label)."""
    image_size = teacher.backbone.config["image_size"]
    if config["image_size"] not in (0, image_size):
        raise ValueError(f"--image_size {config['image_size']} differs from the teacher's {image_size} px "
                         f"({config['init_from']}); use 0 or {image_size}")
    source, dataset = common.image_dataset(config, image_size=image_size)
    num_classes = real_classes(teacher.backbone.config["num_classes"], teacher.null_class)
    if num_classes:
        check_labels(source.labels, num_classes, data=config["data_dir"], model=f"the teacher {config['init_from']}")
    return source, dataset


def build(config, device):
    if not config["init_from"]:
        raise ValueError("--init_from is required: a teacher export, or the previous round's student export")
    teacher = load_teacher(config["init_from"], device=device)
    grid = teacher_grid(teacher, teacher_steps=config["teacher_steps"], rho=config["rho"], source=config["init_from"])
    student = build_student(teacher, dropout=config["dropout"], use_checkpoint=config["use_checkpoint"]).to(device)
    dist_util.sync_params(student.parameters())
    source, dataset = data_for(teacher, config)
    lineage = {"distilled_from": teacher.backbone.content_sha256}
    objective = ProgressiveObjective(student=student, teacher=teacher, teacher_sigmas=grid, lineage=lineage,
                                     ema_rates=[float(r) for r in config["ema_rates"]])
    steps = len(grid) - 1
    logger.log(f"progressive distillation: {steps}-step teacher {config['init_from']} -> {steps // 2}-step student; "
               f"student grid {[round(s, 4) for s in objective.sigmas.tolist()]}")
    optim = {"student": OptimSpec(name="adam", lr=config["lr"], decay_steps=common.decay_steps(config),
                                  grad_clip=config["grad_clip"])}
    labels = bool(teacher.backbone.config["num_classes"])
    preview = TeacherPreview(interval=config["preview_interval"], sigmas=objective.sigmas.tolist(),
                             sigma_data=teacher.sigma_data, player="student",
                             num_classes=source.num_classes if labels else None)
    record = dict(dataset=source.origin, dataset_identity=source_identity(source), num_images=len(source),
                  num_classes=source.num_classes, unet=student.config, teacher_sigmas=grid.tolist(), **lineage)
    return common.Run(objective=objective, data=common.stream(dataset, config, labels=labels), optim=optim,
                      callbacks=[preview], record=record, title=f"{TITLE}: {steps} -> {steps // 2} steps")
