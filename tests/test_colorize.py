"""Colourisation (scripts/apply.py --task colorize): the luminance operator, the projection that imposes a grey
observation while keeping chroma, the latent search constrained to the luminance, and the script's three outputs
(latent search, grey, teacher replacement at equal wall time) with their scores."""

import json
import os

import numpy as np
import torch
from PIL import Image

from pagoda import applications as app
from pagoda.image_util import from_uint8, psnr
from pagoda.model_io import load_generator, load_teacher
from pagoda.random_util import StackedRandomGenerator
from tests.helpers.exports import tiny_export
from tests.test_applications import GROWN, TEACHER, _apply, held_out_digits, ode_latents


def _colour_images(n, size, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_luminance_is_pillows_grey():
    images = _colour_images(6, 9)
    grey = ((app.luminance(from_uint8(images))[:, 0] + 1) * 127.5).numpy()
    pillow = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images]).astype(np.float64)
    assert np.abs(grey - pillow).max() <= 0.5 + 1e-4  # Pillow rounds the same weighted sum


def test_with_luminance_imposes_the_grey_and_keeps_the_chroma():
    x = from_uint8(_colour_images(4, 8))
    grey = from_uint8(_colour_images(4, 8, seed=1))[:, :1]
    y = app.with_luminance(x, grey)
    torch.testing.assert_close(app.luminance(y), grey, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 0] - y[:, 1], x[:, 0] - x[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 2] - y[:, 1], x[:, 2] - x[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(app.with_luminance(y, grey), y, atol=1e-6, rtol=0)  # a projection


def test_fresh_chroma_keeps_the_latents_luminance_and_takes_the_noises_chroma():
    z = torch.randn(5, 3, 4, 4) * 80
    out = app.fresh_chroma(z, sigma_max=80.0, seeds=range(10, 15))
    torch.testing.assert_close(app.luminance(out), app.luminance(z), atol=1e-4, rtol=0)
    eps = StackedRandomGenerator("cpu", list(range(10, 15))).randn(z.shape, dtype=z.dtype) * 80
    torch.testing.assert_close(out[:, 0] - out[:, 1], eps[:, 0] - eps[:, 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 2] - out[:, 1], eps[:, 2] - eps[:, 1], atol=1e-4, rtol=0)
    # image i depends on seed i only: a batch split changes nothing
    torch.testing.assert_close(app.fresh_chroma(z[3:], sigma_max=80.0, seeds=range(13, 15)), out[3:])


def test_luminance_search_fits_the_grey_better_than_its_start_on_the_fixtures():
    """Grey digits tinted (red x 1.0, green x 0.7, blue x 0.4), their luminance observed; the search through the
    grown 32 px generator from the encoded grey moves G(z)'s luminance towards it. Measured on these 16 digits:
    luminance PSNR 19.60 dB at the start, 27.57 dB after 40 steps; floor: 5 dB of gain."""
    teacher, generator = load_teacher(TEACHER), load_generator(GROWN)
    low, x, y = held_out_digits(16, 32)
    tint = torch.tensor([1.0, 0.7, 0.4])[:, None, None]
    colour = (x + 1) * tint - 1
    grey = app.luminance(colour)
    grey16 = app.adm_resize(((grey.expand(-1, 3, -1, -1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), 16)
    z0 = ode_latents(teacher, from_uint8(grey16), y)
    start = psnr(app.luminance(app.decode(generator, z0, y).clamp(-1, 1)), grey).mean().item()
    _, out = app.latent_search(generator, z0, y, grey, torch.ones_like(grey), steps=40, lr=1.0, prior_weight=1e-3,
                               observe=app.luminance)
    after = psnr(app.luminance(out), grey).mean().item()
    print(f"luminance PSNR start {start:.2f} dB, after {after:.2f} dB")
    assert after > start + 5.0


def test_script_colorizes_against_the_grey_and_the_teacher_replacement(tmp_path):
    teacher, generator = tiny_export(tmp_path / "t.pt"), tiny_export(tmp_path / "g.pt", kind="generator")
    images = _colour_images(6, 8)
    np.savez(tmp_path / "imgs.npz", arr_0=images, arr_1=np.arange(6) % 4)
    out = _apply("--task", "colorize", "--input", tmp_path / "imgs.npz", "--teacher", teacher, "--generator",
                 generator, "--out_dir", tmp_path / "o", "--use_data_labels", "true", "--num_steps", "3",
                 "--num_blocks", "2", "--search_steps", "3", "--classifier_data", tmp_path / "imgs.npz")
    assert out.returncode == 0, out.stderr
    scores = json.load(open(tmp_path / "o" / "scores.json"))
    assert scores["task"] == "colorize" and scores["replacement_steps"] >= 2
    assert scores["search_start"] == "fresh_chroma"
    for key in ("psnr_db", "class_fidelity", "domain_fd"):
        assert {"latent_search", "grey", "replacement"} <= set(scores[key]), key
    assert scores["grid_rows"][:2] == ["references", "grey input (the naive output)"]
    with np.load(tmp_path / "o" / "samples_6x8x8x3.npz") as f:
        coloured = f["arr_0"]
    # the output's luminance is the grey input's wherever no channel was clipped
    grey = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images]).astype(np.float64)
    lum = ((app.luminance(from_uint8(coloured))[:, 0] + 1) * 127.5).numpy()
    inside = ((coloured > 0) & (coloured < 255)).all(-1)
    assert inside.mean() > 0.3 and np.abs(lum - grey)[inside].max() <= 2.0
    assert os.path.exists(tmp_path / "o" / "grid.png")
