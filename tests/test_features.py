"""Feature networks: level shapes, frozenness, seeded random projections, state_dict round trips, timm backbones
from local weight files (never downloaded) and the missing-weights message."""

import pytest
import torch

from pagoda import checkpoint
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import FeatureNetwork, create_feature_network
from pagoda.generator import generator_sidecar
from pagoda.precond import teacher_sidecar
from pagoda.unet import UNetModel

TINY_PROJ = 8


def images(n=2, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_tiny_levels_have_declared_channels_and_decreasing_sizes():
    net = create_feature_network("tiny", proj_channels=TINY_PROJ)
    feats = net(images())
    assert net.channels == [8, 8, 16, 32]
    assert [f.shape[1] for f in feats] == net.channels
    # "tiny" resizes every input to 32 px; the projection doubles the backbone's 8/4/2/1 maps.
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert all(f.shape[0] == 2 for f in feats)
    assert net.output_sizes(24) == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_unprojected_network_returns_backbone_levels():
    net = create_feature_network("tiny", project=False)
    feats = net(images(size=16))
    assert net.channels == [8, 16, 32, 64]
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 8, 8), (16, 4, 4), (32, 2, 2), (64, 1, 1)]


def test_random_conv_levels():
    net = create_feature_network("random_conv", proj_channels=16)
    feats = net(images(size=32))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]


def test_network_is_frozen_and_stays_in_eval_mode():
    net = create_feature_network("tiny", proj_channels=TINY_PROJ)
    assert all(not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training and not any(m.training for m in net.modules())
    wrapper = torch.nn.Sequential(net)
    wrapper.train()
    assert not net.training
    # Gradients still reach the input (the generator is trained through the frozen network).
    x = images().requires_grad_(True)
    sum(f.sum() for f in net(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_same_seed_builds_bit_identical_networks_and_other_seeds_differ():
    # What every rank does: build from the same seed, independently.
    a = create_feature_network("tiny", seed=3, proj_channels=TINY_PROJ)
    b = create_feature_network("tiny", seed=3, proj_channels=TINY_PROJ)
    c = create_feature_network("tiny", seed=4, proj_channels=TINY_PROJ)
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert sd_a.keys() == sd_b.keys() == sd_c.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert all(not torch.equal(sd_a[k], sd_c[k]) for k in sd_a if k.endswith("weight"))
    x = images()
    assert all(torch.equal(fa, fb) for fa, fb in zip(a(x), b(x)))
    assert not torch.allclose(a(x)[0], c(x)[0])


def test_state_dict_round_trip_restores_projections(tmp_path):
    saved = create_feature_network("tiny", seed=0, proj_channels=TINY_PROJ)
    assert any(k.startswith("projection.ccm.") for k in saved.state_dict())
    assert any(k.startswith("projection.csm.") for k in saved.state_dict())
    torch.save(saved.state_dict(), tmp_path / "features.pt")
    restored = create_feature_network("tiny", seed=1, proj_channels=TINY_PROJ)
    restored.load_state_dict(torch.load(tmp_path / "features.pt", map_location="cpu", weights_only=True))
    x = images()
    assert all(torch.equal(f, g) for f, g in zip(saved(x), restored(x)))


def test_unknown_name_and_bad_input_raise():
    with pytest.raises(ValueError, match=r"unknown feature network 'vgg16'; choose one of random_conv, tiny"):
        create_feature_network("vgg16")
    net = create_feature_network("tiny", proj_channels=TINY_PROJ)
    with pytest.raises(ValueError, match=r"tiny expects RGB images of shape \(N, 3, H, W\), got \(2, 1, 16, 16\)"):
        net(torch.zeros(2, 1, 16, 16))


def save_timm_weights(name, path, **kwargs):
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save({"model": state_dict}, path)
    return state_dict


def check_timm_network(net, saved, backbone_channels):
    assert isinstance(net, FeatureNetwork)
    assert net.backbone.channels == backbone_channels
    assert net.channels == [64, 64, 128, 256]
    loaded = net.backbone.model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with torch.no_grad():
        small = net(images(n=1, size=32))  # < 256: resized to 224, backbone strides 4..32, projected x2
        large = net(images(n=1, size=256))  # >= 256: native
    assert [tuple(f.shape[1:]) for f in small] == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14)]
    assert [f.shape[-1] for f in large] == [128, 64, 32, 16]
    # The pretrained weights stay out of state_dict; strict loading still works.
    keys = list(net.state_dict())
    assert keys and not any(k.startswith("backbone.model.") for k in keys)
    net.load_state_dict(net.state_dict(), strict=True)


def test_efficientnet_lite0_from_saved_weights(tmp_path):
    path = tmp_path / "tf_efficientnet_lite0.pth"
    saved = save_timm_weights("tf_efficientnet_lite0", path)
    net = create_feature_network("tf_efficientnet_lite0", weights_path=path)
    check_timm_network(net, saved, [24, 40, 112, 320])
    assert torch.allclose(net.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))


