"""ADM UNet: exact checkpoint layouts, golden outputs of the official network, and structural properties."""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pagoda import unet
from pagoda.unet import GroupNorm32, UNetModel, imagenet64_config

GN_GAIN_SUFFIXES = ("in_layers.0.weight", "out_layers.0.weight", "norm.weight")


def read_keys(path):
    """[(name, shape)] from a compat key file ("name (d0, d1, ...)" per line, '#' header)."""
    layout = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split(" ", 1)
        layout.append((name, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())))
    return layout


def layout(model):
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def small_kwargs(spec):
    """Map a compat json architecture onto the constructor (decoder_channel_mult only mirrors the grown levels)."""
    return dict(
        image_size=spec["input_size"], output_size=spec["output_size"], model_channels=spec["channels"],
        channel_mult=spec["channel_mult"], num_res_blocks=spec["num_res_blocks"],
        attention_resolutions=spec["attention_ds"], num_head_channels=spec["head_channels"],
        num_classes=spec["num_classes"], channels_high=spec["channels_high"],
        num_res_blocks_high=spec["num_res_blocks_high"],
    )


def golden_fill(model, seed=0):
    """The compat README's deterministic weight fill: sorted keys, one shared RandomState."""
    state = model.state_dict()
    rng = np.random.RandomState(seed)
    for key in sorted(state):
        shape = tuple(state[key].shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = rng.standard_normal(shape).astype(np.float32) * np.float32(0.2 / np.sqrt(fan_in))
        if key.endswith(GN_GAIN_SUFFIXES) or key == "out.0.weight":
            value += 1.0
        state[key] = torch.from_numpy(value)
    model.load_state_dict(state)
    return model


def tiny(**overrides):
    kwargs = dict(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                  attention_resolutions=(2,), num_head_channels=16, num_classes=5)
    kwargs.update(overrides)
    return UNetModel(**kwargs)


def tiny_inputs(n=3, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen)
    sigma = torch.exp(torch.randn(n, generator=gen) * 1.2 - 1.2)
    y = torch.randint(0, 5, (n,), generator=gen)
    return x, sigma, y


# --- 1. checkpoint layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_size,params", [(64, 295_899_267), (128, 298_336_323), (256, 300_773_379)])
def test_imagenet64_layout_matches_released_checkpoint(compat_dir, output_size, params):
    with torch.device("meta"):
        model = UNetModel(**imagenet64_config(output_size))
    assert layout(model) == read_keys(compat_dir / f"adm_imagenet64_out{output_size}_keys.txt")
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.high_res_levels == {64: 0, 128: 1, 256: 2}[output_size]
    # The adaptive GAN weight's layer: output_blocks[15 / 18 / 21][0].out_layers[3] (docs/method.md 3.4).
    last = {64: 15, 128: 18, 256: 21}[output_size]
    assert model.adaptive_weight_layer() is model.output_blocks[last][0].out_layers[3]
    assert tuple(model.adaptive_weight_layer().weight.shape) == (192, 192, 3, 3)


def test_imagenet64_config_is_the_model_config():
    with torch.device("meta"):
        model = UNetModel(**imagenet64_config(128))
    assert model.config == imagenet64_config(128)
    with pytest.raises(ValueError, match=re.escape("got output_size=96, image_size=64")):
        imagenet64_config(96)


@pytest.mark.parametrize("name", ["unet_small", "unet_small_grown32"])
def test_small_layout_matches_fixture(compat_dir, name):
    spec = json.loads((compat_dir / f"{name}.json").read_text())
    model = UNetModel(**small_kwargs(spec))
    assert layout(model) == read_keys(compat_dir / f"{name}_keys.txt")


# --- 2. golden outputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet_small", "unet_small_grown32"])
def test_golden_output_of_official_network(compat_dir, name):
    spec = json.loads((compat_dir / f"{name}.json").read_text())
    golden = np.load(compat_dir / f"{name}.npz")
    model = golden_fill(UNetModel(**small_kwargs(spec))).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(golden["x"]), torch.from_numpy(golden["sigma"]), torch.from_numpy(golden["y"]))
    assert out.shape == golden["out"].shape
    torch.testing.assert_close(out, torch.from_numpy(golden["out"]), atol=1e-5, rtol=1e-5)


