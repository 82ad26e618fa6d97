"""Recipes in commands/: each passes its preset plus paths and environment overrides (its --dry_run resolves to
exactly that), each flag once, ImageNet architectures equal the compat layouts."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pagoda import methods, script_util
from pagoda.unet import UNetModel, imagenet64_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = os.path.join(REPO, "commands")
RECIPES = sorted(f for f in os.listdir(COMMANDS) if f.endswith(".sh") and f.split("_")[0] in
                 ("stage1", "encode", "stage2", "stage3", "sampling.sh", "compare", "gdd", "progressive",
                  "super", "transfer.sh", "interpolate.sh", "inpaint.sh", "guided", "encoder"))


def _launches(recipe):
    """The flags of each script the recipe launches, its $..._FLAGS groups expanded, one list per launch line."""
    text = open(os.path.join(COMMANDS, recipe)).read()
    for part in ("_apply.sh", "_rounds.sh"):  # shared flags and launch lines the recipe sources
        if f"/{part}" in text:
            text += open(os.path.join(COMMANDS, part)).read()
    text = text.replace("\\\n", " ")
    groups = dict(re.findall(r'^\s*([A-Z_]*FLAGS)="([^"]*)"', text, flags=re.M))  # indented: inside a loop
    launches = [line for line in text.splitlines() if re.match(r"\s*(timed \w+ )?launch ", line)]
    return [re.findall(r"--(\w+)", re.sub(r"\$\{?([A-Z_]*FLAGS)\}?", lambda m: groups.get(m.group(1), ""), line))
            for line in launches]


def test_every_stage_has_recipes():
    names = set(RECIPES)
    for want in ("stage1_teacher_mnist.sh", "stage1_teacher_imagenet64.sh", "encode_mnist.sh", "encode_imagenet64.sh",
                 "stage2_mnist.sh", "stage2_imagenet64.sh", "stage3_mnist.sh", "stage3_imagenet64to128.sh",
                 "stage3_imagenet64to256.sh", "stage3_imagenet64to512.sh", "sampling.sh", "compare_mnist.sh",
                 "gdd_mnist.sh", "gdd_imagenet64.sh", "progressive_mnist.sh", "progressive_imagenet64.sh",
                 "encoder_mnist.sh"):
        assert want in names


@pytest.mark.parametrize("recipe", RECIPES)
def test_no_flag_twice(recipe):
    launches = _launches(recipe)
    assert launches and all(launches), recipe
    for flags in launches:
        duplicated = sorted({f for f in flags if flags.count(f) > 1})
        assert not duplicated, f"{recipe} passes {duplicated} more than once to one script"


def dry_run(recipe):
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", os.path.join(COMMANDS, recipe), "--dry_run"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def configs():
    return {r: dry_run(r) for r in RECIPES}


def _layout(path):
    rows = [l.split(" ", 1) for l in open(path).read().splitlines() if l and not l.startswith("#")]
    return [(name, tuple(eval(shape))) for name, shape in rows]


def _keys(net):
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


def test_imagenet_teacher_recipe_builds_the_released_layout(configs, compat_dir):
    from pagoda.methods.diffusion import ARCHITECTURE, build_backbone

    config = configs["stage1_teacher_imagenet64.sh"]
    assert [config[k] for k in ("lr", "global_batch_size", "dropout", "precision")] == [2e-4, 4096, 0.1, "fp16"]
    with torch.device("meta"):
        net = build_backbone(num_classes=1000, **{k: config[k] for k in ARCHITECTURE})
    assert _keys(net) == _layout(compat_dir / "adm_imagenet64_out64_keys.txt")


def test_imagenet_growth_chain_builds_the_released_layouts(configs, compat_dir, monkeypatch):
    """Each growth recipe's resolved flags go through the pagoda method's build_generator (its own code path),
    with the previous stage's export stood in by a meta-device network of the previous stage's architecture."""
    from pagoda.methods import pagoda

    stage2 = configs["stage2_imagenet64.sh"]
    assert (stage2["lr_generator"], stage2["lr_discriminator"], stage2["discriminator_weight"],
            stage2["global_batch_size"], stage2["grow_factor"]) == (8e-6, 2e-3, 0.2, 96, 1)
    parent = {"config": imagenet64_config(64)}

    def previous_export(path):
        with torch.device("meta"):
            return UNetModel(**parent["config"]), {"kind": "generator"}

    monkeypatch.setattr(pagoda, "load_generator_or_teacher_backbone", previous_export)
    for size, recipe in ((128, "stage3_imagenet64to128.sh"), (256, "stage3_imagenet64to256.sh"),
                         (512, "stage3_imagenet64to512.sh")):
        config = configs[recipe]
        assert config["image_size"] == size
        with torch.device("meta"):
            net, _ = pagoda.build_generator(config["init_from"], device="meta",
                                            **{k: config[k] for k in pagoda.GENERATOR_FLAGS})
        if size < 512:
            assert _keys(net) == _layout(compat_dir / f"adm_imagenet64_out{size}_keys.txt")
        assert net.config["output_size"] == size and net.config["channel_mult_high"] == [1] * {128: 1, 256: 2, 512: 3}[size]
        trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("output_blocks") else "")
                     for n, p in net.named_parameters() if p.requires_grad}
        assert trainable == {"out"} | {f"output_blocks.{i}" for i in range(9, len(net.output_blocks))}
        parent["config"] = net.config
    assert configs["stage3_imagenet64to128.sh"]["separate_update"] is False
    assert configs["stage3_imagenet64to256.sh"]["separate_update"] is True
    assert configs["stage3_imagenet64to512.sh"]["use_checkpoint"] is True


def test_gdd_imagenet_recipe_fine_tunes_the_released_teacher(configs, compat_dir, monkeypatch):
    """GDD's ImageNet-64 recipe through the method's own builder, the released teacher stood in by a meta-device
    network of its layout: every tensor trains (GDD); with --freeze convs the golden GDD-I set is frozen."""
    from pagoda.methods import gdd

    config = configs["gdd_imagenet64.sh"]
    assert [config[k] for k in ("global_batch_size", "lr_generator", "lr_discriminator", "adam_beta1", "adam_beta2",
                                "r1_gamma", "r1_interval", "gan_loss", "diffaug", "freeze")] == \
        [512, 8e-6, 4e-5, 0.0, 0.99, 1e-4, 16, "nonsaturating", False, "none"]

    def released(path, expect_kind):
        with torch.device("meta"):
            return UNetModel(**imagenet64_config()), {"kind": "denoiser"}

    monkeypatch.setattr(gdd, "load_backbone", released)
    for kind in ("none", "convs"):
        net, _ = gdd.build_generator(config["init_from"], freeze_kind=kind, device="meta")
        assert _keys(net) == _layout(compat_dir / "adm_imagenet64_out64_keys.txt")
        frozen = sorted(n for n, p in net.named_parameters() if not p.requires_grad)
        assert frozen == (gdd.frozen_convs(net) if kind == "convs" else [])
    assert len(frozen) == 188


def test_encode_recipe_uses_the_official_solver(configs):
    args = configs["encode_imagenet64.sh"]
    assert (args["num_steps"], args["sigma_min"], args["sigma_max"], args["rho"], args["clamp_denoised"],
            args["flips"]) == (40, 0.002, 80.0, 7.0, True, [0, 1])


# recipe -> (entry point, --method, preset, the flags it passes besides the preset: paths, and the environment's
# overrides, which the default environment leaves out)
PRESET_RECIPES = {
    "stage1_teacher_mnist.sh": ("train", "diffusion", "mnist16", ("run_dir",)),
    "stage1_teacher_imagenet64.sh": ("train", "diffusion", "imagenet64", ("data_dir", "run_dir")),
    "encode_mnist.sh": ("encode", None, "mnist16", ("teacher", "out_dir")),
    "encode_imagenet64.sh": ("encode", None, "imagenet64", ("data_dir", "teacher", "out_dir")),
    "stage2_mnist.sh": ("train", "pagoda", "mnist16", ("init_from", "latent_dir", "run_dir")),
    "stage3_mnist.sh": ("train", "pagoda", "mnist16to32", ("init_from", "latent_dir", "run_dir")),
    "encoder_mnist.sh": ("train", "encoder", "mnist16", ("init_from", "latent_dir", "run_dir")),
    "gdd_mnist.sh": ("train", "gdd", "mnist16", ("init_from", "run_dir")),
    "gdd_imagenet64.sh": ("train", "gdd", "imagenet64", ("init_from", "data_dir", "feature_weights", "run_dir")),
    "sampling.sh": ("sample", None, "fid50k", ("model", "out_dir")),
    **{f"stage{2 if size == 64 else 3}_imagenet64{'' if size == 64 else f'to{size}'}.sh":
       ("train", "pagoda", "imagenet64" + ("" if size == 64 else f"to{size}"),
        ("init_from", "latent_dir", "data_dir", "feature_weights", "run_dir")) for size in (64, 128, 256, 512)},
}
# multi-stage recipes: (recipe, the key of a stage's config in its --dry_run object) -> as above
PRESET_STAGES = {
    ("guided_mnist.sh", "pairs"): ("encode", None, "mnist16_pairs", ("teacher", "out_dir")),
    ("guided_mnist.sh", "guidance"): ("train", "guidance", "mnist16", ("init_from", "guided_pairs", "run_dir")),
    **{("progressive_mnist.sh", f"steps{k}"): ("train", "progressive", "mnist16",
                                               ("init_from", "teacher_steps", "run_dir")) for k in (16, 8, 4, 2, 1)},
    **{("progressive_imagenet64.sh", f"steps{k}"): ("train", "progressive", "imagenet64",
                                                    ("init_from", "teacher_steps", "data_dir", "run_dir"))
       for k in (128, 64, 32, 16, 8, 4, 2, 1)},
}


def _arg(value):
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(entry, method, preset, passed):
    """The config scripts/<entry>.py resolves from --preset `preset` and the flags `passed` alone."""
    argv = ["--preset", preset] + [a for key, value in passed.items() for a in (f"--{key}", _arg(value))]
    if entry == "train":
        import train  # noqa: PLC0415
        presets, parser = methods.get(method).PRESETS, train.parser_for(method)
    else:
        module = importlib.import_module(entry)
        presets = module.PRESETS
        # per-flag checks are on the Flags; CONSTRAINTS (relations) only where a script has them
        parser = script_util.create_parser(module.GROUPS, description="", presets=presets,
                                           constraints=getattr(module, "CONSTRAINTS", None))
    return json.loads(json.dumps(script_util.resolved_config(script_util.parse_args(parser, presets, argv))))


@pytest.mark.parametrize("recipe", sorted(PRESET_RECIPES))
def test_a_recipe_resolves_to_its_preset_and_the_paths_it_passes(configs, recipe):
    """Nothing a preset holds is re-listed in a recipe: its dry run is its preset plus its paths, key for key."""
    entry, method, preset, paths = PRESET_RECIPES[recipe]
    config = configs[recipe]
    assert config == resolve(entry, method, preset, {k: config[k] for k in paths})


@pytest.mark.parametrize("recipe, stage", sorted(PRESET_STAGES))
def test_each_stage_of_a_multi_stage_recipe_resolves_to_its_preset(configs, recipe, stage):
    entry, method, preset, paths = PRESET_STAGES[recipe, stage]
    config = configs[recipe][stage]
    assert config == resolve(entry, method, preset, {k: config[k] for k in paths})


def test_every_recipe_passes_a_preset_or_says_why_not():
    for name in sorted(os.listdir(COMMANDS)):
        if name.endswith(".sh") and not name.startswith("_"):
            text = open(os.path.join(COMMANDS, name)).read()
            assert "--preset " in text or re.search(r"^# No preset: \S", text, flags=re.M), name
    assert set(PRESET_RECIPES) | {r for r, _ in PRESET_STAGES} <= set(RECIPES)


def test_method_table_recipe_rows(configs):
    """The method table's rows: the teacher at NFE 35/11/5 (Heun) and 1 (Euler), both generators, the bicubic
    baseline, all at the same n per seed and 3 seeds, scored against the held-out split of bundled:mnist."""
    cfg = configs["compare_mnist.sh"]
    labels = [row.split("=", 1)[0] for row in cfg["row"]]
    assert labels == ["teacher_heun_35", "teacher_heun_11", "teacher_heun_5", "teacher_euler_1", "stage_2", "stage_3",
                      "stage_2+bicubic"]
    assert [row.rsplit("@", 1)[1] for row in cfg["row"][:4]] == [
        "sampler=heun,steps=18", "sampler=heun,steps=6", "sampler=heun,steps=3", "sampler=euler,steps=1"]
    assert cfg["row"][-1].endswith("@upsample=32") and cfg["gap_row"] == "stage_2+bicubic"
    assert (cfg["data_dir"], cfg["num_seeds"], cfg["num_samples"]) == ("bundled:mnist", 3, 5000)


@pytest.mark.parametrize("recipe, preset, start", [("progressive_mnist.sh", "mnist16", 32),
                                                   ("progressive_imagenet64.sh", "imagenet64", 256)])
def test_progressive_recipes_chain_their_rounds(configs, recipe, preset, start):
    """A multi-round recipe's --dry_run is one object of every round's config, keyed by its run: each round distils
    the previous round's export at twice its steps (the first, the teacher at START_STEPS), with the preset's
    settings (PD's ImageNet-64 ones: batch 2048, lr 1e-4 annealed in each round of 50k updates, no EMA)."""
    from pagoda.methods import progressive

    rounds = configs[recipe]
    steps = [start // 2**k for k in range(1, start.bit_length())]
    assert list(rounds) == [f"steps{k}" for k in steps]
    run = os.path.dirname(rounds["steps1"]["run_dir"])
    for k in steps:
        config = rounds[f"steps{k}"]
        assert config["teacher_steps"] == 2 * k and config["run_dir"] == f"{run}/steps{k}"
        if 2 * k < start:
            assert config["init_from"] == f"{run}/steps{2 * k}/exports/student.pt"
        assert (config["method"], config["lr_schedule"], config["ema_rates"], config["dropout"], config["rho"],
                config["grad_clip"]) == ("progressive", "linear", [], 0.0, 7.0, 1.0)
        for key, value in progressive.PRESETS[preset].items():
            assert config[key] == value, f"{preset}.{key} = {value!r} but {recipe} resolves it to {config[key]!r}"
    first = rounds[f"steps{start // 2}"]["init_from"]
    assert first.endswith("edm_imagenet64_ema.pt" if "imagenet" in recipe else "teacher/exports/denoiser_ema0.999.pt")


def test_progressive_recipe_resumes_without_retraining_finished_rounds(tmp_path):
    """On a tiny teacher (4 -> 2 -> 1 steps, 2 updates a round): the rounds run in order; a rerun skips the finished
    ones (exports untouched) and trains only what is missing."""
    from tests.helpers.exports import tiny_export
    from tests.helpers.tiny_runs import tiny_dataset

    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", TEACHER=tiny_export(tmp_path / "teacher.pt"),
               RUN=str(tmp_path / "pd"), DATA_DIR=tiny_dataset(tmp_path), START_STEPS="4", STEPS_PER_ROUND="2")
    extra = ["--image_size", "8", "--global_batch_size", "4", "--preview_interval", "0"]

    def recipe(**more):
        return subprocess.run(["bash", os.path.join(COMMANDS, "progressive_mnist.sh"), *extra],
                              env=dict(env, **more), capture_output=True, text=True, timeout=300)

    first = recipe(ROUNDS="2")  # stopped after the first round
    assert first.returncode == 0, first.stderr
    two = tmp_path / "pd" / "steps2" / "exports" / "student.pt"
    stamp = os.stat(two).st_mtime_ns
    assert not (tmp_path / "pd" / "steps1").exists()
    second = recipe()
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == "steps2: finished (2 steps), skipped"
    assert os.stat(two).st_mtime_ns == stamp
    one = tmp_path / "pd" / "steps1" / "exports" / "student.json"
    assert json.loads(one.read_text())["sigmas"] == [80.0, 0.0]
    third = recipe()
    assert third.stdout.splitlines() == ["steps2: finished (2 steps), skipped", "steps1: finished (2 steps), skipped"]


def test_guided_recipe_chains_pairs_guidance_distillation_and_the_curve(configs):
    """guided_mnist.sh: 10000 guided pairs from the quickstart's teacher at w in {1.5, 2, 3, 4} (Heun 18), guidance
    distillation from the quickstart's stage-2 generator (the method's mnist16 preset, nothing else but the run's
    paths and precision), and the curve of the teacher (Heun 18) and the generator at the same five w, 1000 samples x
    3 seeds."""
    config = configs["guided_mnist.sh"]
    assert list(config) == ["pairs", "guidance", "curve"]
    pairs, guidance, curve = config["pairs"], config["guidance"], config["curve"]
    teacher = "runs/quickstart/teacher/exports/denoiser_ema0.999.pt"
    assert (pairs["direction"], pairs["num_pairs"], pairs["guidance_scales"], pairs["num_steps"], pairs["teacher"],
            pairs["out_dir"]) == ("decode", 10000, [1.5, 2.0, 3.0, 4.0], 18, teacher, "runs/quickstart/guided/pairs")
    assert (guidance["method"], guidance["init_from"], guidance["guided_pairs"], guidance["run_dir"]) == (
        "guidance", "runs/quickstart/stage2/exports/generator_ema0.99.pt", "runs/quickstart/guided/pairs",
        "runs/quickstart/guided/guidance")
    from pagoda.methods import guidance as method  # noqa: PLC0415
    preset = method.PRESETS["mnist16"]
    assert {k: guidance[k] for k in preset} == {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()}
    assert (guidance["censor_clamped"], guidance["anchor_weight"], guidance["histogram_weight"], guidance["recon_loss"],
            guidance["total_steps"]) == (True, 0.3, 1.0, "pseudo_huber", 24000)
    scales = ["1", "1.5", "2", "3", "4"]
    assert [row.split("=", 1)[0] for row in curve["row"]] == [f"{m}_w{w}" for m in ("teacher", "generator")
                                                              for w in scales]
    assert [row.rsplit("@", 1)[1] for row in curve["row"]] == (
        [f"sampler=heun,steps=18,guidance_scale={w}" for w in scales] + [f"guidance_scale={w}" for w in scales])
    assert curve["row"][-1].split("=", 1)[1].startswith(
        "runs/quickstart/guided/guidance/exports/generator_ema0.99.pt@")
    assert (curve["data_dir"], curve["num_samples"], curve["num_seeds"]) == ("bundled:mnist", 1000, 3)


def test_imagenet_recipes_take_guidance_settings():
    """The guided path's ImageNet commands resolve: sampling with GUIDANCE, guided pairs by the encode recipe in the
    decode direction (for `--method guidance`). (Guidance needs a label-dropout teacher: the released one is refused,
    see test_guidance.)"""
    env = dict(os.environ, PYTHON=sys.executable, GUIDANCE="2", MODEL="teacher.pt")

    def dry_run_with(recipe, *extra, env=env):
        out = subprocess.run(["bash", os.path.join(COMMANDS, recipe), *extra, "--dry_run"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert dry_run_with("sampling.sh")["guidance_scale"] == 2.0
    pairs = dry_run_with("encode_imagenet64.sh", "--direction", "decode", "--num_pairs", "50000",
                         "--guidance_scales", "1.5,2,3,4")
    assert (pairs["direction"], pairs["num_pairs"], pairs["guidance_scales"], pairs["num_steps"]) == (
        "decode", 50000, [1.5, 2.0, 3.0, 4.0], 40)


def test_encoder_recipe_reads_the_run_layout(configs):
    """encoder_mnist.sh: the teacher and latents of $RUN (the quickstart's layout), its run in $RUN/encoder."""
    config = configs["encoder_mnist.sh"]
    keys = ("method", "init_from", "latent_dir", "run_dir", "encoder_sigma")
    assert tuple(config[k] for k in keys) == (
        "encoder", "runs/mnist/teacher/exports/denoiser_ema0.999.pt", "runs/mnist/latents", "runs/mnist/encoder", 0.002)


def test_encoder_recipe_resumes(tmp_path):
    """A rerun of the recipe with more steps continues the run instead of starting over (tiny teacher, 12 digits)."""
    from tests.helpers.exports import tiny_export
    from tests.helpers.tiny_runs import encode_run, tiny_dataset

    data = tiny_dataset(tmp_path)
    os.makedirs(tmp_path / "run" / "teacher" / "exports")
    teacher = tiny_export(tmp_path / "run" / "teacher" / "exports" / "denoiser_ema0.999.pt")
    encode_run(tmp_path / "run" / "latents", teacher, data)
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", RUN=str(tmp_path / "run"))

    def recipe(steps):
        return subprocess.run(["bash", os.path.join(COMMANDS, "encoder_mnist.sh"), "--global_batch_size", "4",
                               "--save_interval", "2"], env=dict(env, STEPS=steps), capture_output=True, text=True,
                              timeout=300)

    first = recipe("2")
    assert first.returncode == 0, first.stderr
    second = recipe("4")
    assert second.returncode == 0, second.stderr
    assert "resumed from step 2" in second.stdout + second.stderr
    side = json.loads((tmp_path / "run" / "encoder" / "exports" / "encoder_ema0.99.json").read_text())
    assert side["step"] == 4
