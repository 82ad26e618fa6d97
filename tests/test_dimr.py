"""DiMR: the published sizes, branch shapes, the TD norms, the multi-scale loss, growth by a cascade-fed branch, and
a DiMR teacher through the scripts (export -> sample.py / encode.py with no architecture flags; a resume with the
UNet refused; stage 2 and one growth step on it)."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pagoda import dimr
from pagoda.dimr import DiMR, TDLayerNorm, TDParameter, TDRMSNorm, dimr_config
from pagoda.losses import EDMLoss, MultiScaleEDMLoss
from pagoda.model_io import load_backbone
from pagoda.precond import Denoiser
from pagoda.script_util import ConfigChangeError
from tests.helpers.tiny_runs import _main, encode_run, stage2_run, teacher_run, tiny_dataset


def _count(name):
    """(parameters, multiply-accumulates of one forward on one image, branch output shapes), on the meta device."""
    cfg = dimr_config(name)
    with torch.device("meta"):
        model = DiMR(**cfg)
        size, channels = cfg["image_size"], cfg["in_channels"]
        y = torch.zeros(1, dtype=torch.long) if cfg.get("num_classes") else None
        with FlopCounterMode(display=False) as counter:
            outputs = model.forward_branches(torch.empty(1, channels, size, size), torch.ones(1), y)
    params = sum(p.numel() for p in model.parameters())
    return params, counter.get_total_flops() // 2, [tuple(o.shape) for o in outputs]


@pytest.mark.parametrize("name, params, macs, shapes", [
    # the released XL/2R at 256 (4x32x32 latents): 505.0M parameters, 160.2 GMACs (the paper's "160 GFLOPs")
    ("xl2r_256", 505_046_408, 160_176_366_720, [(1, 4, 16, 16), (1, 4, 32, 32)]),
    # the 3-branch layout at 512 (4x64x64 latents): 525.0M, 206 GMACs
    ("xl3r_512", 525_027_372, 206_071_555_200, [(1, 4, 16, 16), (1, 4, 32, 32), (1, 4, 64, 64)]),
    ("p16_2r", 1_019_766, 92_903_424, [(1, 3, 8, 8), (1, 3, 16, 16)]),
    ("p16_3r", 1_065_177, 33_436_160, [(1, 3, 4, 4), (1, 3, 8, 8), (1, 3, 16, 16)]),
    ("p32_3r", 1_103_577, 137_873_408, [(1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32)]),
])
def test_layouts_have_the_published_sizes_and_branch_shapes(name, params, macs, shapes):
    assert _count(name) == (params, macs, shapes)
    if name == "xl2r_256":
        assert (round(params / 1e6, 1), round(macs / 1e9, 1)) == (505.0, 160.2)
    if name == "xl3r_512":
        assert (round(params / 1e6, 1), round(macs / 1e9)) == (525.0, 206)


def test_td_parameter_follows_the_sigmoid_gated_interpolation():
    param = TDParameter((3,), 1.0)
    with torch.no_grad():
        param.p0.copy_(torch.tensor([2.0, 0.0, 4.0]))
        param.p1.copy_(torch.tensor([0.0, 2.0, 4.0]))
        param.w.fill_(1.0)  # slope 1 + w = 2
        param.b.copy_(torch.tensor([0.0, 0.5, -1.0]))
    tau = torch.tensor([0.0, 0.25])
    s = torch.sigmoid(2 * tau[:, None] + param.b)
    expected = s * param.p0 + (1 - s) * param.p1
    assert torch.allclose(param(tau), expected)
    assert torch.allclose(param(torch.tensor([0.0]))[0, 0], torch.tensor(1.0))  # s = 1/2 between 2 and 0
    assert torch.equal(param(tau)[:, 2], torch.full((2,), 4.0))  # p0 = p1: no dependence on time


def test_td_norms_with_equal_parameter_sets_do_not_depend_on_time():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    for norm in (TDRMSNorm(8, TDParameter), TDLayerNorm(8, TDParameter)):
        with torch.no_grad():
            for param in (norm.gamma,) + ((norm.beta,) if hasattr(norm, "beta") else ()):
                param.p0.normal_()
                param.p1.copy_(param.p0)
                param.w.normal_()
                param.b.normal_()
        early, late = norm(x, torch.tensor([-1.5, -1.5])), norm(x, torch.tensor([1.0, 1.0]))
        assert torch.allclose(early, late, atol=1e-6)
        with torch.no_grad():
            norm.gamma.p1.add_(1.0)  # different sets: time matters
        assert not torch.allclose(norm(x, torch.tensor([-1.5, -1.5])), norm(x, torch.tensor([1.0, 1.0])))


def test_td_norm_formulas():
    x = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    tau = torch.tensor([0.0])
    rms = TDRMSNorm(4, TDParameter)(x, tau)
    assert torch.allclose(rms, x / (x.pow(2).mean().sqrt() + 1e-8))
    ln = TDLayerNorm(4, TDParameter)
    with torch.no_grad():
        ln.beta.p0.fill_(1.0)  # beta(tau = 0) = (1 + 0) / 2
    assert torch.allclose(ln(x, tau), F.layer_norm(x, (4,), eps=1e-5) + 0.5)
    assert dimr.tau_of_sigma(torch.tensor([math.exp(4.0)])).item() == pytest.approx(1.0)


class _Branches(torch.nn.Module):
    """A stand-in backbone returning fixed per-branch outputs (coarsest first)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward_branches(self, x, sigma, y=None):
        return self.outputs(x, sigma)


