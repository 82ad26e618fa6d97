"""Invalid inputs are refused with a message naming the flag or file (and what to do), never a crash deep inside a
run or a silent result. Each case: the command or call, and the asserted message or exit code."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from evaluations import domain, evaluator
from pagoda import checkpoint, script_util
from pagoda.features import load_weights_file
from pagoda.generator import generator_sidecar
from pagoda.image_datasets import open_source
from pagoda.model_io import load_backbone, load_generator, load_teacher
from pagoda.objectives import teacher_sidecar
from pagoda.unet import UNetModel
from scripts import (compare, encode, make_reference, quickstart_report, sample, train_pagoda, train_teacher,
                     upsample_npz)


TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def _export(path, kind="denoiser", seed=0):
    torch.manual_seed(seed)
    net = UNetModel(**TINY)
    for p in net.parameters():  # zero-initialised output layers would make the network trivial
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    side = generator_sidecar(net) if kind == "generator" else teacher_sidecar(net)
    checkpoint.export_network(net.state_dict(), side, str(path))
    return str(path)


def _data(path, n=12, size=12, num_classes=4):
    rng = np.random.RandomState(0)
    np.savez(path, arr_0=rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8), arr_1=np.arange(n) % num_classes)
    return str(path)


# -- numeric flags, at parse time --------------------------------------------------------------------------------
FLAG_CASES = [
    (encode, ["--chunk_size", "0"], "invalid --chunk_size 0: must be a number >= 1"),
    (encode, ["--batch_size", "-2"], "invalid --batch_size -2: must be a number >= 1"),
    (encode, ["--image_size", "-8"], "invalid --image_size -8: must be a number >= 0"),
    (encode, ["--num_steps", "1"], "invalid --num_steps 1: must be a number >= 2"),
    (encode, ["--flips", "0,0"], "invalid --flips 0,0: must not repeat a value"),
    (encode, ["--flips", "2"], "invalid --flips 2: entry 2 must be one of 0, 1"),
    (encode, ["--storage", "fp61"], "invalid --storage fp61: must be one of fp16, fp32"),
    (encode, ["--sigma_min", "1", "--sigma_max", "0.5"],
     "invalid --sigma_min 1.0 --sigma_max 0.5: the first must be smaller than the second"),
    (train_teacher, ["--global_batch_size", "0"], "invalid --global_batch_size 0: must be a number >= 1"),
    (train_teacher, ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (train_teacher, ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (train_teacher, ["--lr", "nan"], "invalid --lr nan: must be a number >= 0"),
    (train_teacher, ["--ema_rates", "0.999,1.0"], "invalid --ema_rates 0.999,1.0: entry 1.0 must be in [0, 1)"),
    (train_teacher, ["--channel_mult", ""], "invalid --channel_mult : needs at least one value"),
    (train_teacher, ["--preset", "mnist16", "--microbatch", "-1"], "invalid --microbatch -1: must be a number >= 0"),
    (train_pagoda, ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (train_pagoda, ["--grow_factor", "3"], "invalid --grow_factor 3: must be one of 1, 2, 4, 8"),
    (train_pagoda, ["--channel_mult_high", "1,x"], "invalid --channel_mult_high 1,x: entry 'x' must be a number"),
    (train_pagoda, ["--keep_checkpoints", "0"], "invalid --keep_checkpoints 0: must be a number >= 1"),
    (sample, ["--num_samples", "0"], "invalid --num_samples 0: must be a number >= 1"),
    (sample, ["--chunk_size", "0"], "invalid --chunk_size 0: must be a number >= 1"),
    (sample, ["--batch_size", "0"], "invalid --batch_size 0: must be a number >= 1"),
    (sample, ["--labels", "zipf"], "invalid --labels zipf: must be one of uniform, balanced"),
    (compare, ["--num_samples", "1"], "invalid --num_samples 1: must be a number >= 2"),
    (make_reference, ["--num_images", "0"], "invalid --num_images 0: must be a number >= 1"),
    (upsample_npz, ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (quickstart_report, ["--speed_batch", "0"], "invalid --speed_batch 0: must be a number >= 1"),
    (domain, ["--epochs", "0"], "invalid --epochs 0: must be a number >= 1"),
]


@pytest.mark.parametrize("script, argv, message", FLAG_CASES,
                         ids=[f"{s.__name__.split('.')[-1]}{a[0]}" for s, a, _ in FLAG_CASES])
def test_data_invalid_flag_values_stop_at_parse_time(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    assert f"error: {message}\n" in capsys.readouterr().err


def test_eval_evaluator_batch_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main(["ref.npz", "sample.npz", "--batch", "0"])
    assert exit_info.value.code == 2
    assert "argument --batch: must be an integer >= 1, got 0" in capsys.readouterr().err


def _numeric(value):
    if isinstance(value, tuple):
        return any(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("module", [encode, sample, train_teacher, train_pagoda, compare, make_reference,
                                    upsample_npz, quickstart_report, domain])
def test_data_every_numeric_flag_has_a_parse_time_check(module):
    groups = module._flag_defaults() if module is domain else module.GROUPS
    constraints = domain.FLAG_CONSTRAINTS if module is domain else module.CONSTRAINTS
    checked = {f for key in constraints for f in ((key,) if isinstance(key, str) else key)}
    numeric = {k for defaults in groups.values() for k, v in defaults.items() if _numeric(v)}
    assert numeric - checked == set()
    script_util.create_parser(groups, description="", constraints=constraints)  # names only existing flags


def test_data_constraint_on_an_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match=r"constraints name flags that do not exist: \['batch'\]"):
        script_util.create_parser({"g": {"batch_size": 1}}, description="", constraints={"batch": int})


# -- data and latents --------------------------------------------------------------------------------------------
def test_data_truncated_npz_names_the_file(tmp_path):
    data = _data(tmp_path / "data.npz")
    with open(data, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=r"data.npz cannot be read as an npz \(BadZipFile: .*\); the file is "
                                         r"truncated or damaged: write it again"):
        open_source(data)


def test_data_truncated_sample_npz_for_upsampling_names_the_file(tmp_path):
    path = _data(tmp_path / "samples.npz")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(SystemExit) as exit_info:
        upsample_npz.main(["--input", path, "--out_dir", str(tmp_path / "up")])
    assert exit_info.value.code == (f"error: {path} cannot be read as an ADM npz with arr_0 and arr_1 (BadZipFile: "
                                    "File is not a zip file); pass the samples_*.npz that scripts/sample.py wrote")


def test_data_truncated_feature_weights_name_the_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(64)}, path)
    with open(path, "r+b") as f:
        f.truncate(64)
    with pytest.raises(ValueError, match=f"(?s){path} cannot be read as feature-network weights .*; the file is "
                                         "truncated or damaged: download or copy it again"):
        load_weights_file(path)


# -- exports and their sidecars ----------------------------------------------------------------------------------
def test_export_carries_the_content_hash_of_weights_and_sidecar(tmp_path):
    path = _export(tmp_path / "teacher.pt")
    side = checkpoint.read_sidecar(path)
    weights = checkpoint.torch_load(path)
    assert side["content_sha256"] == checkpoint.content_hash(weights, side)
    assert load_backbone(path, expect_kind="denoiser")[0].content_sha256 == side["content_sha256"]
    # one changed weight, or one changed sidecar entry, is another hash
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1
    assert checkpoint.content_hash(weights, side) != side["content_sha256"]
    assert checkpoint.content_hash(checkpoint.torch_load(path), {**side, "sigma_data": 0.6}) != side["content_sha256"]


def _edit_sidecar(path, **changes):
    side = checkpoint.read_sidecar(path)
    side.update(changes)
    checkpoint.atomic_write_text(json.dumps(side), checkpoint.sidecar_path(path))


def test_export_edited_sidecar_is_refused(tmp_path):
    path = _export(tmp_path / "teacher.pt")
    message = (f"{path} and its sidecar {tmp_path / 'teacher.json'} do not match the content hash written at "
               "export: the sidecar was edited or the weights replaced; re-export the network")
    _edit_sidecar(path, sigma_data=0.7)
    with pytest.raises(ValueError) as error:
        load_teacher(path)
    assert str(error.value) == message
    _edit_sidecar(path, sigma_data=0.5, kind="generator")  # sigma_data back, kind changed
    with pytest.raises(ValueError) as error:
        load_generator(path)
    assert str(error.value) == message
    with pytest.raises(ValueError, match=f"{path} is a 'generator' export, but a 'denoiser' is needed here"):
        load_teacher(path)


def test_export_replaced_weights_are_refused(tmp_path):
    path = _export(tmp_path / "teacher.pt")
    other = _export(tmp_path / "other.pt", seed=1)
    shutil.copy(other, path)
    with pytest.raises(ValueError, match="do not match the content hash written at export"):
        load_teacher(path)


def test_export_without_hash_or_sidecar_loads_as_before(tmp_path):
    path = _export(tmp_path / "teacher.pt")
    side = checkpoint.read_sidecar(path)
    del side["content_sha256"]  # a sidecar written before the hash existed
    checkpoint.atomic_write_text(json.dumps(side), checkpoint.sidecar_path(path))
    backbone, _ = load_backbone(path, expect_kind="denoiser")
    assert backbone.content_sha256 == checkpoint.weights_digest(checkpoint.torch_load(path))
    os.remove(checkpoint.sidecar_path(path))  # no sidecar: the released-file path (layout recognition)
    with pytest.raises(ValueError, match="has no architecture sidecar .* matches none of the released layouts"):
        load_teacher(path)


@pytest.mark.parametrize("text, message", [
    ("{ not json", r"(?s)teacher.json is not valid JSON \(.*\); it is the architecture sidecar of .*teacher.pt: "
                   r"restore it or re-export the network"),
    ("[1, 2]", r"teacher.json: a sidecar must be a JSON object with a string 'kind'; re-export the network"),
    ('{"kind": "denoiser", "sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80}',
     r"teacher.json: a 'denoiser' sidecar needs the entry 'unet'; re-export the network"),
    ('{"kind": "denoiser", "unet": {}, "sigma_data": "0.5", "sigma_min": 0.002, "sigma_max": 80}',
     r"teacher.json: entry 'sigma_data' must be int/float, got str '0.5'; re-export the network"),
    ('{"kind": "denoiser", "unet": {}, "sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80, "null_class": true}',
     r"teacher.json: entry 'null_class' must be int/NoneType, got bool True; re-export the network"),
])
def test_export_sidecar_is_validated_against_its_schema(tmp_path, text, message):
    path = _export(tmp_path / "teacher.pt")
    (tmp_path / "teacher.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_teacher(path)


def test_export_truncated_file_names_the_file(tmp_path):
    path = _export(tmp_path / "teacher.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"(?s)teacher.pt cannot be read \(.*\); the file is truncated or damaged: "
                                         r"copy or export it again"):
        load_teacher(path)
