"""The sampling job: identical output for any process count / batch size, resumable, ADM format, labels."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda import checkpoint
from pagoda.generator import generator_sidecar
from pagoda.precond import teacher_sidecar
from pagoda.sample_util import sample_labels
from pagoda.unet import UNetModel

from tests.helpers.launch import mpiexec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "scripts", "sample.py")
TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def _export(tmp_path, kind, seed=0):
    torch.manual_seed(seed)
    net = UNetModel(**TINY)
    for p in net.parameters():
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    path = str(tmp_path / f"{kind}.pt")
    side = generator_sidecar(net) if kind == "generator" else teacher_sidecar(net)
    checkpoint.export_network(net.state_dict(), side, path)
    return path


def _sample(model, out, *extra, nproc=1):
    cmd = [sys.executable, SAMPLE, "--model", model, "--out_dir", str(out), "--num_samples", "10",
           "--chunk_size", "4", *extra]
    if nproc > 1:
        cmd = [mpiexec(), "-n", str(nproc), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _load(out):
    with np.load(os.path.join(out, "samples_10x8x8x3.npz")) as data:
        return data["arr_0"], data["arr_1"]


def test_generator_samples_are_adm_npz_with_grid(tmp_path):
    _sample(_export(tmp_path, "generator"), tmp_path / "s")
    images, labels = _load(tmp_path / "s")
    assert images.dtype == np.uint8 and images.shape == (10, 8, 8, 3) and labels.shape == (10,)
    assert (tmp_path / "s" / "grid.png").exists() and (tmp_path / "s" / "sampling.json").exists()


def test_batch_size_does_not_change_the_samples(tmp_path):
    model = _export(tmp_path, "teacher")
    _sample(model, tmp_path / "a", "--batch_size", "1", "--num_steps", "4")
    _sample(model, tmp_path / "b", "--batch_size", "4", "--num_steps", "4")
    (a, la), (b, lb) = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert np.array_equal(la, lb)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding may move a pixel by one level


@pytest.mark.slow
def test_one_and_two_processes_write_identical_files(tmp_path):
    model = _export(tmp_path, "generator")
    _sample(model, tmp_path / "one", "--batch_size", "2")
    _sample(model, tmp_path / "two", "--batch_size", "2", nproc=2)
    name = "samples_10x8x8x3.npz"
    assert open(tmp_path / "one" / name, "rb").read() == open(tmp_path / "two" / name, "rb").read()


def test_rerun_completes_missing_and_damaged_parts(tmp_path):
    model = _export(tmp_path, "generator")
    _sample(model, tmp_path / "s")
    reference = _load(tmp_path / "s")
    os.remove(tmp_path / "s" / "parts" / "part_000001.npz")
    with open(tmp_path / "s" / "parts" / "part_000002.npz", "r+b") as f:
        f.truncate(20)
    _sample(model, tmp_path / "s")
    again = _load(tmp_path / "s")
    assert np.array_equal(reference[0], again[0]) and np.array_equal(reference[1], again[1])


def test_rerun_after_retraining_or_new_settings_remakes_the_parts(tmp_path):
    """Parts of another model (same path, re-exported) or other settings are never completed and reported as the
    new model's samples; the same model and settings keep them."""
    model = _export(tmp_path, "teacher")
    _sample(model, tmp_path / "s", "--num_steps", "3")
    part = tmp_path / "s" / "parts" / "part_000000.npz"
    kept = os.stat(part).st_mtime_ns
    samples = tmp_path / "s" / "samples_10x8x8x3.npz"
    assembled = os.stat(samples).st_mtime_ns
    _sample(model, tmp_path / "s", "--num_steps", "3")
    assert os.stat(part).st_mtime_ns == kept
    assert os.stat(samples).st_mtime_ns == assembled  # unchanged samples are not rewritten (evaluator cache)
    first = _load(tmp_path / "s")[0]
    out = _sample(model, tmp_path / "s", "--num_steps", "4").stdout
    assert "3 sample parts were made from another model or settings (num_steps differ)" in out
    _sample(model, tmp_path / "fresh4", "--num_steps", "4")
    assert np.array_equal(_load(tmp_path / "s")[0], _load(tmp_path / "fresh4")[0])
    assert not np.array_equal(first, _load(tmp_path / "s")[0])
    os.remove(tmp_path / "s" / "parts" / "identity.json")  # parts of an older version, without a record
    out = _sample(model, tmp_path / "s", "--num_steps", "4").stdout
    assert "3 sample parts have no record of the model and settings that made them" in out
    (tmp_path / "s" / "parts" / "identity.json").write_text("{ damaged")
    out = _sample(model, tmp_path / "s", "--num_steps", "4").stdout
    assert "3 sample parts have no record" in out
    # "retrain": a different network exported to the same path
    assert _export(tmp_path, "teacher", seed=1) == model
    out = _sample(model, tmp_path / "s", "--num_steps", "4").stdout
    assert "3 sample parts were made from another model or settings (model_sha256 differ)" in out
    _sample(model, tmp_path / "retrained", "--num_steps", "4")
    assert np.array_equal(_load(tmp_path / "s")[0], _load(tmp_path / "retrained")[0])


def test_labels_uniform_per_seed_and_balanced():
    uniform = sample_labels(range(100), num_classes=10, mode="uniform")
    assert torch.equal(uniform[5:10], sample_labels(range(5, 10), num_classes=10, mode="uniform"))
    assert len(set(uniform.tolist())) == 10
    assert sample_labels([0, 11, 23], num_classes=10, mode="balanced").tolist() == [0, 1, 3]
    assert sample_labels([1, 2], num_classes=None) is None
    with pytest.raises(ValueError, match="label mode must be"):
        sample_labels([0], num_classes=10, mode="zipf")


def test_evaluator_reads_what_the_sampler_writes(tmp_path, monkeypatch):
    from evaluations import evaluator
    from evaluations.inception import random_inception

    _sample(_export(tmp_path, "generator"), tmp_path / "s")
    monkeypatch.setattr(evaluator, "load_inception", lambda *a, **k: random_inception(input_size=75))
    path = str(tmp_path / "s" / "samples_10x8x8x3.npz")
    metrics = evaluator.evaluate(path, path)
    assert metrics["num_sample_images"] == 10 and abs(metrics["fid"]) < 1e-3
