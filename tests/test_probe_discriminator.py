"""scripts/probe_discriminator.py: a discriminator trained alone on cached features of reals vs a frozen
generator's samples, scored on held-out images with BatchNorm in eval mode."""

import json

import numpy as np
import pytest

from scripts import probe_discriminator
from tests.helpers.exports import tiny_export



@pytest.fixture
def setup(tmp_path):
    gen = tiny_export(tmp_path / "gen.pt", "generator")  # an untrained generator: its samples are far from reals
    rng = np.random.RandomState(0)
    images = np.zeros((120, 8, 8, 3), np.uint8)
    images[:, 2:6, 2:6] = rng.randint(150, 256, (120, 1, 1, 1))  # bright squares on black
    data = str(tmp_path / "squares.npz")
    np.savez(data, arr_0=images, arr_1=np.arange(120) % 4)
    return gen, data


def _probe(gen, data, out, *extra):
    return probe_discriminator.main(["--generator", gen, "--data_dir", data, "--feature_networks", "tiny",
                                     "--num_train", "80", "--num_heldout", "40", "--steps", "200", "--batch_size", "16",
                                     "--d_channel_scale", "0.25", "--out", str(out), *extra])


def test_probe_tells_an_untrained_generator_from_reals(setup, tmp_path):
    gen, data = setup
    report = _probe(gen, data, tmp_path / "probe.json")
    [result] = report["results"]
    assert result["feature_network"] == "tiny" and result["image_size"] == 8
    heads = [k for k in result if k.startswith("accuracy_")]
    assert heads == [f"accuracy_tiny_{k}" for k in range(len(result["head_depths"]))]
    # Separable data: the head without BatchNorm (the coarsest level) gets every held-out image right (measured 1.0).
    # The BatchNorm heads score lower in eval mode, having trained on all-real and all-fake batches (issue 16,
    # point 5), which pulls the overall accuracy (measured 0.71) below the best head's.
    assert max(result[h] for h in heads) >= 0.95 and result["accuracy"] > 0.6, result
    assert json.loads((tmp_path / "probe.json").read_text())["results"][0]["accuracy"] == result["accuracy"]


def test_probe_is_deterministic_and_an_untrained_head_sits_near_chance(setup, tmp_path):
    gen, data = setup
    a = _probe(gen, data, tmp_path / "a.json")["results"][0]
    b = _probe(gen, data, tmp_path / "b.json")["results"][0]
    assert a["accuracy"] == b["accuracy"] and a["final_train_loss"] == b["final_train_loss"]
    zero = _probe(gen, data, tmp_path / "c.json", "--lr", "1e-12")["results"][0]
    assert zero["accuracy"] < a["accuracy"]


def test_probe_needs_enough_real_images(setup):
    gen, data = setup
    with pytest.raises(ValueError, match="has 120 images, fewer than the 200 the probe needs"):
        probe_discriminator.main(["--generator", gen, "--data_dir", data, "--feature_networks", "tiny",
                                  "--num_train", "150", "--num_heldout", "50"])
