"""ADM UNet backbone F(x_in, sigma, y), state-dict compatible with guided-diffusion / consistency-models.

The layout (module names, shapes and their order) matches the released EDM ImageNet-64 teacher
`edm_imagenet64_ema.pt` in consistency-models naming, and the PaGoDA generators grown from it: each extra 2x of
output resolution appends, after the base network's output blocks, one up-sampling ResBlock and
`num_res_blocks_high` plain ResBlocks (additive embedding, no attention, no skip concatenation), all with
zero-initialised output convolutions so that growing preserves the function (docs/method.md 1, 4.1).

The network receives the raw sigma and computes its own noise-embedding input c_noise = 250 ln(sigma), the
convention the released checkpoint was trained with.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from . import logger
from .nn import zero_module

# GroupNorm's group count in every normalisation layer (ADM's): channel widths must be multiples of it.
NORM_GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back, so fp16/bf16 activations keep accurate statistics."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def normalization(channels):
    return GroupNorm32(NORM_GROUPS, channels)


def timestep_embedding(c_noise, dim, max_period=10000):
    """Sinusoidal embedding of the (N,) noise levels: [cos | sin] over geometric frequencies (ADM order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    """A block whose forward takes the (time + class) embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    """nn.Sequential that hands the embedding to the children that need it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """ADM residual block, optionally resampling (nearest x2 up / 2x2 average-pool down) inside the block.

    With use_scale_shift_norm the embedding modulates the second norm as GN(h) * (1 + scale) + shift;
    otherwise it is added to the features before the second norm (the grown high-resolution blocks).
    """

    def __init__(self, *, channels, emb_channels, out_channels=None, dropout=0.0, use_scale_shift_norm=False,
                 up=False, down=False, use_checkpoint=False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        # ADM uses a 1x1 conv only when the width changes; equal widths keep an exact identity skip.
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x, emb):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def _forward(self, x, emb):
        # Resampling sits between the first activation and the first conv, on both paths (ADM order).
        h = self._resample(self.in_layers[:-1](x))
        h = self.in_layers[-1](h)
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, in the checkpoint's qkv layout.

    The 1x1 qkv conv's output channels are [q | k | v]; each chunk is split into heads of num_head_channels
    (the layout of ADM's QKVAttention and of the flash path the checkpoint was used with).
    """

    def __init__(self, *, channels, num_head_channels, use_checkpoint=False):
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x):
        n, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3 * c, height * width)
        h = attention_kernel(x.device.type)(qkv, self.num_heads).reshape(n, c, height, width)
        return x + self.proj_out(h)


def attention_sdpa(qkv, num_heads):
    """softmax(q^T k / sqrt(head_dim)) v of the (N, 3 * C, T) qkv tensor, as (N, C, T), through
    F.scaled_dot_product_attention. q, k and v are made contiguous (N, heads, tokens, head_dim) tensors (one copy):
    the fused CPU kernel and CUDA's flash / memory-efficient kernels want a unit-stride last dimension, and with
    strided views SDPA falls back to its math path."""
    n, width, tokens = qkv.shape
    q, k, v = qkv.reshape(n, 3, num_heads, width // (3 * num_heads), tokens).transpose(-1, -2).contiguous().unbind(1)
    h = F.scaled_dot_product_attention(q, k, v)
    return h.transpose(-1, -2).reshape(n, width // 3, tokens)


def attention_math(qkv, num_heads):
    """attention_sdpa restricted to SDPA's unfused math path (kept as a candidate for the measurement)."""
    with sdpa_kernel(SDPBackend.MATH):
        return attention_sdpa(qkv, num_heads)


def attention_bmm(qkv, num_heads):
    """The official QKVAttention's formula: two batched matmuls over (N * heads), q and k each scaled by
    head_dim^(-1/4) (kinder to fp16 than one 1/sqrt(head_dim) after the product), softmax in float32."""
    n, width, tokens = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = (t.reshape(n * num_heads, head_dim, tokens) for t in qkv.chunk(3, dim=1))
    scale = head_dim ** -0.25
    weight = torch.bmm((q * scale).transpose(1, 2), k * scale)  # (N * heads, query tokens, key tokens)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.bmm(v, weight.transpose(1, 2)).reshape(n, width // 3, tokens)


# On CPU the fused SDPA kernel has a fixed cost per call that the plain formula does not pay: up to this many tokens
# (8 x 8 px) two bmm calls are faster, forward and backward; beyond it the fused kernel wins (docs/speed.md).
SHORT_TOKENS = 64


def attention_by_length(qkv, num_heads):
    """attention_bmm for sequences of at most SHORT_TOKENS tokens, attention_sdpa for longer ones."""
    return (attention_bmm if qkv.shape[-1] <= SHORT_TOKENS else attention_sdpa)(qkv, num_heads)


ATTENTION_KERNELS = {"sdpa": attention_sdpa, "math": attention_math, "bmm": attention_bmm,
                     "by_length": attention_by_length}
# The kernel per device type (docs/speed.md, bench/official.py): on CPU the plain formula for short sequences and
# the fused SDPA kernel for long ones; on CUDA SDPA takes its flash / memory-efficient kernels. Device types not
# listed (mps, xpu, ...) take the plain formula, which every backend runs.
ATTENTION_BY_DEVICE = {"cpu": "by_length", "cuda": "sdpa"}
_announced = set()


def attention_kernel(device_type):
    """The attention function for tensors on `device_type`; the first use of each device type is logged."""
    name = ATTENTION_BY_DEVICE.get(device_type, "bmm")
    if device_type not in _announced and not torch.compiler.is_compiling():
        _announced.add(device_type)
        logger.log(f"attention on {device_type}: {name} (pagoda.unet.ATTENTION_BY_DEVICE)")
    return ATTENTION_KERNELS[name]


def _level_width(base, mult, what):
    width = base * mult
    if width != int(width) or int(width) <= 0 or int(width) % NORM_GROUPS:
        raise ValueError(
            f"{what} width {width} (= {base} * {mult}) must be a positive multiple of {NORM_GROUPS} "
            f"for GroupNorm({NORM_GROUPS})"
        )
    return int(width)


def _high_res_levels(image_size, output_size):
    ratio = output_size // image_size
    if output_size % image_size or ratio & (ratio - 1):
        raise ValueError(
            f"output_size must be image_size * 2**k with k >= 0; got output_size={output_size}, image_size={image_size}"
        )
    return ratio.bit_length() - 1


class UNetModel(nn.Module):
    """ADM UNet with optional grown high-resolution output levels; returns the raw output F(c_in x, sigma, y)."""

    SIDECAR_KEY = "unet"  # exports record the constructor config under this entry (pagoda.model_io.ARCHITECTURES)

    def __init__(self, *, image_size, model_channels, num_res_blocks, in_channels=3, out_channels=3,
                 attention_resolutions=(2, 4, 8), dropout=0.0, channel_mult=(1, 2, 3, 4), num_classes=None,
                 num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, use_checkpoint=False,
                 output_size=None, channels_high=None, num_res_blocks_high=2, channel_mult_high=None,
                 guidance_embed=False):
        super().__init__()
        output_size = image_size if output_size is None else output_size
        channels_high = model_channels if channels_high is None else channels_high
        k = _high_res_levels(image_size, output_size)
        channel_mult_high = (1,) * k if channel_mult_high is None else tuple(channel_mult_high)
        self._validate(image_size, channel_mult, num_res_blocks, num_res_blocks_high, channel_mult_high, k,
                       attention_resolutions, num_head_channels, num_classes)
        self.config = dict(
            image_size=image_size, model_channels=model_channels, num_res_blocks=num_res_blocks,
            in_channels=in_channels, out_channels=out_channels, attention_resolutions=list(attention_resolutions),
            dropout=dropout, channel_mult=list(channel_mult), num_classes=num_classes,
            num_head_channels=num_head_channels, use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown, use_checkpoint=use_checkpoint, output_size=output_size,
            channels_high=channels_high, num_res_blocks_high=num_res_blocks_high,
            channel_mult_high=list(channel_mult_high),
        )
        if guidance_embed:  # recorded only when present: configs (and sidecars) of networks without it are unchanged
            self.config["guidance_embed"] = True
        self.model_channels = model_channels
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self._high_res_levels = k

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        self.guidance_embed = None
        if guidance_embed:
            self.guidance_embed = _guidance_embedding(model_channels, emb_dim)

        widths = [_level_width(model_channels, m, "level") for m in channel_mult]
        block = dict(emb_channels=emb_dim, dropout=dropout, use_checkpoint=use_checkpoint)
        res_block = dict(block, use_scale_shift_norm=use_scale_shift_norm)
        attn = dict(num_head_channels=num_head_channels, use_checkpoint=use_checkpoint)
        attention_ds = set(attention_resolutions)

        skip_widths = self._build_input_blocks(widths, num_res_blocks, attention_ds, resblock_updown,
                                               in_channels, res_block, attn)
        ch = widths[-1]
        self._check_heads(ch, num_head_channels, 2 ** (len(widths) - 1))
        self.middle_block = TimestepEmbedSequential(
            ResBlock(channels=ch, **res_block),
            AttentionBlock(channels=ch, **attn),
            ResBlock(channels=ch, **res_block),
        )
        self._build_output_blocks(widths, num_res_blocks, attention_ds, resblock_updown, skip_widths,
                                  res_block, attn)
        # Blocks before this index consume encoder skips; the grown high-resolution blocks after it do not.
        self.num_base_output_blocks = len(self.output_blocks)
        ch = self._build_high_res_blocks(widths[0], channels_high, channel_mult_high, num_res_blocks_high, block)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    @staticmethod
    def _validate(image_size, channel_mult, num_res_blocks, num_res_blocks_high, channel_mult_high, k,
                  attention_resolutions, num_head_channels, num_classes):
        if not channel_mult:
            raise ValueError("channel_mult must name at least one resolution level")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}"
            )
        if num_res_blocks < 1 or num_res_blocks_high < 0:
            raise ValueError(
                f"need num_res_blocks >= 1 and num_res_blocks_high >= 0; got {num_res_blocks}, {num_res_blocks_high}"
            )
        if len(channel_mult_high) != k:
            raise ValueError(
                f"channel_mult_high needs one multiplier per high-resolution level ({k}); got {list(channel_mult_high)}"
            )
        valid_ds = [2**level for level in range(len(channel_mult))]
        unknown = sorted(set(attention_resolutions) - set(valid_ds))
        if unknown:
            raise ValueError(
                f"attention_resolutions {unknown} are not downsample factors of this network (valid: {valid_ds}); "
                "pass ds = image_size // resolution, e.g. 2 for 32 px attention in a 64 px network"
            )
        if num_head_channels <= 0:
            raise ValueError(f"num_head_channels must be positive, got {num_head_channels}")
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be None or positive, got {num_classes}")

    @staticmethod
    def _check_heads(width, num_head_channels, ds):
        if width % num_head_channels:
            raise ValueError(
                f"num_head_channels={num_head_channels} must divide the attention width {width} (at ds={ds})"
            )

    def _build_input_blocks(self, widths, num_res_blocks, attention_ds, resblock_updown, in_channels,
                            res_block, attn):
        """Encoder: a stem conv, then per level num_res_blocks (ResBlock [+ attention]) and a down-sampler."""
        ch = widths[0]
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_widths = [ch]
        for level, width in enumerate(widths):
            ds = 2**level
            for _ in range(num_res_blocks):
                layers = [ResBlock(channels=ch, out_channels=width, **res_block)]
                ch = width
                if ds in attention_ds:
                    self._check_heads(ch, attn["num_head_channels"], ds)
                    layers.append(AttentionBlock(channels=ch, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                self.input_blocks.append(TimestepEmbedSequential(self._downsampler(ch, resblock_updown, res_block)))
                skip_widths.append(ch)
        return skip_widths

    def _build_output_blocks(self, widths, num_res_blocks, attention_ds, resblock_updown, skip_widths,
                             res_block, attn):
        """Decoder: per level (deepest first) num_res_blocks + 1 blocks, each consuming one encoder skip."""
        ch = widths[-1]
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            ds = 2**level
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(channels=ch + skip_widths.pop(), out_channels=widths[level], **res_block)]
                ch = widths[level]
                if ds in attention_ds:
                    layers.append(AttentionBlock(channels=ch, **attn))
                # The base network's last (full-resolution) level gets no up-sampler, as in ADM.
                if level and i == num_res_blocks:
                    layers.append(self._upsampler(ch, resblock_updown, res_block))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    def _build_high_res_blocks(self, ch, channels_high, channel_mult_high, num_res_blocks_high, block):
        """PaGoDA's grown levels: per 2x an up-sampling ResBlock, then plain ResBlocks; additive embedding."""
        for mult in channel_mult_high:
            width = _level_width(channels_high, mult, "high-resolution level")
            self.output_blocks.append(TimestepEmbedSequential(
                ResBlock(channels=ch, out_channels=width, up=True, **block)
            ))
            ch = width
            for _ in range(num_res_blocks_high):
                self.output_blocks.append(TimestepEmbedSequential(ResBlock(channels=ch, **block)))
        return ch

    @staticmethod
    def _downsampler(ch, resblock_updown, res_block):
        if resblock_updown:
            return ResBlock(channels=ch, down=True, **res_block)
        return StridedConvDown(ch)

    @staticmethod
    def _upsampler(ch, resblock_updown, res_block):
        if resblock_updown:
            return ResBlock(channels=ch, up=True, **res_block)
        return NearestUpConv(ch)

    @property
    def high_res_levels(self):
        """Number k of grown 2x output levels (output_size = image_size * 2**k)."""
        return self._high_res_levels

    def adaptive_weight_layer(self):
        """Zero-initialised output conv of the last ResBlock, the layer PaGoDA's adaptive GAN weight uses."""
        return self.output_blocks[-1][0].out_layers[3]

    def noise_embedding(self, sigma):
        """The embedding of noise levels sigma (N,), before the class embedding is added."""
        # Released-checkpoint convention: c_noise = 1000 * 0.25 * ln(sigma); the tiny offset keeps sigma=0 finite.
        c_noise = 250.0 * torch.log(sigma + 1e-44)
        return self.time_embed(timestep_embedding(c_noise, self.model_channels))

    def forward(self, x, sigma, y=None, w=None):
        """Raw output F for inputs x (already scaled by c_in), noise levels sigma ((N,) or scalar), labels y and,
        for a guidance-conditioned network, guidance scales w ((N,); None: w = 1, the unguided point)."""
        self._check_inputs(x, y)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        elif tuple(sigma.shape) != (x.shape[0],):
            raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},); got {tuple(sigma.shape)}")
        emb = self.noise_embedding(sigma)
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        emb = self._add_guidance(emb, w)
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for i, module in enumerate(self.output_blocks):
            if i < self.num_base_output_blocks:
                h = torch.cat([h, skips.pop()], dim=1)
            h = module(h, emb)
        return self.out(h)

    def _add_guidance(self, emb, w):
        if self.guidance_embed is None:
            if w is not None:
                raise ValueError("this network has no guidance-scale input (guidance_embed=False); pass w=None")
            return emb
        w = guidance_scales(w, emb.shape[0], emb.device)
        return emb + self.guidance_embed(guidance_features(w, self.model_channels)).to(emb.dtype)

    def _check_inputs(self, x, y):
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}); got {tuple(x.shape)}")
        if (y is None) != (self.num_classes is None):
            need = f"labels y of shape ({x.shape[0]},)" if self.num_classes is not None else "y=None"
            raise ValueError(f"this network has num_classes={self.num_classes}, so it needs {need}")
        if y is not None and tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},) to match the batch; got {tuple(y.shape)}")


