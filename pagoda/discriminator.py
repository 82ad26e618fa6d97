"""Projected discriminator (Sauer et al. 2021, as used by PaGoDA): trainable multi-scale heads over the levels of
frozen feature networks.

One head per level of each feature network: blocks of spectral-norm conv + norm + LeakyReLU(0.2), then a
spectral-norm conv 4x4 to a `cmap_dim` map. The blocks (`head_blocks`) are 4x4 stride-2 down blocks while the map
is larger than 8x8; a map of 8x8 or less gets one 3x3 stride-1 block instead, so every head has a nonlinearity at
every level and every resolution (a head that is a single linear conv can use only what its level separates
linearly). Depths follow the actual feature-map sizes for the given image size; the official `_make_projector`
hard-codes 256, which gives the same depths (4/3/2/1) for features of 224 and 256 px inputs.

The norm is BatchNorm (official) or GroupNorm. Reals and fakes go through D in separate calls, so BatchNorm
normalises all-real and all-fake batches (in training mode a head then sees each batch type centred on its own
mean), while GroupNorm normalises each sample on its own.

With classes, logits use projection conditioning: <out, FC(embed(y))> / sqrt(cmap_dim). The official code loads
the embedding table from a StyleGAN-XL pickle (1000 x 320, pretrained on ImageNet); that file is not available
offline, so the table here is a trainable embedding with random init.

A guidance-conditioned discriminator D(x, y, w) (`guidance_embed`; the paper's text-to-image
discriminator takes an embedding of the CFG scale) adds, in every head, an MLP of the sinusoid of w to the class
embedding before the projection: w then shapes the same conditioning vector y does. The MLP's last layer starts at
zero, so a new D(x, y, w) equals D(x, y) at every w until training moves it.
"""

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from .unet import guidance_features, guidance_scales

# Output channels of a down block by the resolution it produces (projected GAN / StyleGAN-XL table).
HEAD_CHANNELS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}
HEAD_NORMS = ("batch", "group")


def head_channels(size, scale=1.0):
    """Channels for a map of side `size`: the table entry of the nearest power of two, times `scale`."""
    key = 2 ** min(max(round(math.log2(max(size, 1))), 2), 10)
    return max(1, int(HEAD_CHANNELS[key] * scale))


def head_blocks(size):
    """The blocks of a head over a map of side `size`, as (kernel, stride, padding, side after the block): 4x4
    stride-2 down blocks while the map is larger than 8, else one 3x3 stride-1 block that keeps the map's size
    (small maps are not shrunk further, and the head still gets its nonlinearity)."""
    blocks = []
    while size > 8:
        size //= 2  # a 4x4 stride-2 conv with padding 1 halves any side >= 2, rounding down
        blocks.append((4, 2, 1, size))
    return blocks or [(3, 1, 1, size)]


def head_norm(kind, channels):
    """BatchNorm, or GroupNorm with a group count that divides `channels` (at most 32 groups)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"discriminator head norm must be one of {', '.join(HEAD_NORMS)}, got {kind!r}")


class DiscriminatorHead(nn.Module):
    """Patch discriminator for one feature level of side `size`; class-conditional by projection."""

    def __init__(self, *, in_channels, size, num_classes=None, cond_dim=320, cmap_dim=64, channel_scale=1.0,
                 norm="batch"):
        super().__init__()
        layers, channels = [], in_channels
        for kernel, stride, pad, size in head_blocks(size):
            out_channels = head_channels(size, channel_scale)
            layers += [
                spectral_norm(nn.Conv2d(channels, out_channels, kernel, stride, pad, bias=False)),
                head_norm(norm, out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        self.down = nn.Sequential(*layers)
        # Maps smaller than the 4x4 kernel (tiny test networks) get just enough padding for a 1x1+ output.
        padding = max(0, (5 - size) // 2)
        self.num_classes = num_classes
        self.cmap_dim = cmap_dim
        out_dim = cmap_dim if num_classes else 1
        self.out = spectral_norm(nn.Conv2d(channels, out_dim, 4, 1, padding, bias=False))
        if num_classes:
            self.embed = nn.Embedding(num_classes, cond_dim)
            self.embed_proj = nn.Sequential(nn.Linear(cond_dim, cmap_dim), nn.LeakyReLU(0.2))
        self.guidance_embed = None

    def add_guidance_input(self, freq_dim=64):
        """The w-embedding: sinusoid(w) -> Linear -> SiLU -> Linear (zero) -> added to embed(y). Small (64 wide)
        beside the heads: w is one scalar. Made after the head's other weights, so they draw what they drew before."""
        if not self.num_classes:
            raise ValueError("a guidance-conditioned discriminator head needs classes: w enters through the class "
                             "projection")
        cond_dim = self.embed.embedding_dim
        self.guidance_embed = nn.Sequential(nn.Linear(freq_dim, freq_dim), nn.SiLU(), nn.Linear(freq_dim, cond_dim))
        nn.init.zeros_(self.guidance_embed[-1].weight)
        nn.init.zeros_(self.guidance_embed[-1].bias)

    @property
    def depth(self):
        """Number of conv + norm + LeakyReLU blocks before the output conv."""
        return len(self.down) // 3

    def forward(self, feature, y=None, w=None):
        out = self.out(self.down(feature))
        if self.num_classes:
            cond = self.embed(y)
            if self.guidance_embed is not None:
                freq = guidance_features(w, self.guidance_embed[0].in_features)
                cond = cond + self.guidance_embed(freq).to(cond.dtype)
            cmap = self.embed_proj(cond)
            out = (out * cmap[:, :, None, None]).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return out.flatten(1)


