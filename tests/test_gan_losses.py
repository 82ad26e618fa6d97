"""GAN, reconstruction and balancing losses: values on hand-made inputs, the channel normalisation of the feature
distance, the adaptive weight against its formula, and R1 on a linear discriminator."""

import math

import pytest
import torch
import torch.nn.functional as F

from pagoda.diffaug import DiffAugment
from pagoda.features import create_feature_network
from pagoda.losses import (
    PixelLoss,
    PseudoHuberLoss,
    ReconstructionLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    r1_penalty,
)


def const(value, shape=(2, 5)):
    return torch.full(shape, float(value))


def images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_hinge_losses_on_hand_made_logits():
    assert torch.equal(hinge_d_loss(const(2), const(-2)), torch.zeros(2))
    assert torch.allclose(hinge_d_loss(const(0), const(0)), torch.full((2,), 2.0))
    assert torch.allclose(hinge_d_loss(const(0.5), const(-0.25)), torch.full((2,), 0.5 + 0.75))
    assert torch.allclose(hinge_g_loss(const(1.5)), torch.full((2,), -1.5))
    g = [hinge_g_loss(const(v)).mean() for v in (-1.0, 0.0, 2.0)]
    assert g[0] > g[1] > g[2]


def test_per_sample_average_over_patches_then_heads():
    heads = [torch.tensor([[0.0, 2.0, 4.0, 6.0], [1.0, 1.0, 1.0, 1.0]]), torch.tensor([[10.0], [-3.0]])]
    assert torch.allclose(hinge_g_loss(heads), torch.tensor([-(3.0 + 10.0) / 2, -(1.0 - 3.0) / 2]))
    real = [torch.tensor([[0.0, 3.0]]), torch.tensor([[-1.0]])]  # relu(1 - .): [1, 0] -> 0.5; [2] -> 2
    fake = [torch.tensor([[0.0, -3.0]]), torch.tensor([[1.0]])]  # relu(1 + .): [1, 0] -> 0.5; [2] -> 2
    assert torch.allclose(hinge_d_loss(real, fake), torch.tensor([1.25 + 1.25]))


def test_nonsaturating_losses():
    assert torch.allclose(nonsaturating_d_loss(const(0), const(0)), torch.full((2,), 2 * math.log(2)))
    assert torch.allclose(nonsaturating_d_loss(const(1), const(-2)),
                          torch.full((2,), math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))))
    assert torch.allclose(nonsaturating_g_loss(const(0)), torch.full((2,), math.log(2)))
    g = [nonsaturating_g_loss(const(v)).mean() for v in (-1.0, 0.0, 2.0)]
    assert g[0] > g[1] > g[2]
    with pytest.raises(ValueError, match="equal real and fake batches, got 2 and 3"):
        nonsaturating_d_loss(const(0), const(0, (3, 5)))


def test_reconstruction_loss_zero_for_identical_inputs_and_positive_otherwise():
    nets = {"a": create_feature_network("tiny", seed=0, proj_channels=8),
            "b": create_feature_network("tiny", seed=1, proj_channels=8)}
    loss = ReconstructionLoss(feature_networks=nets, augment=DiffAugment())
    x = images(n=3)
    same = loss(x.clone(), x, generator=torch.Generator().manual_seed(0))
    assert same.shape == (3,) and torch.equal(same, torch.zeros(3))
    x_hat = (x + 0.3 * images(n=3, seed=1)).requires_grad_(True)
    different = loss(x_hat, x, generator=torch.Generator().manual_seed(0))
    assert (different > 0).all()
    different.sum().backward()
    assert x_hat.grad.abs().sum() > 0
    # Each level contributes at most 4 (unit vectors are at most 2 apart): 2 networks x 4 levels.
    assert (different <= 2 * 4 * 4).all()


class IdentityFeatures(torch.nn.Module):
    """A one-level 'feature network' that returns the image itself (channels = RGB)."""

    def forward(self, x):
        return [x]


