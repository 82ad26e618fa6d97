"""Integrity, round two (issue 35): one writer per folder, exports that follow their states, divergence that stops
the run, records written after their checks, identity by content, schedules fixed at creation, versioned formats,
and write failures that name the file and the cause. Each test is one case of the issue."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import train

from pagoda import applications as app
from pagoda import checkpoint, run_lock, script_util
from pagoda.latent_store import LatentStore
from pagoda.methods import common
from pagoda.model_io import load_generator, load_teacher
from pagoda.train_util import DivergedError, LayoutChangedError, OptimSpec, TrainLoop
from tests.helpers.exports import tiny_export
from tests.helpers.launch import mpiexec
from tests.helpers.tiny_runs import TEACHER_FLAGS, teacher_run, tiny_dataset
from tests.helpers.toy import ToyObjective, toy_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
EXPORT = os.path.join("exports", "denoiser_ema0.999.pt")
HOLDER = os.path.join(REPO, "tests", "helpers", "lock_holder.py")


def _sidecar(path):
    with open(checkpoint.sidecar_path(str(path))) as f:
        return json.load(f)


def _config(run_dir):
    with open(os.path.join(str(run_dir), "config.json")) as f:
        return json.load(f)


# -- one writer per folder --------------------------------------------------------------------------------------
def _train_cmd(run_dir, data, *extra):
    return [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--method", "diffusion", "--data_dir", data,
            "--run_dir", str(run_dir), *TEACHER_FLAGS, *extra]


def _wait_for_holder(folder, pid, timeout=120):
    path = run_lock.lock_path(str(folder))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and f'"pid": {pid},' in open(path).read():
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never took the lock of {folder}")


def test_second_training_job_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    """The issue's case: two train.py on one --run_dir interleaved, and config.json kept the loser's lr."""
    data = tiny_dataset(tmp_path)
    run = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(run, data, "--total_steps", "100000", "--save_interval", "100000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait_for_holder(run, first.pid)
        second = subprocess.run(_train_cmd(run, data, "--lr", "0.01"), capture_output=True, text=True, env=ENV,
                                timeout=300)
        assert second.returncode == 1
        assert (f"FolderLockedError: the run directory {run} is being written by another job (pid {first.pid} on "
                f"{os.uname().nodename}: ") in second.stderr
        assert not os.path.exists(run / "config.json") or _config(run)["lr"] != 0.01  # the refused job wrote none
        assert first.poll() is None  # the first job goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed, it holds nothing: the lock is never stale
    again = subprocess.run(_train_cmd(run, data, "--lr", "0.01"), capture_output=True, text=True, env=ENV,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _config(run)["lr"] == 0.01


def test_lock_is_refused_in_process_and_released_on_exit(tmp_path):
    with run_lock.hold(str(tmp_path), what="sample folder"):
        holder = json.load(open(run_lock.lock_path(str(tmp_path))))
        assert holder["pid"] == os.getpid()
        with pytest.raises(run_lock.FolderLockedError, match=rf"^the sample folder {tmp_path} is being written by "
                                                             rf"another job \(pid {os.getpid()} on "):
            with run_lock.hold(str(tmp_path), what="sample folder"):
                pass
    with run_lock.hold(str(tmp_path)):  # released by the block's end
        pass


def test_sample_and_encode_jobs_take_the_lock_of_their_folder(tmp_path):
    teacher = tiny_export(tmp_path / "teacher.pt")
    for script, argv in (("sample.py", ["--model", teacher, "--num_samples", "2", "--num_steps", "2"]),
                         ("encode.py", ["--teacher", teacher, "--data_dir", tiny_dataset(tmp_path), "--num_steps",
                                        "2"])):
        out = tmp_path / script
        holder = subprocess.Popen([sys.executable, HOLDER, str(out), "600"], stdout=subprocess.PIPE, text=True,
                                  env=ENV)
        try:
            assert holder.stdout.readline() == "rank 0 holds\n"
            refused = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), "--out_dir", str(out),
                                      *argv], capture_output=True, text=True, env=ENV, timeout=300)
            assert refused.returncode == 1
            assert f"is being written by another job (pid {holder.pid} on " in refused.stderr
            assert sorted(os.listdir(out)) == [".pagoda.lock"]  # not even a log was written
        finally:
            holder.kill()
            holder.wait()


@pytest.mark.slow
def test_the_ranks_of_one_mpi_job_share_the_lock_and_a_second_job_is_refused(tmp_path):
    cmd = [mpiexec(), "-n", "2", sys.executable, HOLDER, str(tmp_path)]
    first = subprocess.Popen(cmd + ["30"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        seen = ""
        while not ("rank 0 holds" in seen and "rank 1 holds" in seen):  # the ranks' lines may arrive interleaved
            line = first.stdout.readline()
            assert line, f"the job ended before both ranks held the lock: {seen!r}"
            seen += line
        assert seen.count("holds") == 2 and "refused" not in seen, seen
        second = subprocess.run(cmd + ["0"], capture_output=True, text=True, env=ENV, timeout=120)
        assert second.stdout.count("refused: the folder") == 2, second.stdout + second.stderr
    finally:
        first.kill()
        first.wait()


# -- exports follow states --------------------------------------------------------------------------------------
@pytest.fixture
def data(tmp_path):
    return tiny_dataset(tmp_path)


def test_export_that_failed_on_a_full_disk_is_rewritten_on_rerun(tmp_path, data, monkeypatch):
    """The issue's case: a full disk during the last export, then a rerun said "done" over the step-2 export."""
    run = tmp_path / "run"
    save, armed = torch.save, {}

    def full_disk_after_the_last_state(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4 and "players" in obj:
            armed["yes"] = True
        elif armed:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_after_the_last_state)
    with pytest.raises(checkpoint.WriteError, match=rf"^\[Errno 28\] could not write {run}/{EXPORT}: the disk is "
                                                    r"full \(No space left on device\)\. "):
        teacher_run(run, data, "--total_steps", "4")
    monkeypatch.setattr(torch, "save", save)
    assert _sidecar(run / EXPORT)["step"] == 2
    teacher_run(run, data, "--total_steps", "4")
    assert _sidecar(run / EXPORT)["step"] == 4
    state = checkpoint.torch_load(str(run / "checkpoints" / "state_0000004.pt"))
    log = open(run / "log.txt").read()
    assert (f"exports rewritten from the training state of step 4:\n  {run}/{EXPORT}: holds step 2" in log)
    denoiser = load_teacher(str(run / EXPORT))
    assert checkpoint.weights_digest(denoiser.backbone.state_dict()) != checkpoint.weights_digest(
        state["players"]["denoiser"]["model"])  # the export is the EMA's, not the raw weights
    assert "done: exports in" in log