def _targets(x, eps, sigma, denoiser):
    """Each branch's F target: the EDM target of the pooled image with the scale-corrected pooled noise."""
    c_skip, c_out, _ = (c.view(-1, 1, 1, 1) for c in denoiser.scalings(sigma))
    out = []
    for r in (4, 2, 1):
        x_k = F.avg_pool2d(x, r) if r > 1 else x
        eps_k = r * F.avg_pool2d(eps, r) if r > 1 else eps
        out.append((x_k - c_skip * (x_k + sigma.view(-1, 1, 1, 1) * eps_k)) / c_out)
    return out


def test_multiscale_loss_is_zero_at_the_pooled_targets_and_weights_each_branch():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    loss = MultiScaleEDMLoss(weights=(0.25, 0.5, 1.0))
    draws = loss.draw(x, None, torch.Generator().manual_seed(1))
    sigma, eps = draws[0], draws[2]
    denoiser = Denoiser(_Branches(lambda *_: targets))
    targets = _targets(x, eps, sigma, denoiser)
    terms = loss(denoiser, x, generator=torch.Generator().manual_seed(1))
    assert terms["loss"].abs().max() < 1e-5
    delta = 0.1
    targets = [targets[0] + delta] + targets[1:]
    terms = loss(denoiser, x, generator=torch.Generator().manual_seed(1))
    # lambda(sigma) * c_out^2 = 1: an error delta in F costs weight * delta^2 whatever sigma is
    assert torch.allclose(terms["loss"], torch.full((3,), 0.25 * delta**2), rtol=1e-4)
    assert torch.allclose(terms["mse_branch0"] * draws[1], torch.full((3,), delta**2), rtol=1e-4)


def test_pooled_noise_keeps_unit_variance():
    eps = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for r in (2, 4):
        assert (r * F.avg_pool2d(eps, r)).var().item() == pytest.approx(1.0, abs=0.02)
        assert F.avg_pool2d(eps, r).var().item() == pytest.approx(1 / r**2, abs=0.01)


def test_one_branch_multiscale_loss_is_the_edm_loss():
    torch.manual_seed(0)
    net = DiMR(image_size=8, in_channels=3, num_classes=5, branches=[dict(
        kind="transformer", width=16, mlp_width=32, num_blocks=2, patch=1, heads=2)])
    denoiser = Denoiser(net)
    x, y = torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3])
    kwargs = dict(label_dropout=0.5, null_class=4)
    ours = MultiScaleEDMLoss(weights=(1.0,), **kwargs)(denoiser, x, y, generator=torch.Generator().manual_seed(3))
    edm = EDMLoss(**kwargs)(denoiser, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours["loss"], edm["loss"]) and torch.equal(ours["mse"], edm["mse"])


def test_layout_checks_name_the_problem():
    with pytest.raises(ValueError, match=r"branch grids \[8.0, 8.0\] .* must be whole and double"):
        DiMR(image_size=16, in_channels=3, branches=[dict(kind="transformer", width=8, mlp_width=16, num_blocks=1,
                                                          patch=2, heads=2),
                                                     dict(kind="convnext", width=8, mlp_width=16, num_blocks=1,
                                                          patch=2)])
    with pytest.raises(ValueError, match="the finest branch predicts the output: its patch must be 1, got 2"):
        DiMR(image_size=16, in_channels=3, branches=[dict(kind="transformer", width=8, mlp_width=16, num_blocks=1,
                                                          patch=2, heads=2)])
    with pytest.raises(ValueError, match="unknown DiMR layout 'xl'"):
        dimr_config("xl")
    with pytest.raises(ValueError, match="class-conditional: pass labels y"):
        DiMR(**dimr_config("p16_2r", num_classes=3))(torch.zeros(1, 3, 16, 16), torch.ones(1))


