"""Jobs killed at seeded points (PAGODA_KILL_AT, pagoda/faults.py: SIGKILL the n-th time a point is reached) and
rerun: the rerun's outputs equal an uninterrupted run's, and nothing half-made is ever used."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda import checkpoint, faults
from pagoda.generator import generator_sidecar
from pagoda.latent_store import LatentStore
from pagoda.objectives import teacher_sidecar
from pagoda.pair_datasets import PairDataset
from pagoda.unet import UNetModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def _export(path, kind="denoiser"):
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    for p in net.parameters():  # zero-initialised output layers would make the network trivial
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    side = generator_sidecar(net) if kind == "generator" else teacher_sidecar(net)
    checkpoint.export_network(net.state_dict(), side, str(path))
    return str(path)


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