def test_export_killed_between_weights_and_sidecar_is_rewritten_on_rerun(tmp_path, data):
    """The issue's case: SIGKILL between the final export's weights and its sidecar left a pair every consumer
    refuses ("re-export the network"), and no command re-exported it."""
    run = tmp_path / "run"
    killed = subprocess.run(_train_cmd(run, data, "--total_steps", "4"), capture_output=True, text=True, timeout=300,
                            env=dict(ENV, PAGODA_KILL_AT="export.weights_written:2"))  # the step-4 export
    assert killed.returncode == -signal.SIGKILL
    with pytest.raises(ValueError, match=r"do not match the content hash written at export: .*re-export the network"):
        load_teacher(str(run / EXPORT))  # step-4 weights beside the step-2 sidecar
    rerun = subprocess.run(_train_cmd(run, data, "--total_steps", "4"), capture_output=True, text=True, timeout=300,
                           env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"exports rewritten from the training state of step 4:\n  {run}/{EXPORT}: holds step 2" in rerun.stdout
    assert _sidecar(run / EXPORT)["step"] == 4
    load_teacher(str(run / EXPORT))


def test_a_run_is_done_only_when_its_exports_verify(tmp_path, data, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "export_network", lambda *a, **k: None)  # an export that never lands
    with pytest.raises(RuntimeError, match=rf"^{run} is not done: its exports do not match the training state of "
                                           rf"step 2:\n  {run}/{EXPORT}: missing"):
        teacher_run(run, data)


# -- divergence stops the run -----------------------------------------------------------------------------------
def test_divergence_stops_the_run_keeps_the_last_state_and_does_not_export(tmp_path, data):
    """The issue's case: --lr 1e6 skipped 4 of 6 updates, said "done" and exported weights of 1e6."""
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^training diverged at step \d+: denoiser skipped 4 updates in a row "
                                            r"\(4 in all\) for non-finite values, more than the 3 in a row or 10 in "
                                            r"all allowed\. Stopped without saving or exporting; the newest training "
                                            r"state .*state_\d+\.pt is kept\."):
        teacher_run(run, data, "--total_steps", "8", "--lr", "1e6", "--optimizer", "adam")
    assert not os.path.exists(run / EXPORT) or _sidecar(run / EXPORT)["step"] <= 2
    assert checkpoint.CheckpointManager(str(run)).states()


