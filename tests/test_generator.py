"""The one-step generator: parameterisation, growth (function-preserving, compat layouts) and freezing."""

import math

import pytest
import torch
import torch.nn.functional as F

from pagoda import checkpoint
from pagoda.image_util import psnr
from pagoda.generator import (Generator, fit_output_head, freeze_for_growth, generator_from_teacher,
                              generator_sidecar, grow, grown_config, prior_latents)
from pagoda.model_io import load_generator
from pagoda.precond import Denoiser
from pagoda.unet import UNetModel, imagenet64_config

SMALL = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
             num_head_channels=32, num_classes=4)


def _randomised(net, seed=0):
    """Random weights everywhere (ADM zero-inits output convs, which would make every test trivial)."""
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * (0.3 / math.sqrt(max(1, p[0].numel()))))
    return net


def _layout(path):
    rows = [line.split(" ", 1) for line in open(path).read().splitlines() if line and not line.startswith("#")]
    return [(name, tuple(eval(shape))) for name, shape in rows]


def test_generator_is_the_backbone_at_sigma_max_on_scaled_latent():
    backbone = _randomised(UNetModel(**SMALL))
    gen = Generator(backbone, sigma_max=80.0, sigma_data=0.5)
    z, y = torch.randn(3, 3, 8, 8) * 80, torch.tensor([0, 1, 3])
    expected = backbone(z / math.sqrt(80.0**2 + 0.25), torch.full((3,), 80.0), y)
    torch.testing.assert_close(gen(z, y), expected)
    assert gen.sample(z * 100, y).abs().max() <= 1.0


def test_teacher_initialised_generator_is_about_twice_the_one_step_teacher_estimate():
    backbone = _randomised(UNetModel(**SMALL))
    gen = generator_from_teacher(backbone)
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([1, 2])
    x0_teacher = Denoiser(backbone)(z, torch.full((2,), 80.0), y)
    c_skip = 0.25 / (80.0**2 + 0.25)
    # D = c_skip z + c_out F and G = F, c_out(80) ~ 0.5: so G ~ 2 (D - c_skip z)
    torch.testing.assert_close(gen(z, y), (x0_teacher - c_skip * z) / (80 * 0.5 / math.sqrt(80.0**2 + 0.25)),
                               rtol=1e-4, atol=1e-4)
    assert all(p.requires_grad for p in gen.parameters())
    assert gen.backbone is not backbone  # a copy: training it never touches the teacher