def test_scalar_sigma_equals_per_sample_sigma():
    model = golden_fill(tiny()).eval()
    x, _, y = tiny_inputs()
    with torch.no_grad():
        scalar = model(x, torch.tensor(2.5), y)
        vector = model(x, torch.full((3,), 2.5), y)
    torch.testing.assert_close(scalar, vector, atol=0, rtol=0)


# --- 3. structural properties ---------------------------------------------------------------------------------


def test_config_json_round_trip_rebuilds_same_layout():
    model = tiny(output_size=32, channels_high=64, channel_mult_high=(1, 0.5), num_res_blocks_high=1, dropout=0.1)
    config = json.loads(json.dumps(model.config))
    rebuilt = UNetModel(**config)
    assert rebuilt.config == model.config
    assert layout(rebuilt) == layout(model)
    assert model.config["channel_mult_high"] == [1, 0.5] and model.config["attention_resolutions"] == [2]


def test_gradient_checkpointing_is_exact_and_recomputes():
    reference = golden_fill(tiny(output_size=16))
    checkpointed = tiny(output_size=16, use_checkpoint=True)
    checkpointed.load_state_dict(reference.state_dict())
    x, sigma, y = tiny_inputs()

    calls = []
    checkpointed.middle_block[1].norm.register_forward_hook(lambda *args: calls.append("attention"))
    checkpointed.output_blocks[-1][0].in_layers[0].register_forward_hook(lambda *args: calls.append("resblock"))
    for model in (reference, checkpointed):
        model(x, sigma, y).square().mean().backward()
    assert sorted(calls) == ["attention"] * 2 + ["resblock"] * 2, "checkpointed blocks are recomputed in backward"
    torch.testing.assert_close(checkpointed(x, sigma, y), reference(x, sigma, y), atol=0, rtol=0)
    for (name, p_ref), (_, p_ckpt) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p_ckpt.grad, p_ref.grad, atol=1e-7, rtol=1e-6, msg=name)


def test_batch_equals_per_sample_outputs():
    model = golden_fill(tiny(output_size=16)).eval()
    x, sigma, y = tiny_inputs(n=4)
    with torch.no_grad():
        batched = model(x, sigma, y)
        single = torch.cat([model(x[i : i + 1], sigma[i : i + 1], y[i : i + 1]) for i in range(4)])
    # fp32 conv kernels differ with the batch size (seen: 2e-6 on outputs of magnitude ~0.7); samples leaking into
    # each other would differ by O(0.1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_fresh_high_res_levels_are_identities(seed):
    """With zero-init high-res output convs and equal widths, a grown network is the base network whose final
    features are nearest-up-sampled before the (shared) `out` head (docs/method.md 4.1)."""
    grown = tiny(output_size=32)
    fresh = {k: v.clone() for k, v in grown.state_dict().items()}
    golden_fill(grown, seed=seed)
    state = grown.state_dict()
    high = range(grown.num_base_output_blocks, len(grown.output_blocks))
    for i in high:
        for suffix in ("weight", "bias"):
            key = f"output_blocks.{i}.0.out_layers.3.{suffix}"
            assert not fresh[key].any(), f"{key} must be zero-initialised"
            state[key] = fresh[key]
    grown.load_state_dict(state)
    base = tiny()
    base.load_state_dict({k: v for k, v in state.items() if k in base.state_dict()})

    features = []
    base.out.register_forward_hook(lambda module, args, output: features.append(args[0]))
    x, sigma, y = tiny_inputs(seed=seed)
    with torch.no_grad():
        base(x, sigma, y)
        expected = base.out(F.interpolate(features[0], scale_factor=4, mode="nearest"))
        torch.testing.assert_close(grown(x, sigma, y), expected, atol=1e-5, rtol=1e-5)
    assert grown.high_res_levels == 2 and len(high) == 2 * 3


