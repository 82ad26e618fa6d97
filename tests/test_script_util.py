"""Flags, presets, --dry_run, config.json and strict checkpoint loading errors."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pagoda import checkpoint, script_util

REPO = Path(__file__).resolve().parents[1]
F = script_util.Flag
GROUPS = {"model": {"channels": F(64, "width"), "channel_mult": F((1, 2), "widths"), "use_fp16": F(False, "fp16")},
          "train": {"lr": F(1e-4, "rate"), "run_dir": F("runs/x", "folder", resume="free")}}
PRESETS = {"tiny": {"channels": 16, "lr": 1e-3}}


def _parse(argv):
    parser = script_util.create_parser(GROUPS, description="t", presets=PRESETS)
    return script_util.parse_args(parser, PRESETS, argv)


def test_flags_typed_from_defaults():
    args = _parse(["--channels", "32", "--channel_mult", "1,2,4", "--use_fp16", "true"])
    assert (args.channels, args.channel_mult, args.use_fp16) == (32, (1, 2, 4), True)


def test_preset_sets_defaults_and_explicit_flags_win():
    args = _parse(["--preset", "tiny", "--lr", "5e-5"])
    assert (args.channels, args.lr) == (16, 5e-5)


def test_misspelled_or_abbreviated_flag_is_an_error(capsys):
    for bad in (["--chanels", "3"], ["--chan", "3"]):
        with pytest.raises(SystemExit):
            _parse(bad)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_flag_defined_twice_is_an_error():
    with pytest.raises(ValueError, match="--lr is defined in both 'a' and 'b'"):
        script_util.create_parser({"a": {"lr": F(1, "rate")}, "b": {"lr": F(2, "rate")}}, description="t")


def test_a_flag_record_gives_default_help_and_check(capsys):
    groups = {"train": {"lr": script_util.Flag(1e-4, "the learning rate", script_util.at_least(0)),
                        "run_dir": script_util.Flag("runs/x", "the run's folder", resume="free")}}
    parser = script_util.create_parser(groups, description="t")
    assert script_util.parse_args(parser, argv=[]).lr == 1e-4
    assert "the learning rate" in parser.format_help()
    with pytest.raises(SystemExit):
        script_util.parse_args(parser, argv=["--lr", "-1"])
    assert "invalid --lr -1.0: must be a number >= 0" in capsys.readouterr().err
    assert script_util.defaults(groups["train"]) == {"lr": 1e-4, "run_dir": "runs/x"}
    assert parser.resume_classes == {"lr": "guarded", "run_dir": "free"}


def test_a_flag_needs_help_and_one_place_for_its_check():
    with pytest.raises(ValueError, match="needs help text"):
        script_util.Flag(1, " ")
    with pytest.raises(ValueError, match="resume must be"):
        script_util.Flag(1, "x", resume="sometimes")
    groups = {"g": {"lr": script_util.Flag(1.0, "rate", script_util.at_least(0))}}
    with pytest.raises(ValueError, match=r"both on their Flag and in constraints: \['lr'\]"):
        script_util.create_parser(groups, description="t", constraints={"lr": script_util.finite})
    with pytest.raises(ValueError, match="--lr is declared as 1.0, not as a script_util.Flag with its help text"):
        script_util.create_parser({"g": {"lr": 1.0}}, description="t")


def test_a_group_with_other_defaults_keeps_each_flags_help_check_and_class():
    group = {"lr": F(1e-4, "rate", script_util.at_least(0)), "steps": F(10, "steps", resume="free")}
    changed = script_util.with_defaults(group, lr=1e-3, beta=F(0.9, "momentum"))
    assert changed["lr"] == F(1e-3, "rate", group["lr"].check) and changed["steps"] is group["steps"]
    assert list(changed) == ["lr", "steps", "beta"] and group["lr"].default == 1e-4
    with pytest.raises(ValueError, match=r"\['beta'\]: not flags of this group; a new flag must be a Flag"):
        script_util.with_defaults(group, beta=0.9)


def test_dry_run_prints_resolved_config(capsys):
    args = _parse(["--preset", "tiny", "--dry_run"])
    with pytest.raises(SystemExit) as exit_info:
        script_util.handle_dry_run(args)
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["channels"] == 16 and printed["channel_mult"] == [1, 2] and printed["preset"] == "tiny"


def test_config_json_written(tmp_path):
    args = _parse([])
    script_util.write_config(str(tmp_path), args, classes={}, note="hello")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["channels"] == 64 and config["note"] == "hello" and config["world_size"] == 1
    assert "git_commit" in config


def test_strict_load_lists_missing_unexpected_and_shapes(tmp_path):
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    path = tmp_path / "net.pt"
    checkpoint.export_network(src.state_dict(), {"kind": "mlp"}, str(path))
    sd = checkpoint.torch_load(str(path))
    content = checkpoint.content_hash(sd, {"kind": "mlp"})
    assert checkpoint.read_sidecar(str(path)) == {"kind": "mlp", "content_sha256": content}
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError) as err:
        checkpoint.load_state_dict_strict(other, checkpoint.torch_load(str(path)), source=str(path))
    msg = str(err.value)
    assert "2 missing" in msg and "2.weight, 2.bias" in msg
    assert "0.weight: file (4, 3) vs model (5, 3)" in msg and str(path) in msg
    same = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    checkpoint.load_state_dict_strict(same, checkpoint.torch_load(str(path)), source=str(path))
    assert torch.equal(same[0].weight, src[0].weight)


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        checkpoint.torch_load(str(tmp_path / "nope.pt"))


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    state = checkpoint.capture_rng()
    checkpoint.atomic_save({"rng": state}, str(tmp_path / "s.pt"))
    expected = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.restore_rng(checkpoint.torch_load(str(tmp_path / "s.pt"))["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def _training_classes(method):
    """{key: class} of a training run's config.json, as scripts/train.py hands them to write_config."""
    from pagoda.methods import common
    from tests.helpers.methods import train

    return {**train.parser_for(method).resume_classes, "method": "fixed", **common.RECORD_CLASSES,
            **script_util.WRITTEN_CLASSES}