def guidance_scales(w, n, device):
    """The guidance scales of a batch of n as an (n,) tensor on `device`; None is w = 1 (unguided)."""
    w = torch.ones(n, device=device) if w is None else torch.as_tensor(w, device=device)
    if tuple(w.shape) != (n,):
        raise ValueError(f"w must have shape ({n},) to match the batch; got {tuple(w.shape)}")
    return w


def guidance_features(w, dim):
    """The sinusoid of the guidance scales w ((N,)) that a w-embedding's MLP reads (the generator's and the
    discriminator's). c_w = 250 (w - 1): w = 1 sits at the embedding's origin and a step of 0.5 in w moves it as far
    as a 125-step move of ADM's noise index, well resolved by the sinusoid's slower frequencies."""
    return timestep_embedding(250.0 * (w.float() - 1.0), dim)


def _guidance_embedding(model_channels, emb_dim):
    """The w-embedding of a guidance-conditioned generator G(z, y, w): a sinusoid of w through a 2-layer MLP like
    the noise embedding's, added to the noise + class embedding (so w modulates every ResBlock as y does, the
    conditioning path ADM already has). Its last layer is zero-initialised: adding it to a trained network (stage 2
    from the teacher, stage 3 growth) leaves that network's function unchanged until training moves it."""
    mlp = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    zero_module(mlp[-1])
    return mlp


class StridedConvDown(nn.Module):
    """Non-resblock down-sampler (resblock_updown=False): a stride-2 3x3 conv, named `op` as in ADM."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class NearestUpConv(nn.Module):
    """Non-resblock up-sampler (resblock_updown=False): nearest x2 then a 3x3 conv, named `conv` as in ADM."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def imagenet64_config(output_size=64):
    """Constructor kwargs of the released EDM ImageNet-64 teacher, grown with 192-channel levels past 64 px."""
    k = _high_res_levels(64, output_size)
    return dict(
        image_size=64, model_channels=192, num_res_blocks=3, in_channels=3, out_channels=3,
        attention_resolutions=[2, 4, 8], dropout=0.0, channel_mult=[1, 2, 3, 4], num_classes=1000,
        num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, use_checkpoint=False,
        output_size=output_size, channels_high=192, num_res_blocks_high=2, channel_mult_high=[1] * k,
    )
