"""scripts/probe_discriminator.py: a discriminator trained alone on cached features of reals vs a frozen
generator's samples, scored on held-out images with its heads in eval mode (BatchNorm or GroupNorm)."""

import json

import numpy as np
import pytest

from tests.helpers.exports import tiny_export

import probe_discriminator


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
    # Separable data: the best head and the overall score get every held-out image right. A fine level's BatchNorm
    # head scores below chance in eval mode, having trained on all-real and all-fake batches (which of the two fine
    # heads does depends on the CPU's float rounding).
    assert result["head_depths"] == [1, 1, 1, 1] and result["input_size"] == 32
    assert max(result[h] for h in heads) >= 0.95 and result["accuracy"] > 0.9, result
    assert min(result["accuracy_tiny_0"], result["accuracy_tiny_1"]) < 0.6, result
    assert json.loads((tmp_path / "probe.json").read_text())["results"][0]["accuracy"] == result["accuracy"]


def test_group_norm_heads_keep_what_they_learnt_in_eval_mode(setup, tmp_path):
    """GroupNorm judges each image alone, so the fine levels' heads, at or below chance with BatchNorm (above),
    score as in training (measured 1.0 / 1.0 / 0.91 / 0.81; overall 1.0)."""
    gen, data = setup
    [result] = _probe(gen, data, tmp_path / "probe.json", "--d_norm", "group")["results"]
    assert result["accuracy_tiny_0"] >= 0.95 and result["accuracy_tiny_1"] >= 0.95 and result["accuracy"] > 0.9, result


def test_probe_feature_resolution_sets_what_the_network_sees(setup, tmp_path):
    gen, data = setup
    [result] = _probe(gen, data, tmp_path / "probe.json", "--feature_resolution", "64", "--steps", "1")["results"]
    # tiny at 64 px: backbone maps 16/8/4/2, projected to 32/16/8/4
    assert result["input_size"] == 64 and result["head_depths"] == [2, 1, 1, 1]


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
