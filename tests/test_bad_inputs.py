"""Invalid inputs are refused with a message that names what is wrong (each case: the call and its exact error)."""

import os
import shutil

import pytest

from pagoda import checkpoint, script_util
from tests.helpers.tiny_runs import encode_run, stage2_run, teacher_run, tiny_dataset


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
