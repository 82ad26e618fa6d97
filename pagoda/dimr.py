"""DiMR (Liu et al. 2024, "Alleviating Distortion in Image Generation via Multi-Resolution Diffusion Models"), as a
backbone F(x_in, sigma, y) under this project's EDM preconditioning, beside the ADM UNet.

Branches run coarsest first and every branch patch-embeds the same full-resolution input at its own stride: a
transformer branch (the class token, self-attention) at the coarsest grid, ConvNeXt-style branches (depthwise 7x7,
GLU MLP) at each finer grid, each twice the previous one. Inside a branch, U-ViT long skips join the first half of
the blocks to the second. The cascade hands a branch's features to the next: its input embedding and every block
output, concatenated, then TD-LayerNorm -> linear -> pixel shuffle x2 -> TD-LayerNorm, added to the next branch's
embedding. Every branch has its own head; the network's output is the finest branch's, the coarser ones only feed
the multi-scale loss (`losses.MultiScaleEDMLoss`).

Growth (PaGoDA's stage 3 with DiMR's cascade as the template, `grow`): a grown branch has no input embedding (a
one-step generator has no noisy input at the new resolution); its tokens are the cascade of the branch before it,
plus a position embedding, and its zero-initialised head predicts a residual over that branch's prediction
up-sampled bicubically, so a freshly grown network is exactly its parent up-sampled.

Time enters only through the norms. A time-dependent parameter interpolates between two learned tensors,
value = s p0 + (1 - s) p1 with s = sigmoid((1 + w) tau + b) per entry; p0 = p1 at initialisation, so every norm
starts time-independent. DiMR's tau is its discrete step mapped to (-1, 1], larger when noisier; here
tau = ln(sigma) / 4, EDM's c_noise, which is also increasing in the noise level and spans about the same range
(-1.6 at sigma 0.002, 1.1 at sigma 80). The ablation `time_conditioning="scale_shift"` replaces the TD
parameters with the UNet's conditioning: a sinusoidal embedding of c_noise through an MLP, projected per norm to a
zero-initialised offset of its scale and shift.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet import timestep_embedding

TIME_CONDITIONING = ("td", "scale_shift")


def tau_of_sigma(sigma):
    """The time input of the TD norms: EDM's c_noise = ln(sigma) / 4."""
    return sigma.float().log() / 4


class TDParameter(nn.Module):
    """A tensor of `shape` that depends on tau: s p0 + (1 - s) p1, s = sigmoid((1 + w) tau + b) per entry."""

    def __init__(self, shape, init):
        super().__init__()
        self.p0 = nn.Parameter(torch.full(shape, float(init)))
        self.p1 = nn.Parameter(torch.full(shape, float(init)))
        self.w = nn.Parameter(torch.zeros(shape))
        self.b = nn.Parameter(torch.zeros(shape))

    def forward(self, time):
        tau = time.view(-1, *([1] * self.p0.ndim))
        s = torch.sigmoid((1 + self.w) * tau + self.b)
        return s * self.p0 + (1 - s) * self.p1


class EmbeddingParameter(nn.Module):
    """The scale-shift ablation: init + Linear(time embedding), the linear zero-initialised (starts at init)."""

    def __init__(self, shape, init, *, emb_channels):
        super().__init__()
        self.init = float(init)
        self.proj = nn.Linear(emb_channels, math.prod(shape))
        self.shape = tuple(shape)
        self.reset()

    def reset(self):
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, time):
        return self.init + self.proj(time).view(-1, *self.shape)


def _per_sample(value, x):
    """(B, D) -> (B, 1, ..., 1, D), broadcasting against channels-last `x`."""
    return value.view(value.shape[0], *([1] * (x.ndim - 2)), value.shape[-1])


class TDRMSNorm(nn.Module):
    """x * gamma(t) / (rms over channels + 1e-8): scale only, as DiMR's blocks use (eps after the root)."""

    def __init__(self, dim, make_param):
        super().__init__()
        self.gamma = make_param((dim,), 1.0)

    def forward(self, x, time):
        rms = x.float().pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
        return (x.float() / rms * _per_sample(self.gamma(time), x)).to(x.dtype)


class TDLayerNorm(nn.Module):
    """LayerNorm (eps 1e-5) with a time-dependent scale gamma(t) and shift beta(t)."""

    def __init__(self, dim, make_param):
        super().__init__()
        self.gamma = make_param((dim,), 1.0)
        self.beta = make_param((dim,), 0.0)

    def forward(self, x, time):
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=1e-5)
        return (normed * _per_sample(self.gamma(time), x) + _per_sample(self.beta(time), x)).to(x.dtype)