def test_config_changes_by_class_with_nested_records():
    classes = _training_classes("diffusion")
    recorded = {"lr": 1e-3, "total_steps": 10, "seed": 0, "generator": {"model_channels": 32, "num_classes": 4},
                "old_flag": 1}
    requested = {"lr": 5e-4, "total_steps": 20, "seed": 0, "generator": {"model_channels": 64, "num_classes": 4},
                 "new_flag": 2}  # keys on one side only (flags added or removed since) are not compared
    assert script_util.config_changes(recorded, requested, classes) == [
        ("generator.model_channels", 32, 64, "fixed"), ("lr", 1e-3, 5e-4, "guarded"), ("total_steps", 10, 20, "free")]
    # an entry of a record takes its own class when it has one, else the record's
    assert [script_util.flag_class(k, classes) for k in ("unet.use_checkpoint", "unet.dropout", "unet.in_channels",
                                                         "dataset_identity.digest", "git_commit", "preset", "method",
                                                         "teacher_sigmas")] == [
        "free", "guarded", "fixed", "fixed", "free", "free", "fixed", "guarded"]
    # the same records in another method's run: its generator's run settings keep their classes
    classes = _training_classes("pagoda")
    assert [script_util.flag_class(k, classes) for k in ("generator.use_checkpoint", "generator.dropout",
                                                         "generator.model_channels", "num_pairs", "recon_loss")] == [
        "free", "guarded", "fixed", "fixed", "fixed"]


def test_every_training_flag_has_a_deliberate_class():
    """New flags default to "guarded" (refused on resume unless allowed); these are the ones that are not."""
    from pagoda import methods

    declared = [(k, flag.resume) for name in methods.METHODS for g in methods.get(name).GROUPS.values()
                for k, flag in g.items()]
    classes = dict(declared)
    assert set(declared) == set(classes.items()), "a flag name shared by methods has one class"
    free = {k for k, cls in classes.items() if cls == "free"}
    fixed = {k for k, cls in classes.items() if cls == "fixed"}
    assert free == {"total_steps", "log_interval", "save_interval", "preview_interval", "preview_steps",
                    "monitor_interval", "monitor_samples", "monitor_network", "keep_checkpoints", "num_workers",
                    "cache_images", "use_checkpoint", "microbatch", "run_dir", "allow_config_change", "compile",
                    "log_format"}
    assert fixed == {"model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_head_channels",
                     "class_cond", "label_dropout", "ema_rates", "grow_factor", "channel_mult_high", "activate_from",
                     "feature_networks", "feature_weights", "d_channel_scale", "d_norm", "feature_resolution",
                     "recon_discriminator", "recon_loss", "data_dir", "latent_dir", "image_size", "random_flip",
                     "arch", "dimr_layout", "dimr_time"}