class ProjectedDiscriminator(nn.Module):
    """Heads over every level of every frozen feature network; only the heads are trainable.

    `image_size` is the side of the images D sees: the feature networks are probed once with it so that each
    head's depth matches its real feature-map size. `norm`: the heads' normalisation, "batch" or "group".
    """

    # What resuming from a checkpoint whose heads no longer fit is told (TrainLoop's resume).
    layout_note = ("the discriminator head layout changed: the heads are shaped by this code's head rule "
                   "(discriminator.head_blocks) and by --d_norm, --feature_resolution and --d_channel_scale")

    def __init__(self, *, feature_networks, image_size, num_classes=None, cond_dim=320, cmap_dim=64,
                 channel_scale=1.0, norm="batch", guidance_embed=False):
        super().__init__()
        if not feature_networks:
            raise ValueError("ProjectedDiscriminator needs at least one feature network")
        self.feature_networks = nn.ModuleDict(feature_networks)
        self.num_classes = num_classes
        self.heads = nn.ModuleDict()
        for name, net in self.feature_networks.items():
            sizes = net.output_sizes(image_size)
            self.heads[name] = nn.ModuleList(
                DiscriminatorHead(in_channels=c, size=min(hw), num_classes=num_classes, cond_dim=cond_dim,
                                  cmap_dim=cmap_dim, channel_scale=channel_scale, norm=norm)
                for c, hw in zip(net.channels, sizes)
            )
        self.guidance_embed = bool(guidance_embed)
        if self.guidance_embed:  # after every head, so the heads' own weights are those of D(x, y) with this seed
            if not num_classes:
                raise ValueError("a guidance-conditioned discriminator needs classes (num_classes): w enters through "
                                 "the class projection")
            for heads in self.heads.values():
                for head in heads:
                    head.add_guidance_input()

    @torch.no_grad()
    def extract(self, x):
        """Frozen features {network name: [levels]} without a graph (the D step: gradients reach the heads only)."""
        return {name: net(x) for name, net in self.feature_networks.items()}

    def forward(self, x, y=None, *, features=None, w=None):
        """Patch logits, one (N, P) tensor per head (networks in order, then levels). Without `features` the
        features are computed with a graph, so the generator step gets gradients with respect to x. `w`: the
        guidance scales ((N,)) of a guidance-conditioned D (None: w = 1, the data's distribution)."""
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                "class labels y are required by a conditional discriminator and refused by an unconditional one "
                f"(num_classes={self.num_classes}, y given: {y is not None})"
            )
        if features is None:
            features = {name: net(x) for name, net in self.feature_networks.items()}
        level = next(iter(features.values()))[0]  # x may be None when the features are given
        w = self._check_guidance(w, len(level), level.device)
        logits = []
        for name, heads in self.heads.items():
            logits.extend(head(f, y, w) for head, f in zip(heads, features[name]))
        return logits

    def _check_guidance(self, w, n, device):
        if not self.guidance_embed:
            if w is not None:
                raise ValueError("this discriminator has no guidance-scale input (guidance_embed=False); pass w=None")
            return None
        return guidance_scales(w, n, device)
