"""The PF-ODE encoder job and the latent-pair dataset."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pagoda import checkpoint
from pagoda.encoding import start_state
from pagoda.image_datasets import ImageDataset, infinite_batches, open_source, source_identity
from pagoda.image_util import psnr
from pagoda.latent_store import LatentStore, image_subset
from pagoda.model_io import load_teacher
from pagoda.precond import teacher_sidecar
from pagoda.pair_datasets import PairDataset
from pagoda.random_util import StackedRandomGenerator
from pagoda.sampling import heun_decode, heun_invert, karras_sigmas
from pagoda.unet import UNetModel

from tests.helpers.launch import mpiexec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODE = os.path.join(REPO, "scripts", "encode.py")
TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def _teacher(tmp_path):
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    for p in net.parameters():  # zero-initialised output layers would make the teacher trivial
        p.data.normal_(0, 0.05) if p.ndim > 1 else None
    path = str(tmp_path / "teacher.pt")
    checkpoint.export_network(net.state_dict(), teacher_sidecar(net), path)
    return path


def _dataset(tmp_path, n=12, size=12):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)
    path = str(tmp_path / "data.npz")
    np.savez(path, arr_0=images, arr_1=np.arange(n) % 4)
    return path


def _encode(out_dir, teacher, data, *extra, nproc=1, check=True, wait=True):
    cmd = [sys.executable, ENCODE, "--teacher", teacher, "--data_dir", data, "--out_dir", str(out_dir),
           "--num_steps", "6", "--chunk_size", "4", "--batch_size", "2", *extra]
    if nproc > 1:
        cmd = [mpiexec(), "-n", str(nproc), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=check)


def _chunks(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.startswith("chunk_")}


@pytest.fixture
def job(tmp_path):
    return _teacher(tmp_path), _dataset(tmp_path)


def test_encode_writes_every_item_once_with_manifest(tmp_path, job):
    teacher, data = job
    out = _encode(tmp_path / "z", teacher, data, "--verify", "4")
    store = LatentStore(str(tmp_path / "z"))
    manifest = store.manifest()
    assert manifest["num_images"] == 12 and manifest["flips"] == [0, 1] and manifest["num_chunks"] == 6
    index = store.index()
    assert len(index) == 24 and {f for _, f in index} == {False, True}
    assert "reconstruction PSNR" in out.stdout
    assert store.open_chunk(0).dtype == np.float16
    # verify.json holds the round trip of the first 4 (image, flip) items: decode each stored latent back
    verify = json.loads((tmp_path / "z" / "verify.json").read_text())
    teacher_net, pairs = load_teacher(teacher), PairDataset(str(tmp_path / "z"), image_size=8)
    items = [pairs.load(i, flip=f) for i, f in [(0, False), (0, True), (1, False), (1, True)]]
    x, z, y = (torch.stack([it[k] for it in items]) for k in ("x", "z", "y"))
    decoded = heun_decode(teacher_net, z, karras_sigmas(6), y, clamp_denoised=True).clamp(-1, 1)
    expected = psnr(decoded, x)
    assert verify["num_decoded"] == 4
    assert verify["psnr_mean_db"] == pytest.approx(expected.mean().item(), abs=1e-3)
    assert verify["psnr_min_db"] == pytest.approx(expected.min().item(), abs=1e-3)


def test_latents_are_the_teacher_inversion_of_their_image(tmp_path, job):
    teacher_path, data = job
    _encode(tmp_path / "z", teacher_path, data, "--storage", "fp32")
    teacher = load_teacher(teacher_path)
    images = ImageDataset(open_source(data), image_size=8)
    pairs = PairDataset(str(tmp_path / "z"), image_size=8)
    sigmas = karras_sigmas(6)
    for i, flip in [(0, False), (5, True), (11, False)]:
        item = pairs.load(i, flip=flip)
        ref = images.load(i, flip=flip)
        assert torch.equal(item["x"], ref["x"]) and item["y"] == ref["y"]
        z = heun_invert(teacher, ref["x"][None], sigmas, ref["y"][None])[0]
        torch.testing.assert_close(item["z"], z, rtol=1e-3, atol=1e-3)  # batch-size rounding only
    # the flipped latent belongs to the flipped image, not to the unflipped one
    assert not torch.allclose(pairs.load(5, flip=True)["z"], pairs.load(5, flip=False)["z"])


def test_pair_shards_are_disjoint_and_the_stream_keeps_flips_paired(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data, "--storage", "fp32")
    shards = [set(PairDataset(str(tmp_path / "z"), image_size=8, shard=s, num_shards=2).ids) for s in (0, 1)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 12
    pairs = PairDataset(str(tmp_path / "z"), image_size=8)
    table = [(pairs.load(i, flip=f), f) for i in range(12) for f in (False, True)]
    stream = infinite_batches(pairs, batch_size=4, seed=0)
    flips = []
    for _ in range(6):  # two epochs
        batch = next(stream)
        for x, z in zip(batch["x"], batch["z"]):
            (item, flip), = [(it, f) for it, f in table if torch.equal(it["x"], x)]
            assert torch.equal(item["z"], z)  # the latent of the same image and the same flip
            flips.append(flip)
    assert 0 < sum(flips) < len(flips)  # both flips are drawn


def test_pairs_at_a_higher_image_resolution(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data)
    pairs = PairDataset(str(tmp_path / "z"), image_size=16)
    item = pairs.load(3, flip=True)
    assert item["x"].shape == (3, 16, 16) and item["z"].shape == (3, 8, 8)


@pytest.mark.slow
def test_one_and_two_processes_write_identical_latents(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "one", teacher, data)
    _encode(tmp_path / "two", teacher, data, nproc=2)
    assert _chunks(tmp_path / "one") == _chunks(tmp_path / "two")


@pytest.mark.slow
def test_killed_run_then_rerun_gives_exactly_the_complete_set(tmp_path, job):
    teacher, data = job
    data = _dataset(tmp_path, n=40)
    _encode(tmp_path / "ref", teacher, data)
    proc = _encode(tmp_path / "crash", teacher, data, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(tmp_path / "crash" / "chunk_000001.json"):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not os.path.exists(tmp_path / "crash" / "manifest.json"), "the job finished before it was killed"
    done_before = [n for n in os.listdir(tmp_path / "crash") if n.endswith(".json")]
    _encode(tmp_path / "crash", teacher, data)
    assert _chunks(tmp_path / "ref") == _chunks(tmp_path / "crash")
    assert len(done_before) < 20


def test_truncated_chunk_is_detected_and_redone(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data)
    reference = _chunks(tmp_path / "z")
    store = LatentStore(str(tmp_path / "z"))
    path = store.npy_path(2)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    assert store.check_chunk(2).startswith("unreadable")
    out = _encode(tmp_path / "z", teacher, data)
    assert "chunk 2: unreadable" in out.stdout
    assert _chunks(tmp_path / "z") == reference


def test_flipped_bytes_fail_the_checksum(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data)
    store = LatentStore(str(tmp_path / "z"))
    path = store.npy_path(1)
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    assert store.check_chunk(1) == "checksum mismatch (damaged data)"


def test_missing_latent_names_the_image(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data, "--flips", "0")
    pairs = PairDataset(str(tmp_path / "z"), image_size=8)
    assert not pairs.random_flip
    assert not pairs.load(0, flip=True)["x"].equal(ImageDataset(open_source(data), image_size=8).load(0, flip=True)["x"])
    with pytest.raises(KeyError, match="no flipped latent for image 'data/000003'"):
        pairs.latent("data/000003", True)


def test_unfinished_latent_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished latent folder"):
        PairDataset(str(tmp_path), image_size=8)


def test_wrong_teacher_file_errors(tmp_path, job):
    _, data = job
    out = _encode(tmp_path / "z", str(tmp_path / "absent.pt"), data, check=False)
    assert out.returncode != 0 and "denoiser checkpoint not found" in out.stderr


def test_other_solver_settings_redo_the_chunks(tmp_path, job):
    teacher, data = job
    _encode(tmp_path / "z", teacher, data)
    first = _chunks(tmp_path / "z")
    out = _encode(tmp_path / "z", teacher, data, "--num_steps", "4")
    assert "written with other settings (num_steps)" in out.stdout
    second = _chunks(tmp_path / "z")
    assert second["chunk_000000.npy"] != first["chunk_000000.npy"]
    assert LatentStore(str(tmp_path / "z")).manifest()["num_steps"] == 4


def test_latents_are_refused_for_another_dataset(tmp_path, job):
    """The manifest records the dataset's identity; pairing its latents with other images (same ids, same count,
    one pixel changed) is an error naming both, never a silent mix."""
    teacher, data = job
    _encode(tmp_path / "z", teacher, data, "--flips", "0", "--storage", "fp32")
    manifest = LatentStore(str(tmp_path / "z")).manifest()
    assert manifest["dataset"] == source_identity(open_source(data))
    with np.load(data) as arrays:
        images, labels = arrays["arr_0"].copy(), arrays["arr_1"]
    images[5, 0, 0, 0] ^= 1
    other = str(tmp_path / "other" / "data.npz")  # same file name, so the same ids
    os.makedirs(os.path.dirname(other))
    np.savez(other, arr_0=images, arr_1=labels)
    assert PairDataset(str(tmp_path / "z"), image_size=8, data_dir=data).ids == open_source(data).ids
    with pytest.raises(ValueError, match=r"encoded from another dataset than .*other/data.npz: recorded 12 images"):
        PairDataset(str(tmp_path / "z"), image_size=8, data_dir=other)


def test_manifest_without_identity_needs_every_encoded_id(tmp_path, job):
    """Folders encoded before the identity was recorded: ids of another dataset (the 5k digits' 'mnist/...' ids
    under the renamed bundled:mnist) are refused with the way out."""
    teacher, data = job
    _encode(tmp_path / "z", teacher, data, "--flips", "0", "--storage", "fp32")
    path = tmp_path / "z" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["dataset"]
    path.write_text(json.dumps(manifest))
    assert len(PairDataset(str(tmp_path / "z"), image_size=8)) == 12  # the right data still pairs
    index = dict(np.load(tmp_path / "z" / "index.npz"))
    index["ids"] = np.array([f"mnist/{i:06d}" for i in range(12)])
    np.savez(tmp_path / "z" / "index.npz", **index)
    with pytest.raises(ValueError, match=r"12 of their image ids, e.g. 'mnist/000000', are not in it \(ids "
                                         r"'mnist/...' are the 5,000-digit set, now named bundled:mnist5k\)"):
        PairDataset(str(tmp_path / "z"), image_size=8)


@pytest.mark.slow
def test_stage2_runs_on_two_processes_with_identical_projections(tmp_path, job):
    """The real PaGoDA objective under DDP (gloo): G and D updates, per-rank batches, the rank-consistency check of
    the frozen random projections, exports."""
    teacher, data = job
    _encode(tmp_path / "z", teacher, data)
    cmd = [mpiexec(), "-n", "2", sys.executable,
           os.path.join(REPO, "scripts", "train.py"), "--method", "pagoda", "--init_from", teacher, "--latent_dir", str(tmp_path / "z"),
           "--run_dir", str(tmp_path / "run"), "--feature_networks", "tiny", "--global_batch_size", "4",
           "--total_steps", "4", "--save_interval", "2", "--log_interval", "2", "--preview_interval", "4",
           "--lr_generator", "1e-3", "--d_channel_scale", "0.25"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world size 2 | per-rank batch 2 | global batch 4" in out.stdout
    assert os.path.exists(tmp_path / "run" / "exports" / "generator_ema0.999.pt")


def test_image_subset_is_a_seeded_sorted_draw():
    assert image_subset(5) == image_subset(5, 0) == image_subset(5, 9) == [0, 1, 2, 3, 4]
    subset = image_subset(1000, 100)
    assert subset == sorted(set(subset)) and len(subset) == 100 and subset == image_subset(1000, 100)
    assert subset != list(range(100)) and subset != image_subset(1000, 100, seed=1)
    assert max(subset) > 900  # spread over the whole dataset, not its head


def test_limit_draws_from_every_class_of_a_class_sorted_dataset(tmp_path, job):
    """--limit on a dataset stored class by class: the first 6 images would be classes 0 and 1 only."""
    teacher, _ = job
    rng = np.random.RandomState(1)
    data = str(tmp_path / "sorted.npz")
    np.savez(data, arr_0=rng.randint(0, 256, (12, 12, 12, 3)).astype(np.uint8), arr_1=np.repeat(np.arange(4), 3))
    _encode(tmp_path / "z", teacher, data, "--limit", "6", "--flips", "0", "--storage", "fp32")
    manifest = LatentStore(str(tmp_path / "z")).manifest()
    assert manifest["num_images"] == 6 and manifest["source_images"] == 12 and manifest["limit"] == 6
    images = ImageDataset(open_source(data), image_size=8)
    pairs = PairDataset(str(tmp_path / "z"), image_size=8)
    chosen = image_subset(12, 6)
    assert pairs.ids == [images.ids[i] for i in chosen] and len(pairs) == 6
    assert len({images.labels[i] for i in chosen}) >= 3
    sigmas, net = karras_sigmas(6), load_teacher(teacher)
    for k, i in enumerate(chosen):  # each kept pair is its own image with its own latent
        item, ref = pairs.load(k), images.load(i)
        assert torch.equal(item["x"], ref["x"]) and item["y"] == ref["y"]
        z = heun_invert(net, ref["x"][None], sigmas, ref["y"][None])[0]
        torch.testing.assert_close(item["z"], z, rtol=1e-3, atol=1e-3)


def test_start_noise_makes_point_mass_latents_prior_samples():
    """Data that is one point c has the exact denoiser D = c and the PF-ODE x(sigma) = c + sigma * n. Started at
    clean c, the encoder stays at c (the mode problem, in the extreme); started at c + s * n, it lands on
    c + sigma_max * n, a sample of the prior, with n drawn from each item's own (image index, flip) seed."""
    c = torch.full((3, 3, 4, 4), 0.3)

    def point_mass(x, sigma, y=None):
        return c[:len(x)].clone()

    part = [(4, False), (4, True), (7, False)]
    clean = heun_invert(point_mass, start_state(c, part, 0.0), karras_sigmas(6))
    torch.testing.assert_close(clean, c)
    z = heun_invert(point_mass, start_state(c, part, 0.05), karras_sigmas(6, sigma_min=0.05))
    n = StackedRandomGenerator("cpu", [8, 9, 14]).randn((3, 3, 4, 4))
    torch.testing.assert_close(z, c + 80 * n, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(start_state(c[:1], [(7, False)], 0.05), start_state(c, part, 0.05)[2:])


def test_start_sigma_latents_invert_their_noisy_image(tmp_path, job):
    teacher_path, data = job
    _encode(tmp_path / "z", teacher_path, data, "--storage", "fp32", "--start_sigma", "0.05", "--verify", "2")
    teacher, pairs = load_teacher(teacher_path), PairDataset(str(tmp_path / "z"), image_size=8)
    sigmas = karras_sigmas(6, sigma_min=0.05)
    for i, flip in [(2, False), (9, True)]:
        item = pairs.load(i, flip=flip)
        x = item["x"][None] + 0.05 * StackedRandomGenerator("cpu", [2 * i + flip]).randn((1, 3, 8, 8))
        z = heun_invert(teacher, x, sigmas, item["y"][None])[0]
        torch.testing.assert_close(item["z"], z, rtol=1e-3, atol=1e-3)
    assert LatentStore(str(tmp_path / "z")).manifest()["start_sigma"] == 0.05
    # verify decodes down to start_sigma, then denoises once
    items = [pairs.load(0, flip=f) for f in (False, True)]
    x, z, y = (torch.stack([it[k] for it in items]) for k in ("x", "z", "y"))
    decoded = teacher(heun_decode(teacher, z, sigmas, y, clamp_denoised=True), torch.full((2,), 0.05), y)
    verify = json.loads((tmp_path / "z" / "verify.json").read_text())
    assert verify["num_decoded"] == 2
    assert verify["psnr_mean_db"] == pytest.approx(psnr(decoded.clamp(-1, 1), x).mean().item(), abs=1e-3)
    out = _encode(tmp_path / "z", teacher_path, data, "--storage", "fp32")
    assert "written with other settings (start_sigma)" in out.stdout
