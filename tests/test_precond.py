"""EDM preconditioning: limits and golden values of the scalings, exact wiring of the backbone, fp32 outer maths."""

import math

import pytest
import torch
from torch import nn

from pagoda.precond import Denoiser


class RecordingBackbone(nn.Module):
    """Returns `fn(x_in)` and remembers exactly what it was called with."""

    def __init__(self, fn=torch.zeros_like):
        super().__init__()
        self.fn = fn
        self.calls = []

    def forward(self, x_in, sigma, y=None):
        out = self.fn(x_in)
        self.calls.append({"x_in": x_in, "sigma": sigma, "y": y, "out": out})
        return out


def test_scalings_golden_values_at_sigma_data():
    # At sigma = sigma_data the skip and the network share the output equally.
    c_skip, c_out, c_in = Denoiser(nn.Identity(), sigma_data=0.5).scalings(torch.tensor([0.5]))
    assert c_skip.item() == pytest.approx(0.5, rel=1e-6)
    assert c_out.item() == pytest.approx(0.5 / math.sqrt(2), rel=1e-6)
    assert c_in.item() == pytest.approx(1 / (0.5 * math.sqrt(2)), rel=1e-6)


def test_scalings_limits():
    denoiser = Denoiser(nn.Identity(), sigma_data=0.5)
    c_skip, c_out, c_in = denoiser.scalings(torch.tensor([1e-6, 1e4]))
    assert c_skip.dtype == c_out.dtype == c_in.dtype == torch.float32
    # sigma -> 0: D -> x (pure skip), input scaled to unit variance of the data.
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-9)
    assert c_out[0].item() == pytest.approx(1e-6, rel=1e-4)  # c_out ~ sigma
    assert c_in[0].item() == pytest.approx(2.0, rel=1e-6)
    # sigma -> inf: D -> sigma_data * F, skip vanishes, c_in * sigma -> 1.
    assert c_skip[1].item() == pytest.approx(0.25e-8, rel=1e-3)
    assert c_out[1].item() == pytest.approx(0.5, rel=1e-6)
    assert (c_in[1] * 1e4).item() == pytest.approx(1.0, rel=1e-6)


def test_zero_backbone_gives_exact_skip():
    torch.manual_seed(0)
    denoiser = Denoiser(RecordingBackbone(), sigma_data=0.5)
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0])
    c_skip, _, _ = denoiser.scalings(sigma)
    assert torch.equal(denoiser(x, sigma), c_skip.view(-1, 1, 1, 1) * x)


def test_backbone_receives_c_in_x_raw_sigma_and_labels():
    torch.manual_seed(0)
    backbone = RecordingBackbone(fn=torch.tanh)
    denoiser = Denoiser(backbone, sigma_data=0.5)
    x = torch.randn(3, 3, 8, 8) * 5
    sigma = torch.tensor([0.1, 1.0, 10.0])
    y = torch.tensor([2, 0, 7])
    out = denoiser(x, sigma, y)
    call = backbone.calls[-1]
    c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in denoiser.scalings(sigma))
    assert torch.equal(call["x_in"], c_in * x)
    assert torch.equal(call["sigma"], sigma)
    assert call["y"] is y
    assert torch.allclose(out, c_skip * x + c_out * torch.tanh(c_in * x), rtol=0, atol=1e-6)


def test_scalar_sigma_is_broadcast_per_sample():
    backbone = RecordingBackbone()
    denoiser = Denoiser(backbone)
    x = torch.randn(5, 3, 4, 4)
    denoiser(x, 2.5)
    denoiser(x, torch.tensor(2.5))
    for call in backbone.calls:
        assert call["sigma"].shape == (5,) and call["sigma"].dtype == torch.float32
        assert torch.equal(call["sigma"], torch.full((5,), 2.5))


def test_bad_sigma_shape_and_bad_config_raise():
    denoiser = Denoiser(RecordingBackbone())
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(4,\)"):
        denoiser(torch.randn(4, 3, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        Denoiser(nn.Identity(), sigma_min=80.0, sigma_max=0.002)


def test_preconditioning_stays_fp32_when_backbone_runs_in_bf16():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    backbone = RecordingBackbone(fn=conv)
    denoiser = Denoiser(backbone)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.3, 20.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = denoiser(x, sigma)
    call = backbone.calls[-1]
    assert call["out"].dtype == torch.bfloat16  # the backbone really ran in reduced precision
    assert call["x_in"].dtype == torch.float32 and call["sigma"].dtype == torch.float32
    assert out.dtype == torch.float32
    c_skip, c_out, _ = (c.view(-1, 1, 1, 1) for c in denoiser.scalings(sigma))
    # The skip path keeps full precision: only the network term carries bf16 rounding.
    assert torch.equal(out, c_skip * x + c_out * call["out"].float())
