"""Projected discriminator: heads per feature level sized from the real maps, logits shapes, trainable heads only,
projection class conditioning, spectral norm, and a D step that leaves the feature networks untouched."""

import pytest
import torch
from torch.nn.utils import parametrize

from pagoda.discriminator import DiscriminatorHead, ProjectedDiscriminator, head_channels
from pagoda.features import create_feature_network
from pagoda.losses import hinge_d_loss


def build(num_classes=10):
    torch.manual_seed(0)
    networks = {
        "tiny": create_feature_network("tiny", seed=0, proj_channels=8),
        "conv": create_feature_network("random_conv", seed=1, proj_channels=8),
    }
    return ProjectedDiscriminator(feature_networks=networks, image_size=16, num_classes=num_classes,
                                  cond_dim=16, cmap_dim=8, channel_scale=1 / 16)


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1


def down_blocks(head):
    return sum(isinstance(m, torch.nn.Conv2d) for m in head.down)


def test_one_head_per_level_with_depth_from_the_actual_map_size():
    d = build()
    assert {name: len(heads) for name, heads in d.heads.items()} == {"tiny": 4, "conv": 4}
    # tiny maps 16/8/4/2 and random_conv maps 32/16/8/4: halve down to <= 8 px.
    assert [down_blocks(h) for h in d.heads["tiny"]] == [1, 0, 0, 0]
    assert [down_blocks(h) for h in d.heads["conv"]] == [2, 1, 0, 0]
    assert d.heads["conv"][0].down[0].in_channels == 8
    assert head_channels(112) == 64 and head_channels(7) == 512 and head_channels(16, 0.5) == 128


def test_logit_shapes_per_head_and_sample():
    d = build()
    logits = d(images(), torch.tensor([0, 1, 2, 3]))
    # 8 px maps -> 4x4 conv -> 5x5 patches; 4 px -> 1x1; 2 px (padded) -> 1x1.
    assert [tuple(l.shape) for l in logits] == [(4, 25), (4, 25), (4, 1), (4, 1), (4, 25), (4, 25), (4, 25), (4, 1)]


def test_only_head_parameters_are_trainable():
    d = build()
    trainable = [n for n, p in d.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("heads.") for n in trainable)
    assert all(not p.requires_grad for p in d.feature_networks.parameters())
    assert any(n.endswith("embed.weight") for n in trainable)


def test_spectral_norm_on_every_head_conv():
    d = build()
    convs = [m for m in d.heads.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 + 4  # one output conv per head + the down blocks
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)


def test_class_conditioning_changes_the_output():
    d = build().eval()
    x = images(n=2)
    same = d(x, torch.tensor([3, 3]))
    other = d(x, torch.tensor([4, 4]))
    again = d(x, torch.tensor([3, 3]))
    assert all(torch.equal(a, b) for a, b in zip(same, again))
    assert all(not torch.allclose(a, b) for a, b in zip(same, other))
    with pytest.raises(ValueError, match=r"class labels y are required .* \(num_classes=10, y given: False\)"):
        d(x)


def test_unconditional_head_returns_a_single_channel_map():
    head = DiscriminatorHead(in_channels=4, size=16, num_classes=None, channel_scale=1 / 64)
    assert tuple(head(torch.randn(2, 4, 16, 16)).shape) == (2, 25)
    d = build(num_classes=None)
    with pytest.raises(ValueError, match="refused by an unconditional one"):
        d(images(), torch.zeros(4, dtype=torch.long))


def test_discriminator_step_updates_heads_and_leaves_feature_networks_untouched():
    d = build().train()
    before = {k: v.clone() for k, v in d.feature_networks.state_dict().items()}
    heads_before = {k: v.clone() for k, v in d.heads.state_dict().items()}
    y = torch.tensor([0, 1, 2, 3])
    real, fake = d.extract(images(seed=0)), d.extract(images(seed=1))
    assert all(not f.requires_grad for levels in real.values() for f in levels)
    loss = hinge_d_loss(d(None, y, features=real), d(None, y, features=fake)).mean()
    loss.backward()
    assert all(p.grad is None for p in d.feature_networks.parameters())
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)
    torch.optim.SGD(d.parameters(), lr=0.1).step()
    after = d.feature_networks.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not d.feature_networks["tiny"].training
    changed = [k for k, v in d.heads.state_dict().items() if not torch.equal(heads_before[k], v)]
    assert any(k.endswith("weight.original") for k in changed)


def test_generator_side_gets_gradients_through_the_frozen_features():
    d = build()
    x = images().requires_grad_(True)
    logits = d(x, torch.tensor([0, 1, 2, 3]))
    sum(l.sum() for l in logits).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.feature_networks.parameters())
