"""Faults and resumes: damaged newest training states, jobs killed at seeded points (PAGODA_KILL_AT,
pagoda/faults.py) or stopped and rerun, resuming with changed settings. A rerun's outputs equal an uninterrupted
run's, and nothing half-made is ever used."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda import checkpoint, faults, script_util
from pagoda.latent_store import LatentStore
from pagoda.pair_datasets import PairDataset
from tests.helpers.launch import mpiexec
from tests.helpers.methods import train
from tests.helpers.exports import tiny_export as _export
from tests.helpers.tiny_runs import STAGE2_FLAGS, TEACHER_FLAGS, encode_run, stage2_run, teacher_run, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "helpers", "toy_train.py")


def _toy(run_dir, steps, *extra, check=True, nproc=1):
    cmd = [sys.executable, TOY, str(run_dir), str(steps), *extra]
    if nproc > 1:
        cmd = [mpiexec(), "-n", str(nproc), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
    # the processes' own output in the failure report: a rare exit-time abort under mpiexec is otherwise opaque
    assert not check or out.returncode == 0, (f"{cmd} exited {out.returncode}\n{out.stdout[-3000:]}\n"
                                              f"{out.stderr[-3000:]}")
    return out


def _same_final(run_a, run_b):
    a, b = (torch.load(os.path.join(str(r), "final.pt"), weights_only=True) for r in (run_a, run_b))
    return all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _steps(run_dir):
    return [step for step, _ in checkpoint.CheckpointManager(str(run_dir)).states()]


# -- checkpoint retention ------------------------------------------------------------------------------------
def test_two_damaged_newest_states_with_keep_2_lose_no_progress(tmp_path):
    """The issue's case: keep-last-2 counted the two truncated newest files, so each new good state was deleted
    right after it was written, and the next kill lost everything."""
    _toy(tmp_path / "ref", 12, "--keep", "2")
    run = tmp_path / "run"
    assert _toy(run, 12, "--keep", "2", "--kill_at", "10", check=False).returncode == -9
    assert _steps(run) == [9, 6]
    for step in (9, 6):
        _truncate(checkpoint.CheckpointManager(str(run)).path(step))
    rerun = _toy(run, 12, "--keep", "2", "--kill_at", "5", check=False)  # starts over, saves 3, killed at 5
    assert rerun.returncode == -9
    assert rerun.stdout.count("skipping unreadable checkpoint") == 2 and "resumed from" not in rerun.stdout
    assert _steps(run) == [9, 6, 3]
    assert checkpoint.CheckpointManager(str(run)).load_latest(log=lambda *a: None)["step"] == 3
    final = _toy(run, 12, "--keep", "2")
    assert f"resumed from step 3 ({run}/checkpoints/state_0000003.pt)" in final.stdout
    assert _steps(run) == [12, 9]
    assert _same_final(tmp_path / "ref", run)


@pytest.mark.slow
def test_kill_and_rerun_on_two_processes_keeps_each_ranks_global_draws(tmp_path):
    """Dropout-like noise from the global generator differs by rank; a resume restores each rank's own stream
    (restoring rank 0's on every rank made the ranks draw alike from then on)."""
    _toy(tmp_path / "ref", 8, "--global_noise", nproc=2)
    assert _toy(tmp_path / "run", 8, "--global_noise", "--kill_at", "5", nproc=2, check=False).returncode != 0
    assert _steps(tmp_path / "run") == [3]
    rerun = _toy(tmp_path / "run", 8, "--global_noise", nproc=2)
    assert "resumed from step 3" in rerun.stdout
    assert _same_final(tmp_path / "ref", tmp_path / "run")


def test_retention_counts_only_readable_states(tmp_path):
    first = checkpoint.CheckpointManager(str(tmp_path), keep=2)
    for step in (3, 6):
        first.save(step, {"step": step})
        _truncate(first.path(step))
    manager = checkpoint.CheckpointManager(str(tmp_path), keep=2)  # a new process: nothing verified yet
    warnings = []
    for step in (1, 2):
        manager.save(step, {"step": step}, log=warnings.append)
    assert _steps(tmp_path) == [6, 3, 2, 1]
    assert len(warnings) == 2  # each damaged file is read (and reported) once
    manager.save(4, {"step": 4}, log=warnings.append)
    assert _steps(tmp_path) == [6, 4, 3, 2]  # 1 is older than the two newest readable states (4, 2)
    manager.save(5, {"step": 5}, log=warnings.append)
    assert _steps(tmp_path) == [6, 5, 4]
    assert manager.load_latest(log=warnings.append)["step"] == 5


def test_a_killed_save_leaves_no_temp_file_behind(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), keep=2)
    manager.save(1, {"step": 1})
    leftover = tmp_path / "checkpoints" / ".tmp_abc123.pt"
    leftover.write_bytes(b"half a state")
    manager.save(2, {"step": 2})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["state_0000001.pt", "state_0000002.pt"]


# -- resuming with changed settings --------------------------------------------------------------------------
@pytest.fixture
def data(tmp_path):
    return tiny_dataset(tmp_path)