@pytest.mark.slow
def test_a_dimr_teacher_exports_samples_encodes_and_refuses_the_unet_on_resume(tmp_path):
    import sample
    data = tiny_dataset(tmp_path / "data")
    flags = ("--arch", "dimr", "--dimr_layout", "p16_2r", "--precision", "fp32")
    teacher = teacher_run(tmp_path / "teacher", data, *flags)
    _main(sample, ["--model", teacher, "--num_samples", "4", "--num_steps", "2", "--batch_size", "4",
                   "--out_dir", str(tmp_path / "samples"), "--precision", "fp32"])
    with np.load(tmp_path / "samples" / "samples_4x8x8x3.npz") as f:
        assert f["arr_0"].shape == (4, 8, 8, 3)
    latents = encode_run(tmp_path / "latents", teacher, data, "--image_size", "8", "--precision", "fp32")
    assert os.path.exists(os.path.join(latents, "manifest.json"))
    with pytest.raises(ConfigChangeError, match=r"--arch: 'dimr' -> 'unet'"):
        teacher_run(tmp_path / "teacher", data, "--arch", "unet", "--precision", "fp32", "--total_steps", "3")
    # PaGoDA on the DiMR teacher: stage 2 from its copy, then one growth step with a cascade-fed branch
    generator = stage2_run(tmp_path / "stage2", teacher, latents, "--precision", "fp32")
    grown = stage2_run(tmp_path / "stage3", generator, latents, "--grow_factor", "2", "--image_size", "16",
                       "--activate_from", "1", "--precision", "fp32")
    for path, size in ((generator, 8), (grown, 16)):
        backbone, side = load_backbone(path, expect_kind="generator")  # strict load, no architecture flags
        assert isinstance(backbone, DiMR) and side["output_size"] == size
    assert [b["patch"] for b in side["dimr"]["branches"]] == [2, 1, 0]
    _main(sample, ["--model", grown, "--num_samples", "4", "--batch_size", "4", "--out_dir",
                   str(tmp_path / "grown_samples"), "--precision", "fp32"])
    with np.load(tmp_path / "grown_samples" / "samples_4x16x16x3.npz") as f:
        assert f["arr_0"].shape == (4, 16, 16, 3)


def _tiny_dimr(num_classes=3):
    torch.manual_seed(0)
    return DiMR(**dimr_config("p16_2r", image_size=8, num_classes=num_classes))


def dimr_seed():
    from pagoda.random_util import seeded
    return seeded(0, "grown_levels")


def test_a_grown_dimr_starts_as_its_parent_upsampled_bicubically():
    parent = _tiny_dimr()
    with dimr_seed():
        grown, new_keys = dimr.grow(parent, factor=4)
    x, sigma, y = torch.randn(2, 3, 8, 8), torch.tensor([80.0, 0.5]), torch.tensor([0, 2])
    with torch.no_grad():
        outputs = grown.forward_branches(x, sigma, y)
        expected = parent(x, sigma, y)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)]
    for k in (2, 3):
        expected = F.interpolate(expected, scale_factor=2, mode="bicubic", align_corners=False)
        torch.testing.assert_close(outputs[k], expected, rtol=0, atol=1e-6)
    assert grown.config["output_size"] == 32 and [b["patch"] for b in grown.config["branches"]] == [2, 1, 0, 0]
    assert [b["width"] for b in grown.config["branches"][2:]] == [32, 24]  # 2/3 of the finer one, multiples of 8
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in new_keys} == {
        "branches.2", "branches.3", "cascades.1", "cascades.2"}
    rebuilt = DiMR(**grown.config)  # what an export's sidecar builds
    rebuilt.load_state_dict(grown.state_dict(), strict=True)


def test_a_grown_dimr_trains_from_the_named_branch_and_refuses_unet_settings():
    from pagoda.generator import freeze_for_growth, grow_generator
    grown, _, fit = grow_generator(_tiny_dimr(), factor=2, refit_head=True)
    assert fit is None  # a zero head on the bicubic skip needs no re-fit
    trainable, frozen = freeze_for_growth(grown, activate_from=1)
    expected = sum(p.numel() for m in (grown.branches[1], grown.branches[2], grown.cascades[0], grown.cascades[1])
                   for p in m.parameters())
    assert (trainable, frozen) == (expected, sum(p.numel() for p in grown.parameters()) - expected)
    assert not any(p.requires_grad for p in grown.branches[0].parameters())
    with pytest.raises(ValueError, match=r"activate_from must be in \[0, 2\] for this DiMR network"):
        freeze_for_growth(grown, activate_from=4)
    with pytest.raises(ValueError, match="channel_mult_high sets the UNet's grown levels"):
        grow_generator(_tiny_dimr(), factor=2, channel_mult_high=[1.0])
    with pytest.raises(ValueError, match=r"grown branches \(patch 0\) come after every branch"):
        DiMR(image_size=8, in_channels=3, branches=[
            dict(kind="transformer", width=8, mlp_width=16, num_blocks=1, patch=2, heads=2),
            dict(kind="convnext", width=8, mlp_width=16, num_blocks=1, patch=0),
            dict(kind="convnext", width=8, mlp_width=16, num_blocks=1, patch=1)])
