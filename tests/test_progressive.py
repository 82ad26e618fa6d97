"""Progressive distillation (pagoda/methods/progressive.py): the exact two-step target on Gaussian data with a known
denoiser, round-by-round distillation of a toy student against the exact PF-ODE, the k-step export's own grid in the
sampler and sample.py, and the errors of bad inputs."""

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pagoda import checkpoint, logger
from pagoda.image_util import to_uint8
from pagoda.methods.progressive import ProgressiveObjective
from pagoda.model_io import load_teacher
from pagoda.nn import append_dims
from pagoda.precond import Denoiser, teacher_sidecar
from pagoda.random_util import StackedRandomGenerator
from pagoda.sample_util import TeacherSampler, sample_labels, sampler_for_export
from pagoda.sampling import euler_sample, euler_step, euler_target, halved_grid, karras_sigmas
from pagoda.train_util import OptimSpec
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY, tiny_export
from tests.helpers.methods import entry
from tests.helpers.tiny_runs import _main, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "scripts", "sample.py")

# Data x ~ N(MU, S^2 I): D(x, sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU), and the PF-ODE carries x_t at sigma_t to
# x(sigma) = MU + sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_t^2) (x_t - MU).
MU, S = 0.3, 0.4


def exact_denoised(x, sigma, y=None):
    sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype), x.ndim)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def exact_flow(x_t, sigma_t, sigma):
    return MU + math.sqrt(S**2 + sigma**2) / math.sqrt(S**2 + sigma_t**2) * (x_t - MU)


def rel_err(a, b):
    """Error measured against the spread of the reference around the data mean."""
    return ((a - b).norm() / (b - MU).norm()).item()


class AffinePerSigma(nn.Module):
    """A backbone F(c_in x, sigma) = a_k c_in x + b_k with its own (a_k, b_k) at each grid point sigma_k: behind the
    EDM preconditioner it is any affine denoiser at each grid point, so it can represent every PD target on Gaussian
    data exactly. Initialised to the exact denoiser (the teacher)."""

    def __init__(self, grid, sigma_data=0.5):
        super().__init__()
        self.register_buffer("grid", grid)
        c_skip, c_out, c_in = Denoiser(nn.Identity(), sigma_data=sigma_data).scalings(grid)
        self.a = nn.Parameter((S**2 / (S**2 + grid**2) - c_skip) / (c_out * c_in))
        self.b = nn.Parameter(grid**2 * MU / ((S**2 + grid**2) * c_out))

    def forward(self, x_in, sigma, y=None):
        k = (sigma[:, None] - self.grid[None]).abs().argmin(1)  # sigma is always one of the grid points
        return append_dims(self.a[k], x_in.ndim) * x_in + append_dims(self.b[k], x_in.ndim)


class ExactTeacher:
    """The exact Gaussian denoiser at any sigma, with the attributes the objective reads from a teacher."""

    sigma_data, sigma_min, sigma_max, null_class = 0.5, 0.002, 80.0, None

    def __call__(self, x, sigma, y=None):
        return exact_denoised(x, sigma)


def frozen(backbone):
    teacher = Denoiser(backbone).requires_grad_(False)
    teacher.null_class = None
    return teacher


# -- pure functions ---------------------------------------------------------------------------------------------
def test_halved_grid_is_every_second_point_then_zero():
    grid = karras_sigmas(4)
    assert halved_grid(grid).tolist() == [grid[0].item(), grid[2].item(), 0.0]
    # not karras_sigmas(2): its last nonzero point would be sigma_min, not grid[N - 2]
    assert halved_grid(grid)[1] != karras_sigmas(2)[1]
    # on a Karras grid every second point is again a rho-grid: sigma^(1/7) is linear in the index
    roots = halved_grid(karras_sigmas(32, rho=7.0).double())[:-1] ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(15), rtol=1e-5, atol=0)
    for bad, steps, last in ((karras_sigmas(3), 3, 0.0), (karras_sigmas(2)[:-1], 1, 0.002), (torch.zeros(1), 0, 0.0)):
        with pytest.raises(ValueError, match=f"halving needs a grid of an even number of steps ending in 0; got "
                                             f"{steps} steps ending in {last}"):
            halved_grid(bad)