@pytest.mark.slow
def test_deit_from_saved_weights(tmp_path):
    path = tmp_path / "deit.safetensors"
    saved = save_timm_weights("deit_base_distilled_patch16_224", path)
    net = create_feature_network("deit_base_distilled_patch16_224", weights_path=path, seed=0)
    check_timm_network(net, saved, [96, 192, 384, 768])
    assert torch.allclose(net.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert any(k.startswith("backbone.readout.") for k in net.state_dict())


def test_missing_weights_error_names_model_file_and_remedy(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=r"'tf_efficientnet_lite0' not found: weights_path=.*absent\.pth"):
        create_feature_network("tf_efficientnet_lite0", weights_path=missing)
    with pytest.raises(FileNotFoundError) as info:
        create_feature_network("deit_base_distilled_patch16_224")
    message = str(info.value)
    assert "'deit_base_distilled_patch16_224' not found: no weights_path given and none found" in message
    assert "model.safetensors of the Hugging Face repo timm/deit_base_distilled_patch16_224.fb_in1k" in message
    assert "pass its path as weights_path" in message


def test_weights_found_in_local_hf_cache_without_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    repo = cache / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    saved = save_timm_weights("tf_efficientnet_lite0", repo / "snapshots" / "abc123" / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    net = create_feature_network("tf_efficientnet_lite0")
    assert torch.equal(net.backbone.model.conv_stem.weight, saved["conv_stem.weight"])


# ---- the stage-1 teacher's encoder as a feature network ----

TEACHER_NET = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                   num_head_channels=32, num_classes=3)


def _teacher_export(tmp_path, *, null_class=2):
    torch.manual_seed(0)
    net = UNetModel(**TEACHER_NET)
    path = str(tmp_path / "teacher.pt")
    checkpoint.export_network(net.state_dict(), teacher_sidecar(net, null_class=null_class), path)
    return net, path


def test_teacher_levels_are_the_teachers_own_encoder_activations(tmp_path):
    """With the same noise, the levels equal the activations inside the teacher's forward at sigma with the null
    class: the last encoder block of each resolution, then the middle block."""
    unet, path = _teacher_export(tmp_path)
    net = create_feature_network("teacher", weights_path=path)
    backbone = net.backbone
    assert backbone.level_ends == [1, 3] and net.channels == [32, 64, 64]
    captured = {}
    hooks = [unet.input_blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o))
             for i in (1, 3)]
    hooks.append(unet.middle_block.register_forward_hook(lambda m, a, o: captured.__setitem__("mid", o)))
    x = images(n=3, size=8)
    torch.manual_seed(5)
    levels = net(x)
    torch.manual_seed(5)
    noisy = (x + backbone.sigma * torch.randn_like(x)) * backbone.c_in
    unet(noisy, backbone.sigma, torch.full((3,), 2))
    for h in hooks:
        h.remove()
    for got, want in zip(levels, [captured[1], captured[3], captured["mid"]]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert [tuple(f.shape[-2:]) for f in levels] == [(8, 8), (4, 4), (4, 4)]
    # any image size is resized to the teacher's
    assert net.output_sizes(32) == [(8, 8), (4, 4), (4, 4)]


def test_teacher_without_null_class_uses_the_mean_class_embedding(tmp_path):
    """The embedding is the average over classes of the teacher's own (noise + class) embedding."""
    unet, path = _teacher_export(tmp_path, null_class=None)
    backbone = create_feature_network("teacher", weights_path=path).backbone
    sigma = torch.full((3,), backbone.sigma)
    per_class = unet.noise_embedding(sigma) + unet.label_emb(torch.arange(3))
    torch.testing.assert_close(backbone._embedding(2, "cpu"), per_class.mean(0).expand(2, -1))


def test_teacher_features_pass_gradients_but_keep_weights_out_of_state_dict(tmp_path):
    _, path = _teacher_export(tmp_path)
    net = create_feature_network("teacher", weights_path=path)
    assert not any(p.requires_grad for p in net.parameters())
    assert net.state_dict() == {}  # the teacher comes from its export, not from every D checkpoint
    x = images(n=2, size=16).requires_grad_(True)
    sum(f.square().sum() for f in net(x)).backward()
    assert x.grad.abs().sum() > 0
    # a discriminator over it saves and restores its heads only
    d = ProjectedDiscriminator(feature_networks={"teacher": net}, image_size=16, num_classes=3)
    state = d.state_dict()
    assert state and not any(k.startswith("feature_networks.") for k in state)
    d2 = ProjectedDiscriminator(feature_networks={"teacher": create_feature_network("teacher", weights_path=path)},
                                image_size=16, num_classes=3)
    d2.load_state_dict(state)
    assert all(torch.equal(v, d2.state_dict()[k]) for k, v in state.items())


def test_teacher_feature_network_errors(tmp_path):
    with pytest.raises(ValueError, match="needs the stage-1 teacher export"):
        create_feature_network("teacher")
    with pytest.raises(FileNotFoundError, match="denoiser checkpoint not found"):
        create_feature_network("teacher", weights_path=str(tmp_path / "nope.pt"))
    unet = UNetModel(**TEACHER_NET)
    path = str(tmp_path / "gen.pt")
    checkpoint.export_network(unet.state_dict(), generator_sidecar(unet), path)
    with pytest.raises(ValueError, match="a 'denoiser' is needed"):
        create_feature_network("teacher", weights_path=path)


def test_teacher_feature_sigma_is_passed_and_validated(tmp_path):
    _, path = _teacher_export(tmp_path)
    backbone = create_feature_network("teacher", weights_path=path, teacher_sigma=0.1).backbone
    assert backbone.sigma == 0.1 and backbone.c_in == pytest.approx(1 / (0.1**2 + 0.5**2) ** 0.5)
    with pytest.raises(ValueError, match="must be positive, got sigma=0"):
        create_feature_network("teacher", weights_path=path, teacher_sigma=0)


def _backbone_input_size(net, image_size):
    """The side of what the backbone receives for an image of side `image_size`."""
    seen = []
    hook = net.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        net(images(n=1, size=image_size))
    hook.remove()
    return seen[0]


def test_input_size_is_what_a_random_backbone_sees():
    default = create_feature_network("random_conv", proj_channels=16)
    large = create_feature_network("random_conv", proj_channels=16, input_size=128)
    assert (default.input_size, large.input_size) == (64, 128)
    assert _backbone_input_size(default, 16) == (64, 64) and _backbone_input_size(large, 16) == (128, 128)
    assert large.output_sizes(16) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    # the same random layers and normalisation: only the size differs
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), large.state_dict().values()))
    assert torch.equal(default.mean, large.mean) and torch.equal(default.std, large.std)
    explicit = create_feature_network("random_conv", proj_channels=16, input_size=64)
    x = images(size=16)
    assert all(torch.equal(a, b) for a, b in zip(default(x), explicit(x)))
    with pytest.raises(ValueError, match=r"^feature network input_size must be 0 \(the network's own\) or positive, "
                                         r"got -1$"):
        create_feature_network("random_conv", input_size=-1)


def test_input_size_of_a_timm_network_applies_to_every_image():
    """Default: 224 below 256 px, native from 256 (the official path); an explicit size: always that size."""
    default = create_feature_network("tf_efficientnet_lite0")
    small = create_feature_network("tf_efficientnet_lite0", input_size=64)
    assert _backbone_input_size(default, 16) == (224, 224) and _backbone_input_size(default, 256) == (256, 256)
    assert _backbone_input_size(small, 16) == (64, 64) and _backbone_input_size(small, 256) == (64, 64)
    assert small.output_sizes(16) == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert small.mean.flatten().tolist() == [0.5] * 3 == small.std.flatten().tolist()  # EfficientNet-lite's own


def test_teacher_ignores_the_input_size(tmp_path):
    _, path = _teacher_export(tmp_path)
    net = create_feature_network("teacher", weights_path=path, input_size=64)
    assert net.input_size == 8 and _backbone_input_size(net, 16) == (8, 8)
