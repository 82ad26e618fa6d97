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
"""

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


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

    @property
    def depth(self):
        """Number of conv + norm + LeakyReLU blocks before the output conv."""
        return len(self.down) // 3

    def forward(self, feature, y=None):
        out = self.out(self.down(feature))
        if self.num_classes:
            cmap = self.embed_proj(self.embed(y))
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
                 channel_scale=1.0, norm="batch"):
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

    @torch.no_grad()
    def extract(self, x):
        """Frozen features {network name: [levels]} without a graph (the D step: gradients reach the heads only)."""
        return {name: net(x) for name, net in self.feature_networks.items()}

    def forward(self, x, y=None, *, features=None):
        """Patch logits, one (N, P) tensor per head (networks in order, then levels). Without `features` the
        features are computed with a graph, so the generator step gets gradients with respect to x."""
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                "class labels y are required by a conditional discriminator and refused by an unconditional one "
                f"(num_classes={self.num_classes}, y given: {y is not None})"
            )
        if features is None:
            features = {name: net(x) for name, net in self.feature_networks.items()}
        logits = []
        for name, heads in self.heads.items():
            logits.extend(head(f, y) for head, f in zip(heads, features[name]))
        return logits
