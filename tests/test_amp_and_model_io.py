"""Precision policy (fp16 overflow skips the step) and building networks from exports / released files."""

import pytest
import torch
from torch import nn

from pagoda import checkpoint
from pagoda.amp import MixedPrecision
from pagoda.model_io import infer_released_config, load_backbone, load_generator, load_teacher
from pagoda.precond import teacher_sidecar
from pagoda.unet import UNetModel, imagenet64_config

TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mp = MixedPrecision(precision="fp16", init_scale=2.0**10)
    before = net.weight.detach().clone()
    mp.backward(net(torch.tensor([[float("inf"), 1.0]])).sum())
    took, _ = mp.step(opt, list(net.parameters()))
    assert not took and torch.equal(net.weight, before) and mp.log_scale == 9.0
    opt.zero_grad()
    mp.backward(net(torch.ones(1, 2)).sum())
    took, norm = mp.step(opt, list(net.parameters()))
    assert took and not torch.equal(net.weight, before)
    torch.testing.assert_close(norm, torch.tensor(3.0).sqrt())  # unscaled: |d/dw| = (1, 1), |d/db| = 1


def test_fp32_never_applies_non_finite_gradients():
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mp = MixedPrecision(precision="fp32")
    net(torch.tensor([[float("nan"), 1.0]])).sum().backward()
    before = net.weight.detach().clone()
    took, _ = mp.step(opt, list(net.parameters()))
    assert not took and torch.equal(net.weight, before)


def test_bf16_autocast_runs_the_unet_in_bf16():
    net = UNetModel(**TINY)
    mp = MixedPrecision(precision="bf16")
    with mp.autocast():
        out = net(torch.randn(2, 3, 8, 8), torch.ones(2), torch.tensor([0, 1]))
    assert out.dtype == torch.bfloat16


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        MixedPrecision(precision="fp8")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_released_layouts_are_recognised_without_a_sidecar(size):
    with torch.device("meta"):
        sd = UNetModel(**imagenet64_config(size)).state_dict()
    assert infer_released_config(sd, source="edm_imagenet64_ema.pt") == imagenet64_config(size)


def test_unknown_file_without_sidecar_is_a_clear_error(tmp_path):
    path = tmp_path / "mystery.pt"
    torch.save(UNetModel(**TINY).state_dict(), path)
    with pytest.raises(ValueError, match="has no architecture sidecar .* matches none of the released layouts"):
        load_teacher(str(path))


def test_export_of_the_wrong_kind_or_architecture(tmp_path):
    net = UNetModel(**TINY)
    path = str(tmp_path / "teacher.pt")
    checkpoint.export_network(net.state_dict(), teacher_sidecar(net), path)
    assert load_teacher(path).backbone.config == net.config
    with pytest.raises(ValueError, match="is a 'denoiser' export, but a 'generator' is needed"):
        load_generator(path)
    other = dict(TINY, model_channels=64)
    checkpoint.export_network(UNetModel(**other).state_dict(), teacher_sidecar(net), path)  # sidecar lies
    with pytest.raises(ValueError, match="does not match the architecture being built"):
        load_teacher(path)


def test_training_state_is_not_an_export(tmp_path):
    path = str(tmp_path / "state_0000010.pt")
    checkpoint.atomic_save({"players": {}, "step": 10}, path)
    with pytest.raises(ValueError, match="is a training state, not an export"):
        load_backbone(path, expect_kind="denoiser")


def test_missing_teacher_names_the_released_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="edm_imagenet64_ema.pt"):
        load_teacher(str(tmp_path / "absent.pt"))