def test_divergence_stops_every_method_in_the_one_loop(tmp_path):
    """A toy objective whose loss turns NaN at step 3: the loop stops after 3 more skips, whatever the method."""
    class Diverging(ToyObjective):
        def losses(self, player, nets, batch, *, step, generator):
            terms = super().losses(player, nets, batch, step=step, generator=generator)
            return dict(terms, loss=terms["loss"] * (float("nan") if step >= 3 else 1.0))

    loop = TrainLoop(objective=Diverging(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                     optim={"model": OptimSpec(lr=1e-2), "critic": OptimSpec(lr=1e-2)}, total_steps=20,
                     save_interval=100)
    with pytest.raises(DivergedError, match=r"^training diverged at step 6: model skipped 4 updates in a row"):
        loop.run()
    assert checkpoint.CheckpointManager(str(tmp_path)).states() == []


def test_skip_counts_survive_a_resume(tmp_path):
    loop = TrainLoop(objective=ToyObjective(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                     total_steps=2, save_interval=2)
    loop.players["model"].skipped_total = 7
    loop.players["model"].skipped_in_a_row = 0
    loop.run()
    again = TrainLoop(objective=ToyObjective(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                      total_steps=2, save_interval=2)
    assert again.players["model"].skipped_total == 7


# -- records after checks ---------------------------------------------------------------------------------------
def test_refused_command_leaves_no_config_json(tmp_path, data):
    """The issue's case: config.json deleted, a rerun with another architecture wrote its config before its layout
    error, and the right command was then refused."""
    run = tmp_path / "run"
    teacher_run(run, data)
    os.remove(run / "config.json")
    with pytest.raises(LayoutChangedError):
        teacher_run(run, data, "--model_channels", "64")
    assert not os.path.exists(run / "config.json")
    teacher_run(run, data, "--total_steps", "4")
    assert _config(run)["model_channels"] == 32


def test_deleting_config_json_does_not_bypass_the_settings_check(tmp_path, data):
    """The training state carries the settings it was saved with: without config.json they are checked against it."""
    run = tmp_path / "run"
    teacher_run(run, data)
    os.remove(run / "config.json")
    with pytest.raises(script_util.ConfigChangeError, match=r"--lr: 0\.001 -> 0\.01"):
        teacher_run(run, data, "--lr", "0.01", "--total_steps", "4")
    assert not os.path.exists(run / "config.json")
    teacher_run(run, data, "--total_steps", "4")
    assert "the settings were checked against those its newest training state carries" in open(run / "log.txt").read()


def test_fewer_total_steps_than_done_are_refused_and_the_record_stays_true(tmp_path, data):
    run = tmp_path / "run"
    teacher_run(run, data, "--total_steps", "4")
    before = open(run / "config.json").read()
    with pytest.raises(ValueError, match=rf"^{run} has already trained 4 steps \(.*state_0000004\.pt\) but "
                                         r"--total_steps is 2: a run never goes back\."):
        teacher_run(run, data, "--total_steps", "2")
    assert open(run / "config.json").read() == before


# -- identity by content ----------------------------------------------------------------------------------------
def test_apply_refuses_a_generator_distilled_from_another_teacher(tmp_path):
    """The issue's case: apply.py --teacher B --generator G ran although G's sidecar names teacher A."""
    teacher_a, teacher_b = tiny_export(tmp_path / "a.pt"), tiny_export(tmp_path / "b.pt", seed=1)
    path = str(tmp_path / "g.pt")
    tiny_export(path, "generator")
    side = _sidecar(path)
    side["teacher_sha256"] = load_teacher(teacher_a).backbone.content_sha256
    state_dict = checkpoint.torch_load(path)
    checkpoint.export_network(state_dict, side, path)
    generator = load_generator(path)
    app.check_models(load_teacher(teacher_a), generator, teacher_path=teacher_a, generator_path=path)
    with pytest.raises(ValueError, match=rf"^the generator {path} was distilled from another teacher \(content hash "
                                         rf"{side['teacher_sha256'][:12]}\) than {teacher_b} "):
        app.check_models(load_teacher(teacher_b), generator, teacher_path=teacher_b, generator_path=path)


def test_a_moved_dataset_with_the_same_digest_resumes():
    """A bundled dataset's recorded origin is the package's file: a moved virtual environment changed it."""
    recorded = {"data_dir": "bundled:mnist", "dataset": "/old/venv/mnist.csv",
                "dataset_identity": {"origin": "/old/venv/mnist.csv", "digest": "abc", "num_images": 5}}
    moved = json.loads(json.dumps(recorded).replace("/old/venv", "/new/venv"))
    classes = common.RECORD_CLASSES
    assert script_util.check_resume(recorded, moved, allow_change=False, flags=set(), classes=classes,
                                    run_dir="r") == [
        ("dataset", "/old/venv/mnist.csv", "/new/venv/mnist.csv", "free"),
        ("dataset_identity.origin", "/old/venv/mnist.csv", "/new/venv/mnist.csv", "free")]
    other = json.loads(json.dumps(moved).replace("abc", "def"))
    with pytest.raises(script_util.ConfigChangeError, match=r"dataset_identity\.digest: 'abc' -> 'def'"):
        script_util.check_resume(recorded, other, allow_change=True, flags=set(), classes=classes, run_dir="r")


def _sample(model, out):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "sample.py"), "--model", str(model),
                           "--out_dir", str(out), "--num_samples", "4", "--chunk_size", "2", "--num_steps", "2"],
                          capture_output=True, text=True, timeout=300, env=ENV)


