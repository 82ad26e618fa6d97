"""Projected discriminator (Sauer et al. 2021, as used by PaGoDA): trainable multi-scale heads over the levels of
frozen feature networks.

One head per level of each feature network: spectral-norm conv 4x4 s2 + BatchNorm + LeakyReLU(0.2) down blocks
to at most 8x8, then a spectral-norm conv 4x4 to a `cmap_dim` map. With classes, logits use projection
conditioning: <out, FC(embed(y))> / sqrt(cmap_dim). The official code loads the embedding table from a
StyleGAN-XL pickle (1000 x 320, pretrained on ImageNet); that file is not available offline, so the table here
is a trainable embedding with random init. Head depths follow the actual feature-map sizes for the given
image size (the official `_make_projector` hard-codes 256).
"""

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

# Output channels of a down block by the resolution it produces (projected GAN / StyleGAN-XL table).
HEAD_CHANNELS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}


def head_channels(size, scale=1.0):
    """Channels for a map of side `size`: the table entry of the nearest power of two, times `scale`."""
    key = 2 ** min(max(round(math.log2(max(size, 1))), 2), 10)
    return max(1, int(HEAD_CHANNELS[key] * scale))


class DiscriminatorHead(nn.Module):
    """Patch discriminator for one feature level of side `size`; class-conditional by projection."""

    def __init__(self, *, in_channels, size, num_classes=None, cond_dim=320, cmap_dim=64, channel_scale=1.0):
        super().__init__()
        layers, channels = [], in_channels
        while size > 8:
            out_channels = head_channels(size // 2, channel_scale)
            layers += [
                spectral_norm(nn.Conv2d(channels, out_channels, 4, 2, 1, bias=False)),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels, size = out_channels, size // 2
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

    def forward(self, feature, y=None):
        out = self.out(self.down(feature))
        if self.num_classes:
            cmap = self.embed_proj(self.embed(y))
            out = (out * cmap[:, :, None, None]).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return out.flatten(1)


class ProjectedDiscriminator(nn.Module):
    """Heads over every level of every frozen feature network; only the heads are trainable.

    `image_size` is the side of the images D sees: the feature networks are probed once with it so that each
    head's depth matches its real feature-map size.
    """

    def __init__(self, *, feature_networks, image_size, num_classes=None, cond_dim=320, cmap_dim=64,
                 channel_scale=1.0):
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
                                  cmap_dim=cmap_dim, channel_scale=channel_scale)
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