@pytest.mark.parametrize("size", [128, 256])
def test_grown_imagenet_layout_equals_compat(compat_dir, size):
    with torch.device("meta"):
        base = UNetModel(**imagenet64_config(64))
        grown = UNetModel(**grown_config(base.config, size // 64))
    got = [(k, tuple(v.shape)) for k, v in grown.state_dict().items()]
    assert got == _layout(compat_dir / f"adm_imagenet64_out{size}_keys.txt")


def test_grow_copies_every_weight_and_starts_as_upsampled_features():
    base = _randomised(UNetModel(**SMALL))
    grown, new_keys = grow(base)
    assert grown.config["output_size"] == 16 and all(k.startswith("output_blocks.") for k in new_keys)
    old, new = base.state_dict(), grown.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)
    z, y = torch.randn(4, 3, 8, 8) * 80, torch.tensor([0, 1, 2, 3])
    small = Generator(base)(z, y)
    big = Generator(grown)(z, y)
    upsampled = F.interpolate(small, scale_factor=2, mode="nearest")
    value = psnr(big.clamp(-1, 1), upsampled.clamp(-1, 1)).mean().item()
    print(f"grown-at-init vs nearest-upsampled previous output: PSNR {value:.1f} dB")
    assert value > 25.0


def test_grown_export_loads_through_its_sidecar(tmp_path):
    base = _randomised(UNetModel(**SMALL))
    grown, _ = grow(grow(base)[0])  # a chain of two growths: 8 -> 16 -> 32
    assert grown.config["output_size"] == 32
    path = str(tmp_path / "g.pt")
    checkpoint.export_network(grown.state_dict(), generator_sidecar(grown), path)
    loaded = load_generator(path)
    assert loaded.output_size == 32 and loaded.latent_size == 8
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([0, 1])
    torch.testing.assert_close(loaded(z, y), Generator(grown)(z, y))


def test_fit_output_head_recovers_a_head_that_commutes_with_upsampling():
    """A centre-tap-only head commutes with nearest up-sampling, so the grown copy reproduces the up-sampled parent
    exactly: from a scrambled head, the nearest-mode fit must reach that exact output again."""
    base = _randomised(UNetModel(**SMALL))
    with torch.no_grad():
        base.out[-1].weight[..., [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0.0
    grown, _ = grow(base)
    z, y = prior_latents(base.config, 24, seed=1)
    assert Generator(base)(z, y).abs().max() < 1  # the target's clamp is inactive: the optimum is exact
    upsampled = F.interpolate(Generator(base)(z, y), scale_factor=2, mode="nearest")
    torch.testing.assert_close(Generator(grown)(z, y), upsampled, rtol=0, atol=1e-6)
    with torch.no_grad():
        grown.out[-1].weight.normal_(0, 0.1), grown.out[-1].bias.normal_(0, 0.1)
    before, after = fit_output_head(grown, base, z, y, batch_size=10, mode="nearest")
    torch.testing.assert_close(Generator(grown)(z, y), upsampled, rtol=0, atol=1e-4)
    assert before < 30 < 70 < after, (before, after)


def test_fit_output_head_is_the_least_squares_optimum_and_changes_only_the_head():
    base = _randomised(UNetModel(**SMALL))
    grown, _ = grow(base)
    others = {k: v.clone() for k, v in grown.state_dict().items() if not k.startswith("out.2.")}
    z, y = prior_latents(base.config, 16, seed=2)
    with torch.no_grad():
        target = F.interpolate(Generator(base)(z, y).clamp(-1, 1), size=(16, 16), mode="bicubic")

    def head_gradient():
        grown.zero_grad()
        Generator(grown)(z, y).sub(target).square().sum().backward()
        return torch.cat([grown.out[-1].weight.grad.flatten(), grown.out[-1].bias.grad])

    copied = head_gradient().norm()
    before, after = fit_output_head(grown, base, z, y)
    fitted = head_gradient().norm()
    print(f"|grad| of the squared error w.r.t. the head: copied {copied:.3g}, fitted {fitted:.3g}; "
          f"PSNR to the bicubic parent {before:.1f} -> {after:.1f} dB")
    assert fitted < 1e-4 * copied and after > before
    assert all(torch.equal(v, others[k]) for k, v in grown.state_dict().items() if k in others)


def test_fit_output_head_rejects_an_ungrown_network():
    base = _randomised(UNetModel(**SMALL))
    with pytest.raises(ValueError, match="needs a grown network"):
        fit_output_head(base, base, *prior_latents(base.config, 2))


def test_freezing_trains_only_late_output_blocks_and_head():
    grown, _ = grow(_randomised(UNetModel(**SMALL)))
    before = {k: v.clone() for k, v in grown.state_dict().items()}
    trainable, frozen = freeze_for_growth(grown, activate_from=3)
    names = [n for n, p in grown.named_parameters() if p.requires_grad]
    assert all(n.startswith(("output_blocks.3.", "output_blocks.4.", "output_blocks.5.", "output_blocks.6.", "out."))
               for n in names)
    assert trainable == sum(p.numel() for p in grown.parameters() if p.requires_grad) and frozen > trainable
    opt = torch.optim.Adam([p for p in grown.parameters() if p.requires_grad], lr=1e-2)
    out = Generator(grown)(torch.randn(2, 3, 8, 8) * 80, torch.tensor([0, 1]))
    out.square().mean().backward()
    opt.step()
    after = grown.state_dict()
    for k in before:
        trained = k.startswith(("output_blocks.3.", "output_blocks.4.", "output_blocks.5.", "output_blocks.6.", "out."))
        if not trained:
            assert torch.equal(before[k], after[k]), k  # frozen: bit-identical after a step
    assert not torch.equal(before["out.2.weight"], after["out.2.weight"])


def test_freeze_index_out_of_range():
    with pytest.raises(ValueError, match=r"activate_from must be in \[0, 3\]"):
        freeze_for_growth(UNetModel(**SMALL), activate_from=7)


def test_growth_factor_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        grown_config(UNetModel(**SMALL).config, 3)


def test_prior_latents_draw_only_the_classes_asked_for():
    config = UNetModel(**SMALL).config
    _, every = prior_latents(config, 2000, seed=3)
    _, real = prior_latents(config, 2000, seed=3, num_classes=3)
    assert set(every.tolist()) == {0, 1, 2, 3} and set(real.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="num_classes 5: the backbone has 4 label rows"):
        prior_latents(config, 2, num_classes=5)


def test_growth_from_a_guided_teacher_never_fits_the_head_on_its_null_class(tmp_path, monkeypatch):
    """Stage 3's head re-fit draws labels for its prior latents: from a label-dropout teacher's descendant they must
    be real classes only (the null class, row 3 here, is never sampled by the generator)."""
    from pagoda import generator as generator_module
    from pagoda.methods.pagoda import build_generator
    from pagoda.precond import teacher_sidecar
    net = _randomised(UNetModel(**SMALL))
    path = str(tmp_path / "teacher.pt")
    checkpoint.export_network(net.state_dict(), teacher_sidecar(net, null_class=3), path)
    seen = []
    real_fit = generator_module.fit_output_head
    monkeypatch.setattr(generator_module, "fit_output_head",
                        lambda grown, parent, z, y=None, **kw: seen.append(y) or real_fit(grown, parent, z, y, **kw))
    build_generator(path, device="cpu", grow_factor=2, refit_head=True)
    assert len(seen) == 1 and len(seen[0]) == 64 and set(seen[0].tolist()) == {0, 1, 2}
