"""scripts/denoising_error.py: the denoising MSE of teachers at fixed sigmas, same images and noise for every model."""

import json

import numpy as np
import pytest
import torch

import denoising_error
from pagoda.image_util import from_uint8
from pagoda.model_io import load_teacher
from pagoda.random_util import StackedRandomGenerator
from tests.helpers.exports import tiny_export


def test_the_identity_scores_sigma_squared_and_zero_scores_the_images_power():
    x = torch.rand(5, 3, 4, 4) * 2 - 1
    noise = StackedRandomGenerator("cpu", [7 + i for i in range(5)]).randn(x.shape, dtype=torch.float32)
    identity = denoising_error.denoising_errors(lambda xn, s, y: xn, x, None, (0.5, 2.0), seed=7, batch_size=2)
    for sigma in (0.5, 2.0):
        assert identity[sigma] == pytest.approx(sigma ** 2 * (noise ** 2).mean().item(), rel=1e-5)
    zero = denoising_error.denoising_errors(lambda xn, s, y: torch.zeros_like(xn), x, None, (1.0,), seed=7)
    assert zero[1.0] == pytest.approx((x ** 2).mean().item(), rel=1e-5)


def test_script_scores_each_teacher_on_the_same_images(tmp_path, capsys):
    images = np.random.RandomState(0).randint(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "held.npz", arr_0=images, arr_1=np.arange(6) % 4)
    a, b = tiny_export(tmp_path / "a.pt", seed=0), tiny_export(tmp_path / "b.pt", seed=1)
    rows = denoising_error.main(["--models", f"{a},{b}", "--data_dir", str(tmp_path / "held.npz"), "--num_images",
                                 "4", "--sigmas", "0.1,1", "--out", str(tmp_path / "err.json")])
    expected = denoising_error.denoising_errors(load_teacher(b), from_uint8(images[:4]),
                                                torch.tensor([0, 1, 2, 3]), (0.1, 1.0))
    assert rows[1]["mse"] == pytest.approx(expected, rel=1e-6) and rows[0]["mse"] != rows[1]["mse"]
    assert json.loads((tmp_path / "err.json").read_text())[1]["num_images"] == 4
    assert "| model | res | MSE at sigma 0.1 | MSE at sigma 1 |" in capsys.readouterr().out


def test_a_missing_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--models: .*nope\.pt not found; pass a teacher export"):
        denoising_error.main(["--models", str(tmp_path / "nope.pt"), "--data_dir", "bundled:mnist_test"])