class GLUMLP(nn.Module):
    """W2(GELU(W0 x) * W1 x)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w0, self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w2(F.gelu(self.w0(x)) * self.w1(x))


class TransformerBlock(nn.Module):
    """x + Attn(norm(x)), then x + MLP(norm(x)), on (B, tokens, D)."""

    def __init__(self, dim, hidden, heads, make_param):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = TDRMSNorm(dim, make_param), TDRMSNorm(dim, make_param)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.mlp = GLUMLP(dim, hidden)

    def attention(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(x.dtype)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x, time):
        x = x + self.attention(self.norm1(x, time))
        return x + self.mlp(self.norm2(x, time))


class ConvNeXtBlock(nn.Module):
    """x + DWConv(x) (no norm, no activation), then x + MLP(norm(x)), on channels-last (B, H, W, D)."""

    def __init__(self, dim, hidden, make_param, kernel_size=7):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = TDRMSNorm(dim, make_param)
        self.mlp = GLUMLP(dim, hidden)

    def forward(self, x, time):
        x = x + self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(x, time))


def _block_count(num_blocks):
    """DiMR's depth rule: L = num_blocks // 2 * 2 + 1 (an even setting gets one block more)."""
    return num_blocks // 2 * 2 + 1


class Branch(nn.Module):
    """One resolution: patch embedding of the full input at stride `patch`, position embedding, the cascade from the
    coarser branch added, U-ViT blocks with long skips, and a head predicting at the branch's grid. A grown branch
    (`patch` 0) embeds no input: it starts from the cascade, and its head (zero-initialised by `grow`) adds to the
    previous branch's prediction up-sampled."""

    def __init__(self, *, kind, width, mlp_width, num_blocks, patch, grid, in_channels, num_classes, make_param,
                 heads=0):
        super().__init__()
        self.kind, self.grid, self.width = kind, grid, width
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch) if patch else None
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.class_embed = nn.Embedding(num_classes, width) if kind == "transformer" and num_classes else None

        def block():
            if kind == "transformer":
                return TransformerBlock(width, mlp_width, heads, make_param)
            return ConvNeXtBlock(width, mlp_width, make_param)
        half = _block_count(num_blocks) // 2
        self.in_blocks = nn.ModuleList(block() for _ in range(half))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block() for _ in range(half))
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(half))
        self.head_norm = TDLayerNorm(width, make_param)
        self.head = nn.Conv2d(width, in_channels, 3, padding=1)

    @property
    def depth(self):
        return 2 * len(self.in_blocks) + 1

    def _to_tokens(self, h, y):
        if self.kind != "transformer":
            return h
        tokens = h.flatten(1, 2)
        if self.class_embed is not None:
            tokens = torch.cat([self.class_embed(y)[:, None], tokens], dim=1)
        return tokens

    def _to_grid(self, tokens):
        if self.kind != "transformer":
            return tokens
        tokens = tokens[:, 1:] if self.class_embed is not None else tokens
        return tokens.reshape(tokens.shape[0], self.grid, self.grid, self.width)

    def forward(self, x_in, time, y, cascade=None, *, features=False):
        """(prediction (B, C, grid, grid), the cascade features (B, grid, grid, (L + 1) D) when `features`).
        A grown branch's `x_in` is the previous branch's prediction, which its head's output is added to."""
        h = self.pos.view(1, self.grid, self.grid, self.width)
        if self.patch is not None:
            h = h + self.patch(x_in).permute(0, 2, 3, 1)
        if cascade is not None:
            h = h + cascade
        x = self._to_tokens(h, y)
        outputs, skips = [x], []
        for blk in self.in_blocks:
            x = blk(x, time)
            skips.append(x)
            outputs.append(x)
        x = self.mid_block(x, time)
        outputs.append(x)
        for blk, skip in zip(self.out_blocks, self.skips):
            x = blk(skip(torch.cat([x, skips.pop()], dim=-1)), time)
            outputs.append(x)
        out = self.head(self.head_norm(self._to_grid(x), time).permute(0, 3, 1, 2))
        if self.patch is None:
            out = out + F.interpolate(x_in, size=out.shape[-2:], mode="bicubic", align_corners=False)
        return out, (torch.cat([self._to_grid(o) for o in outputs], dim=-1) if features else None)


class Cascade(nn.Module):
    """Coarse features (B, h, w, width_in) -> TD-LayerNorm -> linear -> pixel shuffle x ratio -> TD-LayerNorm."""

    def __init__(self, width_in, width_out, make_param, ratio=2):
        super().__init__()
        self.ratio, self.width_out = ratio, width_out
        self.norm_in = TDLayerNorm(width_in, make_param)
        self.linear = nn.Linear(width_in, width_out * ratio * ratio)
        self.norm_out = TDLayerNorm(width_out, make_param)

    def forward(self, features, time):
        b, h, w, _ = features.shape
        r = self.ratio
        x = self.linear(self.norm_in(features, time)).view(b, h, w, r, r, self.width_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, self.width_out)  # first r index: row offset
        return self.norm_out(x, time)