def test_group_norm_runs_in_float32_under_autocast():
    norm = GroupNorm32(32, 64)
    x = torch.randn(2, 64, 4, 4).to(torch.bfloat16) * 100 + 1000
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)

    model = golden_fill(tiny()).eval()
    x, sigma, y = tiny_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, sigma, y)
    with torch.no_grad():
        full = model(x, sigma, y)
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)


# --- constructor and input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(output_size=24), "output_size must be image_size * 2**k with k >= 0; got output_size=24, image_size=8"),
        (dict(output_size=4), "output_size must be image_size * 2**k with k >= 0; got output_size=4, image_size=8"),
        (dict(model_channels=48), "level width 48 (= 48 * 1) must be a positive multiple of 32 for GroupNorm(32)"),
        (dict(output_size=16, channels_high=40),
         "high-resolution level width 40 (= 40 * 1) must be a positive multiple of 32 for GroupNorm(32)"),
        (dict(num_head_channels=24), "num_head_channels=24 must divide the attention width 64 (at ds=2)"),
        (dict(output_size=16, channel_mult_high=(1, 1)),
         "channel_mult_high needs one multiplier per high-resolution level (1); got [1, 1]"),
        (dict(attention_resolutions=(4,)), "attention_resolutions [4] are not downsample factors of this network"),
        (dict(image_size=6, channel_mult=(1, 2, 2)),
         "image_size=6 must be divisible by 2**(len(channel_mult)-1) = 4"),
        (dict(num_res_blocks=0), "need num_res_blocks >= 1 and num_res_blocks_high >= 0; got 0, 2"),
    ],
)
def test_constructor_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny(**overrides)


def test_forward_input_errors():
    model = tiny()
    x, sigma, y = tiny_inputs()
    with pytest.raises(ValueError, match=re.escape("x must have shape (N, 3, 8, 8); got (3, 3, 16, 16)")):
        model(torch.zeros(3, 3, 16, 16), sigma, y)
    with pytest.raises(ValueError, match=re.escape("num_classes=5, so it needs labels y of shape (3,)")):
        model(x, sigma)
    with pytest.raises(ValueError, match=re.escape("sigma must be a scalar or have shape (3,); got (2,)")):
        model(x, sigma[:2], y)
    with pytest.raises(ValueError, match=re.escape("num_classes=None, so it needs y=None")):
        tiny(num_classes=None)(x, sigma, y)


# --- 4. attention kernels -------------------------------------------------------------------------------------


