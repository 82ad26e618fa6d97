"""Applications of the one-step generator (pagoda/applications.py, scripts/apply.py): consistency of the
super-resolved output with its input at a stated PSNR floor (on the bundled models when present), the model and
input checks with their exact messages, and the building blocks (ADM resize, slerp, label choice)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda import applications as app
from pagoda import checkpoint
from pagoda.generator import generator_sidecar
from pagoda.image_util import from_uint8, psnr, resize_bicubic
from pagoda.model_io import load_generator, load_teacher
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY, tiny_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
BUNDLED = "/work/runs/qs16_final"
TEACHER = os.path.join(BUNDLED, "teacher/exports/denoiser_ema0.999.pt")
GROWN = os.path.join(BUNDLED, "stage3/exports/generator_ema0.99.pt")


def _generator(path, **changes):
    net = UNetModel(**{**TINY, **changes})
    checkpoint.export_network(net.state_dict(), generator_sidecar(net), str(path))
    return str(path)


def _apply(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "apply.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=ENV)


@pytest.mark.skipif(not (os.path.exists(TEACHER) and os.path.exists(GROWN)), reason="bundled models not present")
def test_super_resolution_is_consistent_with_its_input_and_beats_bicubic_on_bundled_models():
    """Measured on 2,000 held-out test digits: consistency 26.5 dB (std 0.7 over 5 blocks); floor 25 dB on 40 digits.
    Consistency is the output down-sampled by the ADM operator against the 16 px input, with no projection."""
    from pagoda.image_datasets import center_crop_arr, open_source
    teacher, generator = load_teacher(TEACHER), load_generator(GROWN)
    source = open_source("bundled:mnist_test")
    pils = [source.load_pil(i) for i in range(40)]
    low = np.stack([center_crop_arr(p, 16) for p in pils])
    ref = np.stack([center_crop_arr(p, 32) for p in pils])
    y = torch.tensor(source.labels[:40])
    sigmas = app.ode_sigmas(num_steps=12, start_sigma=0.1, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    z = app.encode_ode(teacher, from_uint8(low), y, sigmas, start_sigma=0.1, seeds=range(40))
    out = app.decode(generator, z, y)
    assert out.shape == (40, 3, 32, 32)
    back = app.adm_resize(((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), 16)
    assert psnr(from_uint8(back), from_uint8(low)).mean() >= 25.0
    sr, bicubic = psnr(out, from_uint8(ref)).mean(), psnr(from_uint8(resize_bicubic(low, 32)), from_uint8(ref)).mean()
    assert sr > bicubic + 0.5


def test_adm_resize_halves_by_box_averaging_and_keeps_images_at_size():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    assert app.adm_resize(images, 16) is images
    small = app.adm_resize(images, 8)
    box = images.astype(np.float64).reshape(3, 8, 2, 8, 2, 3).mean((2, 4))
    assert small.shape == (3, 8, 8, 3) and np.abs(small - box).max() <= 1


def test_slerp_keeps_the_end_points_and_the_norm_of_gaussian_latents():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 8, 8, generator=gen) * 80, torch.randn(4, 3, 8, 8, generator=gen) * 80
    torch.testing.assert_close(app.slerp(a, b, 0.0), a)
    torch.testing.assert_close(app.slerp(a, b, 1.0), b, rtol=1e-4, atol=1e-3)
    ratio = app.slerp(a, b, 0.5).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert ((ratio - 1).abs() < 0.1).all()  # the straight line's midpoint would be ~0.71
    torch.testing.assert_close(app.slerp(a, a, 0.3), a)  # parallel: no division by zero


def test_labels_come_from_the_flag_then_the_data_then_the_null_class_then_the_classifier():
    assert app.pick_labels(n=2, given=3, data_labels=[1, 2], predict=lambda: [0, 0])[1] == "given"
    assert app.pick_labels(n=2, data_labels=[1, 2], null_class=9)[0].tolist() == [1, 2]
    assert app.pick_labels(n=2, null_class=9, predict=lambda: [0, 0])[0].tolist() == [9, 9]
    labels, origin = app.pick_labels(n=2, predict=lambda: [4, 5])
    assert (labels.tolist(), origin) == ([4, 5], "classifier")


def test_a_generator_of_another_resolution_or_classes_is_refused(tmp_path):
    teacher = load_teacher(tiny_export(tmp_path / "t.pt"))
    other_size = load_generator(_generator(tmp_path / "g16.pt", image_size=16))
    with pytest.raises(ValueError, match=r"^the teacher T works at 8 px but the generator G takes 16 px latents; "
                                         r"use the generator distilled from this teacher$"):
        app.check_models(teacher, other_size, teacher_path="T", generator_path="G")
    other_classes = load_generator(_generator(tmp_path / "g3.pt", num_classes=3))
    with pytest.raises(ValueError, match=r"^the teacher T knows 4 classes but the generator G knows 3; use the "
                                         r"generator distilled from this teacher$"):
        app.check_models(teacher, other_classes, teacher_path="T", generator_path="G")


def test_script_refuses_mismatched_models_and_unreadable_images(tmp_path):
    teacher = tiny_export(tmp_path / "t.pt")
    data = tmp_path / "imgs"
    data.mkdir()
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "0_a.png")
    (data / "1_b.png").write_bytes(b"not a png")
    common = ["--input", data, "--teacher", teacher, "--out_dir", tmp_path / "out", "--label", "0"]
    out = _apply(*common, "--generator", _generator(tmp_path / "g16.pt", image_size=16))
    assert out.returncode == 1
    assert f"error: the teacher {teacher} works at 8 px but the generator {tmp_path / 'g16.pt'} takes 16 px" \
        in out.stderr
    out = _apply(*common, "--generator", tiny_export(tmp_path / "g.pt", kind="generator"))
    assert out.returncode == 1
    assert f"error: cannot read image {data / '1_b.png'}" in out.stderr


def test_script_super_resolves_a_folder_to_the_generators_resolution(tmp_path):
    teacher, generator = tiny_export(tmp_path / "t.pt"), tiny_export(tmp_path / "g.pt", kind="generator")
    data = tmp_path / "imgs.npz"
    rng = np.random.RandomState(0)
    np.savez(data, arr_0=rng.randint(0, 256, (5, 12, 12, 3)).astype(np.uint8), arr_1=np.arange(5) % 4)
    out = _apply("--input", data, "--teacher", teacher, "--generator", generator, "--out_dir", tmp_path / "o",
                 "--use_data_labels", "true", "--num_steps", "3", "--num_blocks", "2")
    assert out.returncode == 0, out.stderr
    assert "5 of 5 images are not 8 px: ADM-resized to the teacher's 8 px" in out.stdout + out.stderr
    assert "labels: the data's own labels (--use_data_labels)" in out.stdout + out.stderr
    with np.load(tmp_path / "o" / "samples_5x8x8x3.npz") as f:
        assert f["arr_0"].shape == (5, 8, 8, 3) and f["arr_1"].tolist() == [0, 1, 2, 3, 0]
    assert len(os.listdir(tmp_path / "o" / "images")) == 5 and os.path.exists(tmp_path / "o" / "grid.png")


STAGE2 = os.path.join(BUNDLED, "stage2/exports/generator_ema0.99.pt")


@pytest.mark.skipif(not (os.path.exists(TEACHER) and os.path.exists(STAGE2)), reason="bundled models not present")
def test_latent_search_is_consistent_outside_the_mask_and_beats_the_naive_fill_inside():
    """Measured on 100 held-out digits, centre box: consistency 35.4 dB (std 0.7 over 5 blocks); floor 30 dB on 20.
    Consistency is G(z) against the observation outside the mask, before the observed pixels are pasted back."""
    from pagoda.image_datasets import center_crop_arr, open_source
    teacher, generator = load_teacher(TEACHER), load_generator(STAGE2)
    source = open_source("bundled:mnist_test")
    x = from_uint8(np.stack([center_crop_arr(source.load_pil(i), 16) for i in range(20)]))
    y = torch.tensor(source.labels[:20])
    m = app.builtin_mask("center", 16, 20)
    fill = app.naive_fill(x * m, m)
    sigmas = app.ode_sigmas(num_steps=12, start_sigma=0.1, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    z0 = app.encode_ode(teacher, fill, y, sigmas, start_sigma=0.1, seeds=range(20))
    _, out = app.latent_search(generator, z0, y, x, m, steps=40, lr=1.0, prior_weight=1e-3)
    assert app.masked_psnr(out, x, m).mean() >= 30.0
    assert app.masked_psnr(out, x, 1 - m).mean() > app.masked_psnr(fill, x, 1 - m).mean() + 1.0


def test_builtin_masks_hide_what_they_say_and_the_naive_fill_is_the_visible_mean():
    assert app.builtin_mask("center", 16, 2).mean() == 0.75
    assert app.builtin_mask("half", 16, 2).mean() == 0.5
    strokes = app.builtin_mask("strokes", 16, 4, seed=1)
    assert 0 < strokes.mean() < 1 and torch.equal(strokes, app.builtin_mask("strokes", 16, 4, seed=1))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = app.builtin_mask("half", 16, 2)
    fill = app.naive_fill(x * m, m)
    torch.testing.assert_close(fill[:, :, :, 8:], x[:, :, :, :8].mean((1, 2, 3))[:, None, None, None].expand(
        2, 3, 16, 8))
    with pytest.raises(ValueError, match=r"^unknown mask 'ring'; built in: center, half, strokes, or a \.png / "
                                         r"\.npy file$"):
        app.builtin_mask("ring", 16, 1)


def test_a_mask_of_the_wrong_size_is_refused(tmp_path):
    path = str(tmp_path / "m.npy")
    np.save(path, np.ones((8, 8)))
    with pytest.raises(ValueError, match=rf"^mask {path} is 8x8 but the images are 16x16 \(the generator's output "
                                         r"resolution\); make the mask that size$"):
        app.load_mask(path, 16, 2)
    assert app.load_mask(path, 8, 3).shape == (3, 1, 8, 8)