def test_euler_step_is_the_samplers_step_with_per_sample_sigmas():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, sigma_next = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.25, 0.0],
                                                                                        dtype=torch.float64)
    stepped = euler_step(x, exact_denoised(x, sigma), sigma, sigma_next)
    for n in range(3):  # euler_sample's one step on a two-point grid, sample by sample
        one = euler_sample(exact_denoised, x[n:n + 1], [sigma[n].item(), sigma_next[n].item()])
        torch.testing.assert_close(stepped[n:n + 1], one, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(euler_step(x, x * 0, 2.0, 1.0), x / 2)  # scalar sigmas too


def test_one_student_step_to_the_target_lands_on_the_teachers_two_steps():
    """(a): for random sigma triples (a third of them ending at sigma_s = 0) one Euler step from x_t with the target
    x~ as its denoised estimate is the teacher's two Euler steps, to float64 precision."""
    gen = torch.Generator().manual_seed(0)
    n = 300
    sigmas = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * math.log(80 / 0.002)).exp() * 0.002
    sigma_t, sigma_mid, sigma_s = sigmas.sort(dim=1, descending=True).values.unbind(1)
    sigma_s[::3] = 0
    x_t = MU + torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64) * append_dims(sigma_t, 4)
    x_mid = euler_step(x_t, exact_denoised(x_t, sigma_t), sigma_t, sigma_mid)
    x_s = euler_step(x_mid, exact_denoised(x_mid, sigma_mid), sigma_mid, sigma_s)
    target = euler_target(x_t, x_s, sigma_t, sigma_s)
    landed = euler_step(x_t, target, sigma_t, sigma_s)
    scale = append_dims(sigma_t, 4) + 1  # the states' own size
    assert ((landed - x_s).abs() / scale).max().item() < 1e-13
    assert torch.equal(target[::3], x_s[::3])  # the last interval: the target is the teacher's result itself
    # the objective computes the same target from a frozen teacher
    objective = ProgressiveObjective(student=nn.Linear(1, 1), teacher=ExactTeacher(), teacher_sigmas=karras_sigmas(2),
                                     ema_rates=(), lineage=None)
    torch.testing.assert_close(objective.target(x_t, sigma_t, sigma_mid, sigma_s, None), target, rtol=0, atol=0)