def test_allowed_guarded_change_passes_and_fixed_never_does():
    recorded, requested = {"lr": 1e-3, "image_size": 16}, {"lr": 5e-4, "image_size": 16}
    check = dict(flags={"lr", "image_size"}, classes={"lr": "guarded", "image_size": "fixed"}, run_dir="runs/x")
    assert script_util.check_resume(recorded, requested, allow_change=True, **check) == [
        ("lr", 1e-3, 5e-4, "guarded")]
    with pytest.raises(script_util.ConfigChangeError, match=r"other changes .*\n    --lr: 0.001 -> 0.0005$"):
        script_util.check_resume(recorded, requested, allow_change=False, **check)
    with pytest.raises(script_util.ConfigChangeError, match=r"use a new --run_dir\):\n    --image_size: 16 -> 32$"):
        script_util.check_resume(recorded, dict(recorded, image_size=32), allow_change=True, **check)


def test_a_config_from_before_the_discriminator_flags_resumes_with_their_old_behaviour():
    """config.json files written before --d_norm and --feature_resolution existed hold neither: they are read as
    the values that reproduce those runs (BatchNorm, each network's own size), not skipped."""
    old = {"lr_generator": 8e-6, "feature_networks": ["random_conv"], "d_channel_scale": 0.25}
    defaults = dict(old, d_norm="batch", feature_resolution=0)
    classes = {"lr_generator": "guarded", "feature_networks": "fixed", "d_channel_scale": "fixed", "d_norm": "fixed",
               "feature_resolution": "fixed"}
    check = dict(flags=set(defaults), classes=classes, run_dir="runs/old")
    assert script_util.config_changes(old, defaults, classes) == []
    assert script_util.check_resume(old, defaults, allow_change=False, **check) == []
    with pytest.raises(script_util.ConfigChangeError) as err:
        script_util.check_resume(old, dict(defaults, d_norm="group", feature_resolution=128), allow_change=True,
                                 **check)
    assert str(err.value).endswith("use a new --run_dir):\n    --d_norm: 'batch' -> 'group'\n"
                                   "    --feature_resolution: 0 -> 128")
    # a run whose flags never had them (the teacher's) compares nothing new
    assert script_util.config_changes({"lr": 1e-3}, {"lr": 1e-3}, {"lr": "guarded"}) == []


def test_a_config_with_a_renamed_flag_resumes_and_one_with_a_removed_setting_is_refused():
    """--lr_decay true/false (guidance, before the one --lr_schedule) reads as linear/constant; a stage-2 run
    recorded with --guided_pairs (removed: `--method guidance` trains the guided generator) cannot resume, one
    recorded at the removed flags' defaults resumes as before."""
    new = {"lr_schedule": "linear", "lr": 5e-4}
    classes = {"lr_schedule": "guarded", "lr": "guarded", "lr_generator": "guarded"}
    assert script_util.config_changes({"lr_decay": True, "lr": 5e-4}, new, classes) == []
    assert script_util.config_changes({"lr_decay": False, "lr": 5e-4}, new, classes) == [
        ("lr_schedule", "constant", "linear", "guarded")]
    stage2 = {"guided_pairs": "", "guided_weight": 1.0, "guided_gan": False, "lr_generator": 2e-3}
    requested = {"lr_generator": 2e-3}
    assert script_util.check_resume(stage2, requested, allow_change=False, flags=set(requested), classes=classes,
                                    run_dir="r") == []
    with pytest.raises(script_util.ConfigChangeError) as err:
        script_util.check_resume(dict(stage2, guided_pairs="runs/pairs"), requested, allow_change=True,
                                 flags=set(requested), classes=classes, run_dir="r")
    assert str(err.value).endswith("use a new --run_dir):\n    guided_pairs: 'runs/pairs' -> '<removed>'")


def test_parse_cli_names_every_missing_required_flag(capsys):
    groups = {"io": {"input": F("", "the npz"), "out_dir": F("", "where"), "size": F(8, "side")}}
    with pytest.raises(SystemExit) as exit_info:
        script_util.parse_cli(groups, ["--size", "4"], description="", required={"input": "the npz", "out_dir": "where"})
    assert exit_info.value.code == 2
    assert "error: required: --input (the npz); --out_dir (where)\n" in capsys.readouterr().err
    _, args = script_util.parse_cli(groups, ["--input", "a.npz", "--out_dir", "o"], description="",
                                    required={"input": "the npz"})
    assert (args.input, args.out_dir, args.size) == ("a.npz", "o", 8)