def test_reconstruction_loss_formula_on_identity_features():
    x_hat, x = images(seed=0), images(seed=1)
    loss = ReconstructionLoss(feature_networks=[IdentityFeatures()])(x_hat, x)
    unit = lambda v: v / (v.norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
    expected = (unit(x_hat) - unit(x)).square().sum(dim=1).mean(dim=(1, 2))
    assert torch.allclose(loss, expected)


class RescaledFeatures(torch.nn.Module):
    """Multiplies every feature map by a fixed positive per-pixel factor."""

    def __init__(self, net, sizes):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.net = net
        self.scales = [torch.rand(1, 1, s, s, generator=g) * 10 + 0.1 for s in sizes]

    def forward(self, x):
        return [f * s for f, s in zip(self.net(x), self.scales)]


def test_reconstruction_loss_invariant_to_positive_per_pixel_rescaling():
    net = create_feature_network("tiny", seed=0, proj_channels=8)
    rescaled = RescaledFeatures(net, [16, 8, 4, 2])
    x_hat, x = images(seed=0), images(seed=1)
    plain = ReconstructionLoss(feature_networks=[net])(x_hat, x)
    scaled = ReconstructionLoss(feature_networks=[rescaled])(x_hat, x)
    assert plain.min() > 0
    assert torch.allclose(plain, scaled, rtol=1e-5, atol=1e-7)


def test_pixel_and_pseudo_huber_losses():
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    assert torch.allclose(PixelLoss()(x_hat, x), torch.full((2,), 0.25))
    c = 0.00054 * math.sqrt(48)
    expected = math.sqrt(48 * 0.25 + c**2) - c
    assert torch.allclose(PseudoHuberLoss()(x_hat, x), torch.full((2,), expected))
    assert torch.equal(PseudoHuberLoss()(x, x), torch.zeros(2))


def toy_layer():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1, bias=False)


def test_adaptive_weight_equals_its_formula():
    layer = toy_layer()
    w = layer.weight
    a, t, b = torch.tensor([[1.0, 2.0, -1.0]]), 0.5, torch.tensor([[0.5, -1.0, 2.0]])
    for scale in (1.0, 3.0):
        rec = (layer(a) - t).square().sum()
        gan = -scale * layer(b).sum()
        grad_rec = 2 * (a @ w.T - t) * a  # d rec / dW, by hand
        grad_gan = -scale * b
        ratio = grad_rec.norm() / (grad_gan.norm() + 1e-4)
        assert 0.01 < ratio < 10
        weight = adaptive_weight(rec, gan, w)
        assert torch.allclose(weight, ratio.detach())
        assert not weight.requires_grad
        (rec + weight * gan).backward()  # graphs were retained
        w.grad = None


def test_adaptive_weight_respects_the_clip_and_the_ratio_cap():
    layer = toy_layer()
    x = torch.tensor([[1.0, 2.0, -1.0]])
    norm = float(x.norm())  # ||d (k * W x) / dW|| = k ||x||
    big_rec = 1e3 * layer(x).sum()
    unit_gan = layer(x).sum()
    assert adaptive_weight(big_rec, unit_gan, layer.weight) == 10.0
    assert adaptive_weight(unit_gan, big_rec, layer.weight) == 0.01
    unclipped = adaptive_weight(big_rec, unit_gan, layer.weight, clip=None)
    assert torch.allclose(unclipped, torch.tensor(1e3 * norm / (norm + 1e-4)))
    tiny_gan = 1e-2 * layer(x).sum()  # ratio ~ 1e5: capped at max_ratio before the clip
    assert adaptive_weight(big_rec, tiny_gan, layer.weight, clip=None) == 1e4
    assert adaptive_weight(big_rec, tiny_gan, layer.weight, clip=None, max_ratio=50.0) == 50.0


def test_adaptive_weight_is_one_without_a_reconstruction_gradient():
    layer = toy_layer()
    x = torch.tensor([[1.0, 2.0, -1.0]])
    gan = layer(x).sum()
    assert adaptive_weight(0.0 * layer(x).sum(), gan, layer.weight) == 1.0
    other = torch.ones(3, requires_grad=True)
    assert adaptive_weight(other.square().sum(), gan, layer.weight) == 1.0
    assert adaptive_weight(torch.zeros(4), gan, layer.weight) == 1.0


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = x.flatten(1) @ w
    penalty = r1_penalty(x, logits)
    assert torch.allclose(penalty, torch.full((5,), float(w.detach().square().sum())))
    penalty.sum().backward()  # differentiable: d/dw sum_n ||w||^2 = 2 N w
    assert torch.allclose(w.grad, 10 * w.detach())
    # Several heads: the gradient of the summed logits.
    v = torch.randn(3 * 4 * 4)
    heads = [(x.flatten(1) @ w)[:, None], F.linear(x.flatten(1), v[None])]
    assert torch.allclose(r1_penalty(x, heads), torch.full((5,), float((w.detach() + v).square().sum())))
    with pytest.raises(ValueError, match=r"r1_penalty needs real_images.requires_grad_\(True\)"):
        r1_penalty(x.detach(), logits)