def test_loss_is_the_edm_weight_times_the_mse_against_the_two_step_target():
    grid = karras_sigmas(8).double()
    teacher = frozen(AffinePerSigma(grid[:-1]))
    student = copy.deepcopy(teacher.backbone).requires_grad_(True)
    with torch.no_grad():
        student.a.mul_(1.1)
    objective = ProgressiveObjective(student=student, teacher=teacher, teacher_sigmas=grid, ema_rates=(),
                                     lineage=None)
    x = MU + S * torch.randn(64, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    terms = objective.losses("student", {"student": student}, {"x": x}, step=0,
                             generator=torch.Generator().manual_seed(2))
    # by hand, from the same draws: the interval index, then the noise
    gen = torch.Generator().manual_seed(2)
    i = torch.randint(4, (64,), generator=gen)
    sigma_t, sigma_mid, sigma_s = grid[2 * i, None], grid[2 * i + 1, None], grid[2 * i + 2, None]
    x_t = x + sigma_t * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x_mid = exact_denoised(x_t, sigma_t[:, 0]) + sigma_mid / sigma_t * (x_t - exact_denoised(x_t, sigma_t[:, 0]))
    d_mid = exact_denoised(x_mid, sigma_mid[:, 0])
    x_s = d_mid + sigma_s / sigma_mid * (x_mid - d_mid)
    target = (x_s - sigma_s / sigma_t * x_t) / (1 - sigma_s / sigma_t)
    mse = ((Denoiser(student)(x_t, sigma_t[:, 0]) - target) ** 2).mean(1)
    weight = (sigma_t[:, 0] ** 2 + 0.25) / (sigma_t[:, 0] * 0.5) ** 2
    torch.testing.assert_close(terms["mse"], mse.detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(terms["loss"], weight * mse, rtol=1e-10, atol=1e-14)
    assert terms["loss"].requires_grad and set(terms) == {"loss", "mse"}
    assert set(i.tolist()) == {0, 1, 2, 3}  # every student step is drawn


@pytest.fixture(scope="module")
def distilled():
    """The affine toy distilled 128 -> 64 -> ... -> 1 steps with the objective's loss and Adam (lr 3e-2 annealed
    linearly to 0, 400 updates of 256 samples per round): the sample error of each k-step student against the
    128-step Euler teacher and against the exact ODE solution, from the same 1000 noise vectors at sigma_max."""
    gen = torch.Generator().manual_seed(0)
    grid = karras_sigmas(128).double()
    backbone = AffinePerSigma(grid[:-1])
    x_T = 80 * torch.randn(1000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_flow(x_T, 80.0, 0.0)
    teacher_euler = euler_sample(frozen(backbone), x_T, grid)
    errors = {}
    while len(grid) > 2:
        student = copy.deepcopy(backbone).requires_grad_(True)  # the student starts as its teacher
        objective = ProgressiveObjective(student=student, teacher=frozen(backbone), teacher_sigmas=grid,
                                         ema_rates=(), lineage=None)
        spec = OptimSpec(lr=3e-2, decay_steps=400)
        opt = spec.create(student.parameters())
        for step in range(400):
            opt.param_groups[0]["lr"] = spec.lr_at(step)
            x = MU + S * torch.randn(256, 8, generator=gen, dtype=torch.float64)
            loss = objective.losses("student", {"student": student}, {"x": x}, step=step, generator=gen)["loss"]
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        backbone, grid = student, objective.sigmas
        sample = euler_sample(frozen(backbone), x_T, grid)
        errors[len(grid) - 1] = (rel_err(sample, teacher_euler), rel_err(sample, exact))
    return errors, rel_err(teacher_euler, exact), exact, x_T


def test_distilled_students_reproduce_the_teacher_sampler_and_the_exact_ode(distilled):
    """(b): every round's k-step student samples what the 128-step teacher does, to 1e-6 (the optimiser's residual:
    the target is exactly representable, so the loss minimum is 0; measured ~1e-9). Against the exact solution the
    error is the 128-step Euler teacher's own first-order error (~2.9 / N: 0.023 at N = 128), which no round adds to:
    each k-step student is within 1e-6 of it and below the stated 0.03."""
    errors, teacher_error, exact, x_T = distilled
    assert sorted(errors) == [1, 2, 4, 8, 16, 32, 64]
    assert 0.02 < teacher_error < 0.03
    for k, (vs_teacher, vs_exact) in errors.items():
        assert vs_teacher < 1e-6, (k, vs_teacher)
        assert abs(vs_exact - teacher_error) < 1e-6 and vs_exact < 0.03, (k, vs_exact)
    # what the rounds bought: one Euler step of the exact denoiser itself lands nowhere near the solution
    one_step = euler_sample(exact_denoised, x_T, [80.0, 0.0])
    assert rel_err(one_step, exact) > 0.99


# -- training rounds through scripts/train.py --method progressive -------------------------------------------------
ROUND_FLAGS = ["--global_batch_size", "4", "--total_steps", "2", "--save_interval", "2", "--log_interval", "1",
               "--preview_interval", "2", "--lr", "1e-3"]


def run_round(run_dir, init_from, data, *extra):
    _main(entry("progressive"), ["--init_from", init_from, "--data_dir", data, "--run_dir", str(run_dir),
                                 *ROUND_FLAGS, *extra])
    return os.path.join(str(run_dir), "exports", "student.pt")


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A tiny 8 px teacher export distilled 4 -> 2 -> 1 steps, two train.py steps a round."""
    tmp = tmp_path_factory.mktemp("progressive")
    data = tiny_dataset(tmp)
    teacher = tiny_export(tmp / "teacher.pt")
    two = run_round(tmp / "steps2", teacher, data, "--teacher_steps", "4")
    one = run_round(tmp / "steps1", two, data)
    return dict(tmp=tmp, data=data, teacher=teacher, two=two, one=one)


def test_round_exports_their_grid_and_the_sampler_uses_exactly_it(rounds, capsys):
    grid4 = karras_sigmas(4, 0.002, 80.0, 7.0)
    side = checkpoint.read_sidecar(rounds["two"], expect_kind="denoiser")
    assert side["sigmas"] == [grid4[0].item(), grid4[2].item(), 0.0]
    assert side["distilled_from"] == checkpoint.read_sidecar(rounds["teacher"])["content_sha256"]
    assert (side["sigma_data"], side["sigma_min"], side["sigma_max"], side["null_class"]) == (0.5, 0.002, 80.0, None)
    assert side["unet"] == UNetModel(**TINY).config
    one = checkpoint.read_sidecar(rounds["one"])
    assert one["sigmas"] == [80.0, 0.0] and one["distilled_from"] == side["content_sha256"]
    capsys.readouterr()
    logger.configure(None)
    for path, steps in ((rounds["two"], 2), (rounds["one"], 1)):
        sampler = sampler_for_export(path, sampler="heun", num_steps=18)
        assert sampler.sigmas().tolist() == checkpoint.read_sidecar(path)["sigmas"]
        assert (sampler.nfe, sampler.sampler) == (steps, "euler")
    # the one log line per sampler, naming what does not apply
    lines = [l for l in capsys.readouterr().out.splitlines() if "do not apply" in l]
    assert lines == [
        "this denoiser was distilled for 2-step deterministic Euler on its own grid: sampling with that (NFE 2); the "
        "sampler settings asked for (sampler=heun, num_steps=18, rho=7, s_churn=0) do not apply to it",
        "this denoiser was distilled for 1-step deterministic Euler on its own grid: sampling with that (NFE 1); the "
        "sampler settings asked for (sampler=heun, num_steps=18, rho=7, s_churn=0) do not apply to it"]
    # a teacher export keeps its chosen sampler
    teacher = sampler_for_export(rounds["teacher"], sampler="heun", num_steps=3)
    assert teacher.nfe == 5 and torch.equal(teacher.sigmas(), karras_sigmas(3))
    # the method table's row of a k-step export reports NFE k, whatever sampler the row names
    from compare import parse_row, row_nfe

    row = parse_row(f"PD 2 steps={rounds['two']}@sampler=heun,steps=18", 10)
    assert row_nfe(sampler_for_export(row.path, sampler=row.sampler, num_steps=row.steps), row) == 2


def test_student_starts_as_the_teacher_and_the_teacher_stays_frozen(rounds):
    """The round's config records the teacher's grid and hash; the first update moves the student away from the
    teacher's weights, the teacher export is untouched."""
    config = json.load(open(os.path.join(str(rounds["tmp"] / "steps2"), "config.json")))
    assert config["teacher_sigmas"] == karras_sigmas(4).tolist() and config["ema_rates"] == []
    teacher = checkpoint.torch_load(rounds["teacher"])
    student = checkpoint.torch_load(rounds["two"])
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    from train import parser_for
    from pagoda import script_util
    from pagoda.methods import progressive

    args = script_util.parse_args(parser_for("progressive"), progressive.PRESETS, [
        "--init_from", rounds["teacher"], "--teacher_steps", "4", "--data_dir", rounds["data"]])
    run = progressive.build(vars(args), torch.device("cpu"))
    built = run.objective.players["student"].state_dict()
    assert all(torch.equal(built[k], teacher[k]) for k in teacher)
    assert not any(p.requires_grad for p in run.objective.teacher.parameters())
    assert run.optim["student"].decay_steps == args.total_steps and run.optim["student"].grad_clip == 1.0


def test_k_step_export_samples_through_sample_py_and_scores(rounds, monkeypatch):
    """scripts/sample.py with no architecture or sampler flags: NFE 2, the samples are Euler on the export's grid from
    each sample's own seed (and --sampler/--num_steps change nothing), and the evaluator scores them."""
    out = rounds["tmp"] / "samples"

    def sample(folder, *extra):
        return subprocess.run([sys.executable, SAMPLE, "--model", rounds["two"], "--out_dir", str(folder),
                               "--num_samples", "10", "--chunk_size", "5", *extra], capture_output=True, text=True,
                              timeout=300, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))

    printed = sample(out).stdout
    assert printed.count("do not apply to it") == 1
    stats = json.load(open(out / "sampling.json"))
    assert stats["nfe"] == 2 and stats["num_samples"] == 10
    with np.load(out / "samples_10x8x8x3.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    sample(rounds["tmp"] / "samples_heun", "--sampler", "heun", "--num_steps", "7")
    with np.load(rounds["tmp"] / "samples_heun" / "samples_10x8x8x3.npz") as data:
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)
    student = load_teacher(rounds["two"])
    rng = StackedRandomGenerator("cpu", list(range(10)))
    y = sample_labels(range(10), num_classes=4)
    with torch.no_grad():
        want = to_uint8(euler_sample(student, rng.randn((10, 3, 8, 8)) * 80, student.sigmas, y).clamp(-1, 1))
    assert np.array_equal(labels, y.numpy())
    assert np.abs(images.astype(int) - want.astype(int)).max() <= 1  # float rounding may move a pixel one level

    from evaluations import evaluator
    from evaluations.inception import random_inception

    monkeypatch.setattr(evaluator, "load_inception", lambda *a, **k: random_inception(input_size=75))
    path = str(out / "samples_10x8x8x3.npz")
    metrics = evaluator.evaluate(path, path)
    assert metrics["num_sample_images"] == 10 and abs(metrics["fid"]) < 1e-3


def test_guidance_on_a_k_step_export_guides_every_euler_step():
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    denoiser = Denoiser(net).eval().requires_grad_(False)
    denoiser.null_class, denoiser.sigmas = 3, [80.0, 2.0, 0.0]
    logger.configure(None)
    sampler = TeacherSampler(denoiser, guidance_scale=2.0)
    assert sampler.nfe == 2  # per guided step, both branches go in one batched call (compare.py doubles it)
    rng = StackedRandomGenerator("cpu", [0, 1])
    y = torch.tensor([0, 2])
    got = sampler(rng, y)
    x = StackedRandomGenerator("cpu", [0, 1]).randn((2, 3, 8, 8)) * 80
    for sigma, sigma_next in ((80.0, 2.0), (2.0, 0.0)):
        s = torch.full((2,), sigma)
        guided = 2 * denoiser(x, s, y) - denoiser(x, s, torch.full_like(y, 3))
        x = euler_step(x, guided, sigma, sigma_next)
    torch.testing.assert_close(got, x.clamp(-1, 1), rtol=1e-4, atol=1e-4)


# -- bad inputs ---------------------------------------------------------------------------------------------------
def test_odd_teacher_steps_is_refused_at_parse_time(rounds, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_round(rounds["tmp"] / "odd", rounds["teacher"], rounds["data"], "--teacher_steps", "5")
    assert exit_.value.code == 2
    assert ("invalid --teacher_steps 5: must be 0 (the export's own grid) or an even number of steps: a round halves "
            "them") in capsys.readouterr().err


def test_teacher_steps_that_disagree_with_the_exports_grid_are_refused(rounds):
    with pytest.raises(ValueError) as err:
        run_round(rounds["tmp"] / "disagree", rounds["two"], rounds["data"], "--teacher_steps", "4")
    assert str(err.value) == (
        f"--teacher_steps 4 disagrees with {rounds['two']}: it was distilled for 2 steps on its own grid (its "
        "sidecar's sigmas); pass --teacher_steps 2, or 0 to take the export's grid")


def test_a_teacher_without_a_grid_needs_teacher_steps(rounds):
    with pytest.raises(ValueError) as err:
        run_round(rounds["tmp"] / "nogrid", rounds["teacher"], rounds["data"])
    assert str(err.value) == (
        f"--teacher_steps is required: {rounds['teacher']} is a teacher without a grid of its own; the round distils "
        "its karras_sigmas(N, sigma_min, sigma_max, rho) Euler sampler, N even (e.g. 32)")


def test_a_one_step_export_cannot_be_halved(rounds):
    with pytest.raises(ValueError) as err:
        run_round(rounds["tmp"] / "zero", rounds["one"], rounds["data"])
    assert str(err.value) == (f"{rounds['one']} samples in 1 steps, an odd number: a round halves the steps, so it "
                              "needs an even number; distil that export no further")


def test_labels_must_be_classes_of_the_teacher_without_its_null_class(rounds):
    """A guided teacher (null class 3 of 4 embeddings) knows data classes 0..2; the tiny data has labels 0..3."""
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    path = str(rounds["tmp"] / "guided.pt")
    checkpoint.export_network(net.state_dict(), teacher_sidecar(net, null_class=3), path)
    with pytest.raises(ValueError) as err:
        run_round(rounds["tmp"] / "guided", path, rounds["data"], "--teacher_steps", "2")
    assert str(err.value) == (f"{rounds['data']} has labels up to 3 but the teacher {path} knows 3 classes (0..2); "
                              "use the data it was trained on, or a model trained on these labels")


@pytest.mark.parametrize("sigmas, problem", [
    ([80.0], "must be a list of at least two finite numbers"),
    ([80.0, "2", 0], "must be a list of at least two finite numbers"),
    ([80.0, True, 0], "must be a list of at least two finite numbers"),
    ([80.0, float("nan"), 0], "must be a list of at least two finite numbers"),
    ([80.0, 90.0, 0.0], "must be strictly decreasing"),
    ([80.0, 2.0, 2.0, 0.0], "must be strictly decreasing"),
    ([80.0, 2.0], "must end in 0"),
])
def test_malformed_sigmas_entry_is_refused_naming_the_file(tmp_path, sigmas, problem):
    path = tiny_export(tmp_path / "student.pt")
    side = dict(checkpoint.read_sidecar(path), sigmas=sigmas)
    checkpoint.atomic_write_text(json.dumps(side), checkpoint.sidecar_path(path))
    with pytest.raises(ValueError) as err:
        load_teacher(path)
    assert str(err.value) == (f"{tmp_path / 'student.json'}: entry 'sigmas' {problem} (the grid a distilled denoiser "
                              f"samples on), got {sigmas!r}; re-export the network")
    side["sigmas"] = "80,0"
    checkpoint.atomic_write_text(json.dumps(side), checkpoint.sidecar_path(path))
    with pytest.raises(ValueError, match=r"student.json: entry 'sigmas' must be list, got str '80,0'; re-export"):
        load_teacher(path)