def reference_attention(qkv, num_heads):
    """The official formula in float64: [q | k | v] chunks split into heads, softmax(q^T k / sqrt(d)) v."""
    n, width, tokens = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = (t.double().reshape(n * num_heads, head_dim, tokens) for t in qkv.chunk(3, dim=1))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / head_dim**0.5, dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(n, width // 3, tokens).to(qkv.dtype)


def bundled_config(**overrides):
    from pagoda.methods import diffusion

    return dict(diffusion.build_backbone(num_classes=10, **diffusion.preset_architecture("mnist16")).config,
                **overrides)


def attention_shapes(config):
    """{(qkv width, tokens, heads)} of every attention block of a network, read off a shape-only (meta) forward."""
    with torch.device("meta"):
        model = UNetModel(**config)
        shapes = set()
        for block in model.modules():
            if isinstance(block, unet.AttentionBlock):
                block.qkv.register_forward_hook(
                    lambda m, args, out, heads=block.num_heads: shapes.add((out.shape[1], out[0, 0].numel(), heads)))
        n = 1
        model(torch.zeros(n, 3, config["image_size"], config["image_size"]), torch.ones(n),
              torch.zeros(n, dtype=torch.long) if config["num_classes"] else None)
    return sorted(shapes)


SHAPE_CONFIGS = {"bundled": bundled_config, "imagenet64": imagenet64_config}


@pytest.mark.parametrize("config", sorted(SHAPE_CONFIGS))
@pytest.mark.parametrize("kernel", sorted(unet.ATTENTION_KERNELS))
def test_attention_kernels_equal_the_reference_formula(config, kernel):
    """Every kernel, forward and backward, at every attention shape of the bundled and ImageNet-64 networks."""
    shapes = attention_shapes(SHAPE_CONFIGS[config]())
    assert len(shapes) == {"bundled": 2, "imagenet64": 3}[config]
    gen = torch.Generator().manual_seed(0)
    for width, tokens, heads in shapes:
        qkv = torch.randn(1, width, tokens, generator=gen, requires_grad=True)
        cotangent = torch.randn(1, width // 3, tokens, generator=gen)
        out = unet.ATTENTION_KERNELS[kernel](qkv, heads)
        (grad,) = torch.autograd.grad(out, qkv, cotangent)
        qkv64 = qkv.detach().double().requires_grad_()
        expected = reference_attention(qkv64, heads)
        (expected_grad,) = torch.autograd.grad(expected, qkv64, cotangent.double())
        torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=1e-5, msg=f"{kernel} at {width, tokens}")
        torch.testing.assert_close(grad, expected_grad.float(), atol=1e-4, rtol=1e-5)


def network_outputs(model, kernel, monkeypatch, inputs, w):
    monkeypatch.setitem(unet.ATTENTION_BY_DEVICE, "cpu", kernel)
    with torch.no_grad():
        return model(*inputs, w=w)


@pytest.mark.parametrize("config", ["bundled", pytest.param("imagenet64_layout", marks=pytest.mark.slow)])
@pytest.mark.parametrize("guided", [False, True])
def test_network_with_each_kernel_equals_the_reference(config, guided, monkeypatch):
    """Whole networks, class-conditional, without and with the guidance-scale input (it enters through the
    embedding, as the labels do), give the reference formula's output with every kernel."""
    kwargs = bundled_config() if config == "bundled" else imagenet64_config(64)
    if config != "bundled":  # the ImageNet-64 layout (levels, attention, 1000 classes) at a test's width
        kwargs.update(model_channels=32, channels_high=32, num_head_channels=32)
    model = golden_fill(UNetModel(**kwargs, guidance_embed=guided)).eval()
    size, n = kwargs["image_size"], 2
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(n, 3, size, size, generator=gen), torch.tensor([0.3, 12.0]),
              torch.tensor([1, kwargs["num_classes"] - 1]))
    w = torch.tensor([1.5, 4.0]) if guided else None
    monkeypatch.setitem(unet.ATTENTION_KERNELS, "reference", reference_attention)
    expected = network_outputs(model, "reference", monkeypatch, inputs, w)
    if guided:  # the guidance input is live: another w changes the output
        assert (network_outputs(model, "reference", monkeypatch, inputs, None) - expected).abs().max() > 1e-3
    for kernel in sorted(set(unet.ATTENTION_KERNELS) - {"reference"}):
        out = network_outputs(model, kernel, monkeypatch, inputs, w)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=kernel)


def test_attention_choice_per_device_is_logged_once(monkeypatch, capsys):
    monkeypatch.setattr(unet, "_announced", set())
    assert unet.attention_kernel("cpu") is unet.ATTENTION_KERNELS[unet.ATTENTION_BY_DEVICE["cpu"]]
    assert unet.attention_kernel("cpu") is unet.attention_kernel("cpu")
    assert unet.attention_kernel("mps") is unet.attention_bmm  # device types without a measurement: the formula
    assert capsys.readouterr().out.splitlines() == [
        "attention on cpu: by_length (pagoda.unet.ATTENTION_BY_DEVICE)",
        "attention on mps: bmm (pagoda.unet.ATTENTION_BY_DEVICE)"]


def test_by_length_takes_the_plain_formula_up_to_8x8_tokens_and_sdpa_beyond(monkeypatch):
    monkeypatch.setattr(unet, "attention_bmm", lambda qkv, heads: "bmm")
    monkeypatch.setattr(unet, "attention_sdpa", lambda qkv, heads: "sdpa")
    assert unet.SHORT_TOKENS == 64
    assert [unet.attention_by_length(torch.zeros(1, 6, t), 1) for t in (16, 64, 65, 1024)] == [
        "bmm", "bmm", "sdpa", "sdpa"]