def _history(run_dir):
    path = os.path.join(str(run_dir), script_util.HISTORY_FILE)
    return [json.loads(line) for line in open(path)]


def test_more_steps_resume_and_equal_an_uninterrupted_run(tmp_path, data):
    """Budget and cadence flags change freely (STEPS=1500 bash commands/stage2_mnist.sh on a 1000-step run)."""
    ref = teacher_run(tmp_path / "ref", data, "--total_steps", "4", "--dropout", "0.1")
    run = tmp_path / "run"
    teacher_run(run, data, "--dropout", "0.1")
    grown = teacher_run(run, data, "--dropout", "0.1", "--total_steps", "4", "--log_interval", "2")
    assert "resumed from step 2" in open(run / "log.txt").read()
    sd_ref, sd = checkpoint.torch_load(ref), checkpoint.torch_load(grown)
    assert all(torch.equal(sd_ref[k], sd[k]) for k in sd_ref)
    assert json.load(open(run / "config.json"))["total_steps"] == 4
    [entry] = _history(run)
    assert [(c["key"], c["old"], c["new"], c["class"]) for c in entry["changes"]] == [
        ("log_interval", 1, 2, "free"), ("total_steps", 2, 4, "free")]
    assert entry["newest_state"] == 2


def test_stage2_with_more_steps_resumes_and_equals_an_uninterrupted_run(tmp_path, data):
    teacher = teacher_run(tmp_path / "teacher", data)
    latents = encode_run(tmp_path / "z", teacher, data)
    ref = stage2_run(tmp_path / "ref", teacher, latents, "--total_steps", "4")
    stage2_run(tmp_path / "run", teacher, latents)
    grown = stage2_run(tmp_path / "run", teacher, latents, "--total_steps", "4")
    assert "resumed from step 2" in open(tmp_path / "run" / "log.txt").read()
    sd_ref, sd = checkpoint.torch_load(ref), checkpoint.torch_load(grown)
    assert all(torch.equal(sd_ref[k], sd[k]) for k in sd_ref)