def test_sampler_knows_a_model_by_content_not_by_path(tmp_path):
    """The issue's case: the same export reached through a symlink was "another model"."""
    model = tiny_export(tmp_path / "teacher.pt")
    link = tmp_path / "link"
    link.mkdir()
    for name in ("teacher.pt", "teacher.json"):
        os.symlink(tmp_path / name, link / name)
    out = tmp_path / "s"
    assert _sample(model, out).returncode == 0
    parts = {p: os.stat(out / "parts" / p).st_mtime_ns for p in ("part_000000.npz", "part_000001.npz")}
    again = _sample(link / "teacher.pt", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: os.stat(out / "parts" / p).st_mtime_ns for p in parts} == parts  # reused, not made again
    with open(out / "parts" / "identity.json") as f:
        assert json.load(f)["model_sha256"] == _sidecar(model)["content_sha256"]


# -- schedules fixed at creation --------------------------------------------------------------------------------
def test_extending_a_run_does_not_silently_rebuild_its_lr_anneal():
    """The issue's case: a guidance run extended from 4 to 6 steps rebuilt the anneal for 6 steps (the rate jumped
    from 1.25e-4 back to 1.67e-4) and logged it as a free change."""
    made = train.anneal_record({"generator": OptimSpec(lr=5e-4, decay_steps=4)})
    extended = train.anneal_record({"generator": OptimSpec(lr=5e-4, decay_steps=6)})
    assert made == {"lr_anneal": {"generator_steps": 4}}
    with pytest.raises(script_util.ConfigChangeError, match=r"lr_anneal\.generator_steps: 4 -> 6 \(the learning-rate "
                                                            r"anneal's length in optimiser steps, fixed when the run "
                                                            r"was created; allowing the change"):
        script_util.check_resume({"total_steps": 4, **made}, {"total_steps": 6, **extended}, allow_change=False,
                                 flags=set(), classes={"total_steps": "free"}, run_dir="r")
    assert script_util.check_resume({"total_steps": 4, **made}, {"total_steps": 6, **extended}, allow_change=True,
                                    flags=set(), classes={"total_steps": "free"}, run_dir="r")[1] == ("total_steps", 4, 6, "free")
    assert train.anneal_record({"denoiser": OptimSpec(lr=1e-4)}) == {}  # no anneal, no record: old runs unchanged


