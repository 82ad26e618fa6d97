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
from pagoda.model_io import load_encoder, load_generator, load_teacher
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY, tiny_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
# Trained fixtures (fp16 copies of a quickstart run's teacher and grown generator, and an amortised encoder trained on
# its latents; tests/fixtures/apps/SOURCE.md says which run, scripts/make_fixtures.py regenerates them).
FIXTURES = os.path.join(REPO, "tests", "fixtures", "apps")
TEACHER = os.path.join(FIXTURES, "teacher.pt")
GROWN = os.path.join(FIXTURES, "generator32.pt")
ENCODER = os.path.join(FIXTURES, "encoder.pt")


def held_out_digits(n, size, teacher_size=16):
    """(low-res images at the teacher's size as [-1, 1] tensors, references at `size`, labels) of the first n
    held-out test digits."""
    from pagoda.image_datasets import center_crop_arr, open_source
    source = open_source("bundled:mnist_test")
    pils = [source.load_pil(i) for i in range(n)]
    low = from_uint8(np.stack([center_crop_arr(p, teacher_size) for p in pils]))
    return low, from_uint8(np.stack([center_crop_arr(p, size) for p in pils])), torch.tensor(source.labels[:n])


def ode_latents(teacher, x, y):
    """The PF-ODE latents as the bundled latents were made (12 Heun steps from x + 0.1 n, n seeded by position)."""
    sigmas = app.ode_sigmas(num_steps=12, start_sigma=0.1, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    return app.encode_ode(teacher, x, y, sigmas, start_sigma=0.1, seeds=range(len(x)))


def super_resolution_scores(n):
    """Per-digit (consistency PSNR: the output ADM-down-sampled against its 16 px input, PSNR of the output against
    the real 32 px digit, PSNR of the bicubic enlargement against it) on the fixtures, ODE encoder."""
    teacher, generator = load_teacher(TEACHER), load_generator(GROWN)
    low, ref, y = held_out_digits(n, 32)
    out = app.decode(generator, ode_latents(teacher, low, y), y)
    back = app.adm_resize(((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), 16)
    bicubic = from_uint8(resize_bicubic(((low + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), 32))
    return psnr(from_uint8(back), low), psnr(out, ref), psnr(bicubic, ref)


def inpainting_scores(n):
    """Per-digit (consistency PSNR of G(z) against the observation outside the mask, before the observed pixels are
    pasted back; PSNR inside the mask of the search and of the naive fill) on the fixtures: centre box of the 32 px
    digit, latent search (40 Adam steps) through the grown generator from the encoded naive fill."""
    teacher, generator = load_teacher(TEACHER), load_generator(GROWN)
    _, x, y = held_out_digits(n, 32)
    m = app.builtin_mask("center", 32, n)
    fill = app.naive_fill(x * m, m)
    z0 = ode_latents(teacher, from_uint8(app.adm_resize(((fill + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
                                                        .numpy(), 16)), y)
    _, out = app.latent_search(generator, z0, y, x, m, steps=40, lr=1.0, prior_weight=1e-3)
    return app.masked_psnr(out, x, m), app.masked_psnr(out, x, 1 - m), app.masked_psnr(fill, x, 1 - m)


def encoder_scores(n):
    """Per-digit (relative latent error ||E(x_s) - z_ode|| / ||z_ode||, PSNR of G(E(x_s)) against G(z_ode)) of the
    amortised encoder fixture, both encoders starting from the same x + 0.1 n."""
    teacher, generator, encoder = load_teacher(TEACHER), load_generator(GROWN), load_encoder(ENCODER)
    low, _, y = held_out_digits(n, 32)
    z_ode, z_enc = ode_latents(teacher, low, y), encoder.encode(low, y, seeds=range(n))
    return app.latent_error(z_enc, z_ode), psnr(app.decode(generator, z_enc, y), app.decode(generator, z_ode, y))


def _generator(path, **changes):
    net = UNetModel(**{**TINY, **changes})
    checkpoint.export_network(net.state_dict(), generator_sidecar(net), str(path))
    return str(path)


def _apply(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "apply.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=ENV)


def test_super_resolution_is_consistent_with_its_input_and_beats_bicubic_on_the_fixtures():
    """Measured on the fixtures, 500 held-out digits (std over 5 blocks): consistency 26.52 +- 0.23 dB, output vs the
    real 32 px digit 23.85 +- 0.23 dB, bicubic 22.89 +- 0.16 dB (on these 40: 26.9, 24.1, 23.0). Floors on 40
    digits: consistency 25 dB, SR ahead of bicubic by 0.5 dB. Consistency is the output down-sampled by the ADM
    operator against the 16 px input, with no projection."""
    consistency, sr, bicubic = super_resolution_scores(40)
    assert consistency.mean() >= 25.0
    assert sr.mean() > bicubic.mean() + 0.5


def test_fixtures_are_fp16_copies_that_load_as_fp32_families():
    """The committed fixtures hold fp16 weights; the normal loaders build fp32 networks from them (strict: names and
    shapes), and the generator and encoder name the fp16 teacher as theirs."""
    state, side = checkpoint.load_export(TEACHER)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16} and "fp16_of" in side
    teacher, generator = load_teacher(TEACHER), load_generator(GROWN)
    params = dict(teacher.backbone.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(torch.equal(params[k], v.float()) for k, v in state.items() if k in params)
    app.check_models(teacher, generator, teacher_path=TEACHER, generator_path=GROWN)
    app.check_encoder(load_encoder(ENCODER), teacher, teacher_path=TEACHER, encoder_path=ENCODER)
    assert checkpoint.read_sidecar(GROWN)["teacher_sha256"] == teacher.backbone.content_sha256


def test_make_fixtures_writes_fp16_copies_that_check_as_one_family(tmp_path):
    """scripts/make_fixtures.py on a run layout of tiny exports: fp16 weights, `fp16_of` the source's hash, the
    generator and encoder rewritten to name the fp16 teacher; the copies load and pass the applications' checks."""
    run = tmp_path / "run"
    for sub in ("teacher/exports", "stage3/exports"):
        os.makedirs(run / sub)
    source = tiny_export(run / "teacher/exports/denoiser_ema0.999.pt")
    tiny_export(run / "stage3/exports/generator_ema0.99.pt", kind="generator")
    net = UNetModel(**TINY)
    from pagoda.amortised_encoder import encoder_sidecar
    checkpoint.export_network(net.state_dict(), encoder_sidecar(
        net, encoder_sigma=0.1, input_sigma=0.1, sigma_max=80.0, sigma_data=0.5, null_class=None, latent_settings={},
        teacher_sha256=checkpoint.read_sidecar(source)["content_sha256"]), str(tmp_path / "e.pt"))
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_fixtures.py"), "--run", run,
                          "--encoder", tmp_path / "e.pt", "--out_dir", tmp_path / "fx"], capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr
    fx = tmp_path / "fx"
    teacher = load_teacher(str(fx / "teacher.pt"))
    assert checkpoint.read_sidecar(str(fx / "teacher.pt"))["fp16_of"] == checkpoint.read_sidecar(source)[
        "content_sha256"]
    assert checkpoint.torch_load(str(fx / "teacher.pt"))["out.2.weight"].dtype == torch.float16
    for name in ("generator32", "encoder"):
        assert checkpoint.read_sidecar(str(fx / f"{name}.pt"))["teacher_sha256"] == teacher.backbone.content_sha256
    app.check_encoder(load_encoder(str(fx / "encoder.pt")), teacher, teacher_path="T", encoder_path="E")


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


def test_transfer_targets_are_real_classes_other_than_the_images_own():
    """10 real classes and a null class 10 (a guided teacher): targets never the image's own class nor the null
    class; images encoded with the null class get any real class; --target_label beyond the real classes refused."""
    labels = np.arange(1000) % 11
    targets = app.transfer_targets(labels, 10, seed=0)
    assert targets.min() == 0 and targets.max() == 9 and not (targets == labels).any()
    assert np.array_equal(targets, app.transfer_targets(labels, 10, seed=0))
    assert set(targets[labels == 10]) == set(range(10))
    assert app.transfer_targets(labels, 10, target_label=4).tolist() == [4] * 1000
    with pytest.raises(ValueError, match=r"^--target_label 10: the models know 10 classes \(0\.\.9\)$"):
        app.transfer_targets(labels, 10, target_label=10)


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


def test_guidance_scale_reaches_only_a_guidance_conditioned_generator(tmp_path):
    from pagoda.generator import with_guidance_input
    teacher, plain = tiny_export(tmp_path / "t.pt"), tiny_export(tmp_path / "g.pt", kind="generator")
    guided = with_guidance_input(load_generator(plain).backbone, seed=0)
    checkpoint.export_network(guided.state_dict(), generator_sidecar(guided), str(tmp_path / "gw.pt"))
    data = tmp_path / "imgs.npz"
    np.savez(data, arr_0=np.random.RandomState(0).randint(0, 256, (4, 8, 8, 3)).astype(np.uint8), arr_1=np.arange(4))
    common = ["--input", data, "--teacher", teacher, "--use_data_labels", "true", "--num_steps", "3",
              "--num_blocks", "2", "--task", "transfer", "--guidance_scale", "1.5"]
    out = _apply(*common, "--generator", plain, "--out_dir", tmp_path / "a")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(f"error: --guidance_scale 1.5 needs a guidance-conditioned generator G(z, y, w) "
                                       f"(train.py --method guidance); {plain} has no w input")
    out = _apply(*common, "--generator", tmp_path / "gw.pt", "--out_dir", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    import json
    assert json.load(open(tmp_path / "b" / "scores.json"))["guidance_scale"] == 1.5


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
    assert "no real-vs-real FD floor: " + f"{data} has fewer than 10 images" in out.stdout + out.stderr


def test_block_fds_come_with_a_real_vs_real_floor_from_unused_images(tmp_path):
    teacher, generator = tiny_export(tmp_path / "t.pt"), tiny_export(tmp_path / "g.pt", kind="generator")
    data = tmp_path / "imgs.npz"
    np.savez(data, arr_0=np.random.RandomState(0).randint(0, 256, (12, 12, 12, 3)).astype(np.uint8),
             arr_1=np.arange(12) % 4)
    out = _apply("--input", data, "--teacher", teacher, "--generator", generator, "--out_dir", tmp_path / "o",
                 "--use_data_labels", "true", "--num_steps", "3", "--num_blocks", "2", "--limit", "6")
    assert out.returncode == 0, out.stderr
    import json
    fd = json.load(open(tmp_path / "o" / "scores.json"))["domain_fd"]
    assert set(fd) == {"super_resolved", "bicubic", "real_floor"} and len(fd["real_floor"]["blocks"]) == 2


def test_latent_search_is_consistent_outside_the_mask_and_beats_the_naive_fill_inside():
    """Measured on the fixtures (32 px grown generator), 200 held-out digits (std over 5 blocks): consistency 31.10 +-
    0.40 dB; inside the mask, search 8.44 +- 0.23 dB vs naive fill 6.53 +- 0.29 dB (on these 20: 31.3, 8.7, 6.6).
    Floors on 20 digits: consistency 29 dB, the search ahead of the naive fill inside the mask by 1 dB."""
    consistency, inside, fill_inside = inpainting_scores(20)
    assert consistency.mean() >= 29.0
    assert inside.mean() > fill_inside.mean() + 1.0


def test_amortised_encoder_approximates_the_ode_latents_of_held_out_digits():
    """Measured on the fixtures, 500 held-out digits (std over 5 blocks): relative latent error 0.107 +- 0.002, PSNR
    of the grown G(E) against G(z_ode) 22.97 +- 0.30 dB (on these 40: 0.102, 24.2 dB). Two ODE latents of one digit
    from two noise draws differ by 1.37, and an encoder of the clean digit alone reaches only 1.06 (fp32 models): the
    encoder must see the draw. Bounds on 40 digits: error 0.13, PSNR 21 dB."""
    err, agreement = encoder_scores(40)
    assert err.mean() <= 0.13
    assert agreement.mean() >= 21.0


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


def test_block_distances_score_disjoint_blocks_of_each_candidate_against_all_references():
    import apply
    refs, cand = np.arange(4.0).reshape(4, 1), np.array([[10.0], [20.0], [30.0], [40.0], [50.0]])
    got = apply.block_distances(lambda a: a, lambda ref, part: float(part.mean() - ref.mean()), refs,
                                {"c": cand}, 2)
    assert got["c"]["blocks"] == [20 - 1.5, 45 - 1.5] and got["c"]["mean"] == 31.0
    assert got["c"]["std"] == pytest.approx(np.std([18.5, 43.5], ddof=1))


def test_super_resolution_reports_inception_kid_with_its_real_floor(tmp_path, monkeypatch):
    """--inception_kid scores the outputs, bicubic and unused real images block by block with the evaluator's KID
    (a random-weight Inception stands in for the real one here); the real images of the input score near 0."""
    from evaluations.inception import random_inception
    import apply
    monkeypatch.setattr(apply.inception, "model", random_inception(seed=0), raising=False)
    teacher, generator = tiny_export(tmp_path / "t.pt"), tiny_export(tmp_path / "g.pt", kind="generator")
    data = tmp_path / "imgs.npz"
    np.savez(data, arr_0=np.random.RandomState(0).randint(0, 256, (12, 12, 12, 3)).astype(np.uint8),
             arr_1=np.arange(12) % 4)
    scores = apply.main(["--input", str(data), "--teacher", teacher, "--generator", generator, "--out_dir",
                         str(tmp_path / "o"), "--use_data_labels", "true", "--num_steps", "3", "--num_blocks", "2",
                         "--limit", "6", "--inception_kid", "true"])
    kid = scores["inception_kid"]
    assert set(kid) == {"super_resolved", "bicubic", "real_floor"} and all(len(v["blocks"]) == 2 for v in kid.values())
    assert abs(kid["real_floor"]["mean"]) < kid["super_resolved"]["mean"]