def _killed_then_rerun(script, argv, tmp_path, name):
    """Run `script` killed (SIGKILL) right after its 3rd step (states are saved every 2), then the same command
    again; returns the rerun's stdout."""
    cmd = [sys.executable, os.path.join(REPO, "scripts", script), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env=dict(env, **{faults.ENV: "train.step:3"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    return rerun.stdout


def _equal_exports(a, b):
    sd_a, sd_b = checkpoint.torch_load(a), checkpoint.torch_load(b)
    return sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.slow
def test_killed_teacher_stage2_and_stage3_rerun_equal_uninterrupted_runs(tmp_path, data):
    """Each training stage SIGKILLed mid-run (after step 3, with the last state at step 2) and rerun with the same
    command ends with the exports of an uninterrupted 4-step run, bit for bit."""
    four = ["--total_steps", "4", "--save_interval", "2"]
    teacher_ref = teacher_run(tmp_path / "t_ref", data, *four)
    argv = ["--data_dir", data, "--run_dir", str(tmp_path / "t"), *TEACHER_FLAGS, *four]
    out = _killed_then_rerun("train.py", ["--method", "diffusion", *argv], tmp_path, "teacher")
    assert f"resumed from step 2 ({tmp_path / 't'}/checkpoints/state_0000002.pt)" in out
    assert _equal_exports(teacher_ref, tmp_path / "t" / "exports" / "denoiser_ema0.999.pt")

    latents = encode_run(tmp_path / "z", teacher_ref, data)
    stage2_ref = stage2_run(tmp_path / "s2_ref", teacher_ref, latents, *four)
    argv = ["--init_from", teacher_ref, "--latent_dir", latents, "--run_dir", str(tmp_path / "s2"), *STAGE2_FLAGS,
            *four]
    assert "resumed from step 2" in _killed_then_rerun("train.py", ["--method", "pagoda", *argv], tmp_path, "stage2")
    assert _equal_exports(stage2_ref, tmp_path / "s2" / "exports" / "generator_ema0.999.pt")

    grow = ["--init_from", stage2_ref, "--grow_factor", "2", "--image_size", "16"]
    stage3_ref = stage2_run(tmp_path / "s3_ref", teacher_ref, latents, *grow, *four)
    argv = ["--latent_dir", latents, "--run_dir", str(tmp_path / "s3"), *STAGE2_FLAGS, *grow, *four]
    assert "resumed from step 2" in _killed_then_rerun("train.py", ["--method", "pagoda", *argv], tmp_path, "stage3")
    assert _equal_exports(stage3_ref, tmp_path / "s3" / "exports" / "generator_ema0.999.pt")


def test_allowed_change_is_used_logged_and_kept_in_the_history(tmp_path, data):
    run = tmp_path / "run"
    teacher_run(run, data)
    teacher_run(run, data, "--total_steps", "3", "--lr", "5e-4", "--allow_config_change", "true")
    log = open(run / "log.txt").read()
    assert "settings changed on resume (newest state: step 2):\n  --allow_config_change: False -> True [free]\n" \
           "  --lr: 0.001 -> 0.0005 [guarded]\n  --total_steps: 2 -> 3 [free]\n" in log
    assert "resumed from step 2" in log
    rows = open(run / "progress.csv").read().splitlines()
    lr_column = rows[0].split(",").index("lr/denoiser")
    assert [float(r.split(",")[lr_column]) for r in rows[1:]] == [1e-3, 1e-3, 5e-4]  # steps 1, 2, then 3
    config = json.load(open(run / "config.json"))
    assert config["lr"] == 5e-4 and config["allow_config_change"] is True
    [entry] = _history(run)
    assert {"key": "lr", "old": 1e-3, "new": 5e-4, "class": "guarded"} in entry["changes"]


def test_stage2_recipe_with_more_steps_resolves_to_free_changes_only():
    """`STEPS=1500 bash commands/stage2_mnist.sh` after the recipe's 1000 steps: only total_steps differs, freely."""
    def resolved(steps):
        env = dict(os.environ, PYTHON=sys.executable, STEPS=steps)
        out = subprocess.run(["bash", os.path.join(REPO, "commands", "stage2_mnist.sh"), "--dry_run"], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)

    classes = train.parser_for("pagoda").resume_classes
    assert script_util.config_changes(resolved("1000"), resolved("1500"), classes) == [
        ("total_steps", 1000, 1500, "free")]


# ------------------------------------------------------------------------------------------------------------
# data, sampling, exports and evaluation



def _run(script, *args, kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(faults.ENV, None)
    if kill_at:
        env[faults.ENV] = kill_at
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def _chunks(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.startswith("chunk_")}


def test_data_kill_point_fires_on_the_nth_visit_only(monkeypatch):
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setattr(faults, "_counts", {})
    monkeypatch.setenv(faults.ENV, "encode.chunk_written:2")
    for _ in range(3):
        faults.kill_point("sample.part_written")
        faults.kill_point("encode.chunk_written")
    assert killed == [signal.SIGKILL]


def test_data_killed_reencode_with_other_settings_never_mixes(tmp_path):
    """The issue's case: a finished folder (6 steps) re-encoded with --num_steps 4 and killed after 2 of 6 chunks.
    The folder is refused until the encode finishes; the finished folder equals an uninterrupted 4-step encode."""
    teacher = _export(tmp_path / "teacher.pt")
    rng = np.random.RandomState(0)
    data = str(tmp_path / "data.npz")
    np.savez(data, arr_0=rng.randint(0, 256, (12, 12, 12, 3)).astype(np.uint8), arr_1=np.arange(12) % 4)
    z = tmp_path / "z"

    def encode(folder, steps, kill_at=None):
        return _run("encode.py", "--teacher", teacher, "--data_dir", data, "--out_dir", folder, "--num_steps", steps,
                    "--chunk_size", "4", "--batch_size", "4", kill_at=kill_at)

    assert encode(z, 6).returncode == 0
    killed = encode(z, 4, kill_at="encode.chunk_written:2")
    assert killed.returncode == -signal.SIGKILL
    assert not (z / "manifest.json").exists() and not (z / "index.npz").exists()
    with pytest.raises(FileNotFoundError, match=r"is not a finished latent folder. An encode started here \(.*"
                                                r"encoding.json records its settings\) has not finished"):
        PairDataset(str(z), image_size=8)
    store = LatentStore(str(z))
    steps = [json.loads(open(store.meta_path(c)).read())["settings"]["num_steps"] for c in range(6)]
    assert steps == [4, 4, 6, 6, 6, 6]  # what a consumer of the old manifest would have mixed
    rerun = encode(z, 4)
    assert rerun.returncode == 0 and "written with other settings (num_steps)" in rerun.stdout
    assert encode(tmp_path / "fresh", 4).returncode == 0
    assert _chunks(z) == _chunks(tmp_path / "fresh")
    assert store.manifest()["num_steps"] == 4 and not (z / "encoding.json").exists()
    assert len(PairDataset(str(z), image_size=8)) == 12


def test_sample_killed_job_rerun_equals_uninterrupted(tmp_path):
    generator = _export(tmp_path / "generator.pt", "generator")

    def sample(folder, kill_at=None):
        return _run("sample.py", "--model", generator, "--out_dir", folder, "--num_samples", "10", "--chunk_size",
                    "4", "--batch_size", "2", kill_at=kill_at)

    killed = sample(tmp_path / "s", kill_at="sample.part_written:2")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "s" / "parts")) == ["identity.json", "part_000000.npz", "part_000001.npz"]
    assert not (tmp_path / "s" / "samples_10x8x8x3.npz").exists()
    assert sample(tmp_path / "s").returncode == 0
    assert sample(tmp_path / "ref").returncode == 0
    name = "samples_10x8x8x3.npz"
    with np.load(tmp_path / "s" / name) as a, np.load(tmp_path / "ref" / name) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