class DiMR(nn.Module):
    """The multi-resolution backbone F(x_in, sigma, y) -> the finest branch's prediction.

    `branches`: coarsest first, dicts of kind ("transformer" first, then "convnext"), width, mlp_width,
    num_blocks (DiMR's setting: L = num_blocks // 2 * 2 + 1 blocks), patch, and heads for the transformer. Each
    branch's grid is image_size / patch and each grid is twice the previous one.
    """

    SIDECAR_KEY = "dimr"

    def __init__(self, *, image_size, in_channels, branches, num_classes=0, time_conditioning="td",
                 time_embed_dim=128, output_size=0, out_channels=0):
        super().__init__()
        branches = [dict(b) for b in branches]
        grids = self._check(image_size, branches, time_conditioning, output_size, out_channels, in_channels)
        self.config = dict(image_size=image_size, in_channels=in_channels, out_channels=in_channels,
                           output_size=grids[-1], num_classes=num_classes, branches=branches,
                           time_conditioning=time_conditioning, time_embed_dim=time_embed_dim)
        if time_conditioning == "td":
            self.time_embed = None
            make_param = TDParameter
        else:
            self.time_embed = nn.Sequential(nn.Linear(time_embed_dim, 4 * time_embed_dim), nn.SiLU(),
                                            nn.Linear(4 * time_embed_dim, 4 * time_embed_dim))
            def make_param(shape, init):
                return EmbeddingParameter(shape, init, emb_channels=4 * time_embed_dim)
        self.branches = nn.ModuleList(
            Branch(**b, grid=grid, in_channels=in_channels, num_classes=num_classes, make_param=make_param)
            for b, grid in zip(branches, grids))
        self.cascades = nn.ModuleList(
            Cascade((lo.depth + 1) * lo.width, hi.width, make_param)
            for lo, hi in zip(self.branches[:-1], self.branches[1:]))
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, EmbeddingParameter):
                module.reset()  # the ablation's projections start at zero: the norms start time-independent

    @staticmethod
    def _check(image_size, branches, time_conditioning, output_size, out_channels, in_channels):
        """Every branch's grid, or a ValueError naming what is wrong with the layout."""
        if time_conditioning not in TIME_CONDITIONING:
            raise ValueError(f"time_conditioning must be one of {TIME_CONDITIONING}, got {time_conditioning!r}")
        if not branches or branches[0]["kind"] != "transformer" or any(
                b["kind"] != "convnext" for b in branches[1:]):
            raise ValueError("DiMR needs one transformer branch first, then convnext branches")
        embedded = [b for b in branches if b["patch"]]
        if branches[:len(embedded)] != embedded:
            raise ValueError("grown branches (patch 0) come after every branch that embeds the input")
        grids = [image_size / b["patch"] for b in embedded]
        if any(g != int(g) for g in grids) or any(hi != 2 * lo for lo, hi in zip(grids, grids[1:])):
            raise ValueError(f"branch grids {grids} (image_size {image_size} / patch) must be whole and double "
                             f"from each branch to the next")
        if embedded[-1]["patch"] != 1:
            raise ValueError(f"the finest branch predicts the output: its patch must be 1, got {embedded[-1]['patch']}")
        grids = [int(g) for g in grids] + [image_size * 2 ** (k + 1) for k in range(len(branches) - len(embedded))]
        if output_size not in (0, grids[-1]) or out_channels not in (0, in_channels):
            raise ValueError(f"this DiMR backbone predicts at {grids[-1]} px with {in_channels} channels, not "
                             f"{output_size} px / {out_channels} channels")
        return grids

    def time(self, sigma):
        c_noise = tau_of_sigma(sigma)
        if self.time_embed is None:
            return c_noise
        return self.time_embed(timestep_embedding(c_noise, self.config["time_embed_dim"]))

    def forward_branches(self, x, sigma, y=None):
        """Every branch's prediction, coarsest first (the finest is the network's output)."""
        if self.config["num_classes"] and y is None:
            raise ValueError("this DiMR backbone is class-conditional: pass labels y")
        time = self.time(sigma)
        cascade, outputs = None, []
        last = len(self.branches) - 1
        for k, branch in enumerate(self.branches):
            out, features = branch(x if branch.patch is not None else outputs[-1], time, y, cascade,
                                   features=k < last)
            outputs.append(out)
            if k < last:
                cascade = self.cascades[k](features, time)
        return outputs

    def forward(self, x, sigma, y=None):
        return self.forward_branches(x, sigma, y)[-1]

    def adaptive_weight_layer(self):
        """The layer PaGoDA's adaptive GAN weight reads gradients at (the UNet's method of the same name): the
        output projection of the finest branch's last block."""
        finest = self.branches[-1]
        return (finest.out_blocks[-1] if len(finest.out_blocks) else finest.mid_block).mlp.w2

    def freeze_for_growth(self, activate_from):
        """Train only branches[activate_from:] (with the cascades into them): a grown generator's finest parent
        branch and the grown ones at activate_from = the parent's branch count - 1. Returns (trainable, frozen)
        parameter counts."""
        if not 0 <= activate_from < len(self.branches):
            raise ValueError(f"activate_from must be in [0, {len(self.branches) - 1}] for this DiMR network (the "
                             f"index of the first branch that trains), got {activate_from}")
        self.requires_grad_(False)
        for k in range(activate_from, len(self.branches)):
            self.branches[k].requires_grad_(True)
            if k:
                self.cascades[k - 1].requires_grad_(True)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters()) - trainable


