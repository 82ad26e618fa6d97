"""EDMLoss over a preconditioned tiny backbone: shapes, the weighted per-sample formula, label dropout."""

import pytest
import torch
from torch import nn

from pagoda.losses import EDMLoss
from pagoda.precond import Denoiser


class LabelRecordingBackbone(nn.Module):
    """A tiny conditional conv net that remembers the labels it was given."""

    def __init__(self, num_classes=11):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Embedding(num_classes, 3)
        self.seen_y = []

    def forward(self, x, sigma, y=None):
        self.seen_y.append(y)
        h = self.conv(x) + 0.1 * sigma.log().view(-1, 1, 1, 1)
        if y is not None:
            h = h + self.emb(y)[:, :, None, None]
        return h


def _batch(n, num_classes=10):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1
    y = torch.randint(num_classes, (n,), generator=gen)
    return x, y


def test_loss_is_weight_times_per_sample_mse():
    denoiser = Denoiser(LabelRecordingBackbone())
    x, y = _batch(6)
    out = EDMLoss()(denoiser, x, y, generator=torch.Generator().manual_seed(7))
    assert out["loss"].shape == out["mse"].shape == out["sigma"].shape == (6,)

    # Independent recomputation from the same seed: ln sigma ~ N(-1.2, 1.2^2), then eps.
    gen = torch.Generator().manual_seed(7)
    sigma = torch.exp(torch.randn(6, generator=gen) * 1.2 - 1.2)
    eps = torch.randn(x.shape, generator=gen)
    denoised = denoiser(x + sigma.view(-1, 1, 1, 1) * eps, sigma, y)
    mse = ((denoised - x) ** 2).flatten(1).mean(1)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(out["sigma"], sigma)
    torch.testing.assert_close(out["mse"], mse)
    torch.testing.assert_close(out["loss"], weight * mse)


def test_loss_backpropagates_into_the_backbone():
    backbone = LabelRecordingBackbone()
    x, y = _batch(4)
    EDMLoss()(Denoiser(backbone), x, y, generator=torch.Generator().manual_seed(0))["loss"].mean().backward()
    assert backbone.conv.weight.grad is not None and backbone.conv.weight.grad.abs().sum() > 0


def test_label_dropout_replaces_the_expected_fraction_by_the_null_class():
    backbone = LabelRecordingBackbone(num_classes=11)
    x, y = _batch(2000)
    EDMLoss(label_dropout=0.25, null_class=10)(Denoiser(backbone), x, y, generator=torch.Generator().manual_seed(1))
    seen = backbone.seen_y[-1]
    dropped = seen == 10
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.03)  # binomial sd ~0.01
    assert torch.equal(seen[~dropped], y[~dropped])
    assert torch.equal(y, _batch(2000)[1])  # the caller's labels are not modified in place


def test_no_label_dropout_passes_labels_through():
    backbone = LabelRecordingBackbone()
    x, y = _batch(64)
    EDMLoss(null_class=10)(Denoiser(backbone), x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(backbone.seen_y[-1], y)


def test_label_dropout_without_null_class_raises():
    with pytest.raises(ValueError, match="label_dropout > 0 needs a null_class"):
        EDMLoss(label_dropout=0.1)


def _tiny_teacher():
    from pagoda.unet import UNetModel

    torch.manual_seed(0)
    return UNetModel(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     num_classes=10)


def test_diffusion_objective_is_the_edm_loss_with_sigma_quartiles():
    from pagoda.methods.diffusion import DiffusionObjective

    backbone = _tiny_teacher()
    objective = DiffusionObjective(backbone=backbone, loss=EDMLoss(), sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
                                   ema_rates=())
    x, y = _batch(64)
    terms = objective.losses("denoiser", {"denoiser": backbone}, {"x": x, "y": y}, step=0,
                             generator=torch.Generator().manual_seed(5))
    ref = EDMLoss()(Denoiser(backbone), x, y, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(terms["loss"], ref["loss"])
    # the quartile diagnostics split the batch by sigma at the training distribution's quartiles, no sample lost
    edges = [0.0, 0.16, 0.30, 0.67, float("inf")]
    for q in range(4):
        in_q = (ref["sigma"] > edges[q]) & (ref["sigma"] <= edges[q + 1])
        torch.testing.assert_close(terms[f"mse_q{q}"], ref["mse"][in_q])
    assert sum(len(terms[f"mse_q{q}"]) for q in range(4)) == 64
    assert objective.phases(0) == objective.phases(1) == ["denoiser"]


def test_diffusion_objective_in_the_loop_lowers_the_loss_on_fixed_noise(tmp_path):
    from pagoda import logger
    from pagoda.methods.diffusion import DiffusionObjective
    from pagoda.train_util import OptimSpec, TrainLoop

    backbone = _tiny_teacher()
    objective = DiffusionObjective(backbone=backbone, loss=EDMLoss(), sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
                                   ema_rates=(0.9,))
    ramp = torch.linspace(-1, 1, 8)
    patterns = torch.stack([ramp.view(1, 1, 8).expand(3, 8, 8), ramp.view(1, 8, 1).expand(3, 8, 8)])
    x, y = patterns.repeat(8, 1, 1, 1), torch.arange(16) % 2  # two learnable images, one per class

    def data(start_batch):
        while True:
            yield {"x": x, "y": y}

    def fixed_noise_loss():
        with torch.no_grad():
            return EDMLoss()(Denoiser(backbone), x, y, generator=torch.Generator().manual_seed(9))["loss"].mean()

    before = fixed_noise_loss()
    logger.configure(None)
    TrainLoop(objective=objective, data=data, run_dir=str(tmp_path), global_batch_size=16,
              optim={"denoiser": OptimSpec(lr=2e-3)}, total_steps=60, log_interval=1000, save_interval=1000).run()
    assert fixed_noise_loss() < 0.5 * before
    # the export is a plain ADM state dict with the teacher sidecar the later stages read
    from pagoda.model_io import load_teacher

    teacher = load_teacher(str(tmp_path / "exports" / "denoiser_ema0.9.pt"))
    assert teacher.sigma_data == 0.5 and teacher.backbone.config == backbone.config