# -- versioned formats ------------------------------------------------------------------------------------------
def _toy_state(tmp_path):
    loop = TrainLoop(objective=ToyObjective(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                     total_steps=2, save_interval=2)
    loop.run()
    path = loop.ckpt.path(2)
    return path, checkpoint.torch_load(path)


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s.update(format_version=2), "its format version is 2, this code reads version 1"),
    (lambda s: s["players"]["model"].pop("ema"), "network 'model': entries missing: ['ema']; unknown entries: none"),
    (lambda s: s.update(extra=1), "entries missing: none; unknown entries: ['extra']"),
])
def test_training_state_of_another_format_is_refused_naming_the_file(tmp_path, edit, problem):
    path, state = _toy_state(tmp_path)
    assert state["format_version"] == 1
    edit(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"^{path} is not a training state this code can resume: "
                                         rf"{problem.replace('[', '.').replace(']', '.').replace('(', '.')}"):
        TrainLoop(objective=ToyObjective(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                  total_steps=4)


def test_training_state_without_a_version_reads_as_version_1(tmp_path):
    path, state = _toy_state(tmp_path)
    del state["format_version"], state["players"]["model"]["skipped_total"]
    torch.save(state, path)
    assert TrainLoop(objective=ToyObjective(), data=toy_data(8), run_dir=str(tmp_path), global_batch_size=8,
                     total_steps=4).step == 2


def test_latent_manifest_of_an_unknown_format_is_refused(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "pagoda-latents-v9"}))
    with pytest.raises(ValueError, match=rf"^{path} has the format 'pagoda-latents-v9', which this code does not "
                                         r"read \(it reads pagoda-latents-v1, pagoda-guided-pairs-v1\)"):
        LatentStore(str(tmp_path)).manifest()
    path.write_text(json.dumps({"teacher": "t"}))  # written before the format entry: data latents
    assert LatentStore(str(tmp_path)).manifest() == {"teacher": "t"}


# -- errors that name the file and the cause; permissions -------------------------------------------------------
def test_full_disk_names_the_file_and_the_cause_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.pt")
    checkpoint.atomic_save({"a": 1}, path)

    def full(obj, f, *args, **kwargs):
        f.write(b"x" * 6080)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.WriteError, match=rf"^\[Errno 5\] could not write {path}: RuntimeError: .*file "
                                                    r"write failed; [\d.]+ MiB are free there \(a full disk is the "
                                                    r"usual cause\)\. Any earlier file of that name is unchanged"):
        checkpoint.atomic_save({"a": 2}, path)
    assert checkpoint.torch_load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.pt"]  # no temp file left


def test_read_only_folder_and_full_disk_for_latents_and_samples_name_the_file(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", read_only)
    target = str(tmp_path / "config.json")
    with pytest.raises(checkpoint.WriteError, match=rf"^\[Errno 30\] could not write {target}: the folder {tmp_path} "
                                                    r"is not writable \(Read-only file system: read-only, or owned "
                                                    r"by another user\)"):
        checkpoint.atomic_write_text("{}", target)
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    store = LatentStore(str(tmp_path / "latents"))
    with pytest.raises(checkpoint.WriteError, match=rf"could not write {store.npy_path(0)}: the disk is full"):
        store.write_chunk(0, np.zeros((1, 3, 2, 2), np.float32), ids=["a"], flips=[False], indices=[0])


def test_files_get_the_umask_permissions(tmp_path, data):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        teacher_run(run, data)
    finally:
        os.umask(old)
    for rel in (EXPORT, checkpoint.sidecar_path(EXPORT), "config.json", "checkpoints/state_0000002.pt"):
        assert oct(os.stat(run / rel).st_mode & 0o777) == "0o644", rel