def _init_weights(module):
    """DiMR's: linear and embedding weights truncated normal (std 0.02), biases 0; convs keep PyTorch's init."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _transformer(width, num_blocks, patch, heads):
    return dict(kind="transformer", width=width, mlp_width=2 * width, num_blocks=num_blocks, patch=patch,
                heads=heads)


def _convnext(width, num_blocks, patch):
    return dict(kind="convnext", width=width, mlp_width=2 * width, num_blocks=num_blocks, patch=patch)


# The released ImageNet-256 XL/2R on 4x32x32 SD-VAE latents, the 3-branch ImageNet-512 layout reconstructed from
# its reported size (4x64x64 latents), and ~1M-parameter pixel-space layouts for the bundled data.
CONFIGS = {
    "xl2r_256": dict(image_size=32, in_channels=4, num_classes=1001,
                     branches=[_transformer(960, 39, 2, 16), _convnext(480, 20, 1)]),
    "xl3r_512": dict(image_size=64, in_channels=4, num_classes=1001,
                     branches=[_transformer(960, 39, 4, 16), _convnext(480, 20, 2), _convnext(240, 20, 1)]),
    "p16_2r": dict(image_size=16, in_channels=3, branches=[_transformer(96, 7, 2, 4), _convnext(48, 6, 1)]),
    "p16_3r": dict(image_size=16, in_channels=3,
                   branches=[_transformer(96, 7, 4, 4), _convnext(48, 4, 2), _convnext(32, 4, 1)]),
    "p32_3r": dict(image_size=32, in_channels=3,
                   branches=[_transformer(96, 7, 4, 4), _convnext(48, 4, 2), _convnext(32, 4, 1)]),
}


def dimr_config(name, **overrides):
    """A named layout's constructor arguments, with `overrides` (e.g. num_classes, time_conditioning)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown DiMR layout {name!r}; choose from {', '.join(sorted(CONFIGS))}")
    return {**CONFIGS[name], **overrides}


def grown_branch(finest):
    """A grown branch's layout: a ConvNeXt branch without input embedding, two thirds of the parent's finest width
    (a multiple of 8; p32_3r's 48 -> 32) and the blocks setting 4 (5 blocks)."""
    return _convnext(max(8, round(finest["width"] * 2 / 3 / 8) * 8), 4, 0)


def grow(backbone, *, factor=2):
    """The backbone with one grown branch per doubling of its output (factor a power of two), every existing
    weight copied; the grown heads start at zero, so the result is the parent's output up-sampled bicubically
    once per branch. Returns (grown backbone, the names of its new tensors)."""
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"growth factor must be a power of two >= 2, got {factor}")
    cfg = dict(backbone.config, output_size=0)
    for _ in range(int(math.log2(factor))):
        cfg["branches"] = cfg["branches"] + [grown_branch(cfg["branches"][-1])]
    grown = DiMR(**cfg)
    old = backbone.state_dict()
    _, unexpected = grown.load_state_dict(old, strict=False)
    if unexpected:
        raise ValueError(f"cannot grow: {unexpected[:3]} of the previous network have no place in the grown one")
    for branch in grown.branches[len(backbone.branches):]:
        nn.init.zeros_(branch.head.weight)
        nn.init.zeros_(branch.head.bias)
    return grown.to(next(backbone.parameters()).device), sorted(set(grown.state_dict()) - set(old))


def multiscale_weights(num_branches):
    """The multi-scale loss weights, coarsest first: [1/4, 1] for two branches, [1/4, 1/2, 1] for three (each
    further coarser branch half the next)."""
    if num_branches == 2:
        return (0.25, 1.0)
    return tuple(0.5 ** (num_branches - 1 - k) for k in range(num_branches))
