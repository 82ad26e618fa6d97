"""DiffAugment: shared parameters across paired images, each op against its definition, gradients, seeding."""

import pytest
import torch

from pagoda.diffaug import DiffAugment


def images(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def params_for(aug, n, size, **overrides):
    params = aug.sample_params(n, size, "cpu", generator=torch.Generator().manual_seed(0))
    params.update({k: torch.as_tensor(v) for k, v in overrides.items()})
    return params


def test_same_parameters_on_every_image():
    aug = DiffAugment()
    x, other = images(seed=0), images(seed=1)
    a, b, c = aug(x, x.clone(), other, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    params = aug.sample_params(3, 16, "cpu", generator=torch.Generator().manual_seed(5))
    (c_alone,) = aug(other, params=params)
    assert torch.equal(c, c_alone)
    assert not torch.equal(a, x)


def test_brightness_shifts_every_pixel():
    aug = DiffAugment(policy=("color",))
    x = torch.full((2, 3, 8, 8), 0.25)
    params = params_for(aug, 2, 8, brightness=[0.3, -0.4], saturation=[1.0, 1.0], contrast=[1.0, 1.0])
    (out,) = aug(x, params=params)
    assert torch.allclose(out[0], torch.full_like(out[0], 0.55))
    assert torch.allclose(out[1], torch.full_like(out[1], -0.15))


def test_saturation_scales_around_the_per_pixel_channel_mean():
    aug = DiffAugment(policy=("color",))
    x = torch.tensor([0.6, 0.0, -0.3]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    params = params_for(aug, 1, 4, brightness=[0.0], saturation=[1.5], contrast=[1.0])
    (out,) = aug(x, params=params)
    expected = 0.1 + 1.5 * (torch.tensor([0.6, 0.0, -0.3]) - 0.1)
    assert torch.allclose(out[0, :, 2, 3], expected)


def test_contrast_scales_around_the_image_mean():
    aug = DiffAugment(policy=("color",))
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, :2] = 0.5  # image mean 0.25
    params = params_for(aug, 1, 4, brightness=[0.0], saturation=[1.0], contrast=[0.5])
    (out,) = aug(x, params=params)
    assert torch.allclose(out[0, :, 0], torch.full((3, 4), 0.375))
    assert torch.allclose(out[0, :, 3], torch.full((3, 4), 0.125))


def test_translation_moves_a_pixel_by_the_offset_with_zero_fill():
    aug = DiffAugment(policy=("translation",))
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 5, 7] = 1.0
    params = params_for(aug, 2, 16, translation=[[2, -1], [-2, 2]])
    (out,) = aug(x, params=params)
    assert out[0, :, 7, 6].eq(1).all() and out[0].sum() == 3
    assert out[1, :, 3, 9].eq(1).all() and out[1].sum() == 3
    (shifted,) = aug(torch.ones(2, 3, 16, 16), params=params)
    assert shifted[0, :, :2].eq(0).all() and shifted[0, :, 2:, :15].eq(1).all() and shifted[0, :, :, 15].eq(0).all()
    assert shifted[1].sum() == 3 * 14 * 14


def test_cutout_zeroes_the_expected_square():
    aug = DiffAugment(policy=("cutout",))
    params = params_for(aug, 2, 16, cutout=[[3, 5], [-1, 14]])
    assert params["cutout_size"] == (3, 3)  # round(0.2 * 16)
    (out,) = aug(torch.ones(2, 3, 16, 16), params=params)
    assert out[0, :, 3:6, 5:8].eq(0).all() and out[0].sum() == 3 * (256 - 9)
    # Clipped by the border: rows 0..1, cols 14..15 remain of the 3x3 square.
    assert out[1, :, 0:2, 14:16].eq(0).all() and out[1].sum() == 3 * (256 - 4)


def test_sampled_parameters_stay_in_their_ranges():
    aug = DiffAugment()
    params = aug.sample_params(4096, 32, "cpu", generator=torch.Generator().manual_seed(0))
    assert params["brightness"].min() >= -0.5 and params["brightness"].max() < 0.5
    assert params["saturation"].min() >= 0 and params["saturation"].max() < 2
    assert params["contrast"].min() >= 0.5 and params["contrast"].max() < 1.5
    shifts = params["translation"]
    assert shifts.min() == -4 and shifts.max() == 4  # round(0.125 * 32), every offset drawn
    assert params["cutout_size"] == (6, 6)  # round(0.2 * 32)
    centres = params["cutout"] + 3
    assert centres.min() == 0 and centres.max() == 32


def test_gradients_flow_to_the_inputs():
    aug = DiffAugment()
    x = images().requires_grad_(True)
    params = aug.sample_params(3, 16, "cpu", generator=torch.Generator().manual_seed(1))
    (out,) = aug(x, params=params)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Brightness only: d out / d x = 1 everywhere.
    x.grad = None
    (out,) = DiffAugment(policy=("color",))(x, params=params_for(aug, 3, 16, saturation=[1.0] * 3,
                                                                  contrast=[1.0] * 3))
    out.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))


def test_fixed_generator_reproduces_parameters():
    aug = DiffAugment()
    p1 = aug.sample_params(8, 16, "cpu", generator=torch.Generator().manual_seed(7))
    p2 = aug.sample_params(8, 16, "cpu", generator=torch.Generator().manual_seed(7))
    p3 = aug.sample_params(8, 16, "cpu", generator=torch.Generator().manual_seed(8))
    for key in ("brightness", "saturation", "contrast", "translation", "cutout"):
        assert torch.equal(p1[key], p2[key])
    assert not torch.equal(p1["brightness"], p3["brightness"])
    x = images(n=8)
    assert torch.equal(aug(x, generator=torch.Generator().manual_seed(7))[0], aug(x, params=p1)[0])


def test_bad_policy_and_mismatched_inputs_raise():
    with pytest.raises(ValueError, match=r"unknown DiffAugment policy \['flip'\]"):
        DiffAugment(policy=("color", "flip"))
    aug = DiffAugment()
    with pytest.raises(ValueError, match="paired images must share batch size and spatial size"):
        aug(images(size=16), images(size=8))
    params = aug.sample_params(3, 8, "cpu")
    with pytest.raises(ValueError, match=r"params were sampled for size \(8, 8\), images are \(16, 16\)"):
        aug(images(size=16), params=params)
