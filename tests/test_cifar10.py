"""CIFAR-10 beside the digits: a model trained on one domain refuses latents of the other, naming both datasets."""

import numpy as np
import pytest
import torch

from pagoda import checkpoint, image_datasets
from tests.helpers.tiny_runs import encode_run, stage2_run, teacher_run
from tests.test_image_datasets import _official_cifar_archive


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    """A tiny digits-like npz (classes '0'..'9') and a tiny bundled:cifar10 (official format), each with its own
    8 px teacher and the latents that teacher encoded."""
    root = tmp_path_factory.mktemp("domains")
    mp = pytest.MonkeyPatch()
    mp.setattr(image_datasets, "DATA_CACHE_DIR", str(root / "cache"))
    mp.setenv("PAGODA_CIFAR10", str(root / "cifar-10-python.tar.gz"))
    _official_cifar_archive(root / "cifar-10-python.tar.gz", batch_size=4)
    digits = str(root / "digits.npz")
    rng = np.random.RandomState(0)
    np.savez(digits, arr_0=rng.randint(0, 256, (20, 12, 12, 3)).astype(np.uint8), arr_1=np.arange(20) % 10)
    runs = {}
    for name, data in (("digits", digits), ("cifar", "bundled:cifar10")):
        teacher = teacher_run(root / f"teacher_{name}", data)
        runs[name] = dict(data=data, teacher=teacher, latents=encode_run(root / f"latents_{name}", teacher, data))
    yield root, runs
    mp.undo()


def test_teacher_export_records_its_dataset(two_domains):
    _, runs = two_domains
    recorded = checkpoint.read_sidecar(runs["cifar"]["teacher"])["dataset"]
    source = image_datasets.open_source("bundled:cifar10")
    assert recorded == dict(image_datasets.source_identity(source), class_names=list(image_datasets.CIFAR10_CLASSES))


@pytest.mark.parametrize("teacher, latents", [("digits", "cifar"), ("cifar", "digits")])
def test_stage2_refuses_latents_of_the_other_domain(two_domains, teacher, latents):
    root, runs = two_domains
    mine, theirs = runs[teacher], runs[latents]
    classes = {"digits": "0, 1, 2, 3, ...", "cifar": "airplane, automobile, bird, cat, ..."}
    origin = {"digits": mine["data"] if teacher == "digits" else theirs["data"],
              "cifar": str(root / "cifar-10-python.tar.gz")}
    with pytest.raises(ValueError) as err:
        stage2_run(root / f"stage2_{teacher}_{latents}", mine["teacher"], theirs["latents"])
    assert str(err.value) == (
        f"the latents in {theirs['latents']} are of {origin[latents]} (classes {classes[latents]}) but "
        f"{mine['teacher']} was trained on {origin[teacher]} (classes {classes[teacher]}): another domain; encode "
        "that model's own dataset, or train a teacher on this one")


def test_stage2_and_stage3_accept_their_own_domain(two_domains):
    """The generator's export carries the teacher's dataset, so stage 3 checks the same way."""
    root, runs = two_domains
    cifar = runs["cifar"]
    generator = stage2_run(root / "stage2_cifar", cifar["teacher"], cifar["latents"])
    assert checkpoint.read_sidecar(generator)["dataset"]["class_names"][0] == "airplane"
    with pytest.raises(ValueError, match=r"the latents in .*latents_digits are of .*digits.npz \(classes 0, 1, 2, 3, "
                                         r"\.\.\.\) but .*generator_ema0.999.pt was trained on .*cifar-10-python"):
        stage2_run(root / "stage3_mixed", generator, runs["digits"]["latents"], "--grow_factor", "2")


# --- the CIFAR-10 domain classifier -------------------------------------------------------------------------------

def test_cifar10_classifier_defaults_differ_from_the_digits_ones():
    """An unset setting means the dataset's default; an explicit one still wins (the cache key is the result)."""
    from pagoda import domain
    cifar, digits = domain._settings("bundled:cifar10", {}), domain._settings("bundled:mnist", {})
    assert (cifar["widths"], cifar["batch_norm"], cifar["random_flip"], cifar["epochs"]) == ([32, 64, 128], True,
                                                                                            True, 6)
    assert cifar["heldout_dir"] == "bundled:cifar10_test" and digits["heldout_dir"] == "bundled:mnist_test"
    assert (digits["widths"], digits["epochs"]) == ([16, 32, 64], 2)
    assert "batch_norm" not in digits and "random_flip" not in digits  # the digits' cache keys are unchanged
    assert domain._settings("bundled:cifar10", {"epochs": 1})["epochs"] == 1


def test_batch_norm_classifier_exports_and_mirrors_a_seeded_half(tmp_path, monkeypatch):
    from pagoda import domain
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "d.npz", arr_0=rng.randint(0, 256, (40, 16, 16, 3)).astype(np.uint8), arr_1=np.arange(40) % 4)
    tiny = dict(input_size=16, epochs=1, batch_size=16, widths=(4, 8), feature_dim=16, batch_norm=True,
                random_flip=True)
    flips = []
    real_rand = torch.rand
    monkeypatch.setattr(domain.torch, "rand", lambda *a, **k: (flips.append(a), real_rand(*a, **k))[1])
    model, record = domain.train_domain_classifier(str(tmp_path / "d.npz"), progress=False, **tiny)
    assert [a[0] for a in flips] == [16, 16, 4]  # one draw per batch of the 36 training images
    again, _ = domain.train_domain_classifier(str(tmp_path / "d.npz"), progress=False, **tiny)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert 0 <= record["accuracy_quarter_round_trip"] <= 1
    domain.export_domain_classifier(model, record, tmp_path / "c.pt")
    loaded = domain.load_domain_classifier(tmp_path / "c.pt")
    x = domain.prepare(rng.randint(0, 256, (3, 16, 16, 3)).astype(np.uint8), 16)
    assert loaded.config["batch_norm"] and torch.equal(loaded(x), model(x))
