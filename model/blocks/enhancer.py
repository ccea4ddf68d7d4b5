"""IllRecNet's enhancer: ``Separation -> Encoder -> Decoder``.

1. :class:`Separation` splits the low-light image into illumination and reflectance maps.
2. :class:`Encoder` embeds each map, runs self-attention on each and cross-attention between them
   (reflectance asks illumination and the reverse), and fuses the two into one context map.
3. :class:`Decoder` is a U-Net over the original image (its patch embedding also sees the image's
   square root unless ``sqrt_input`` is off: a brightened copy in which dark values are spread
   out). At every resolution of its expanding path (and at the bottleneck) it cross-attends to
   the context map brought to that resolution; skip connections join the contracting and
   expanding paths. A sub-pixel layer brings the last features to full resolution and a 3x3
   convolution there predicts a residual that is added to the input image (its bias starts at
   ``OUTPUT_BIAS_INIT``, a brightening offset). What each of these choices gains is in
   docs/model.md and docs/measurements.md.

With ``standardize_inputs`` every patch embedding (the decoder's and the encoder's two) first
standardises its input with the fixed constants of ``INPUT_STATS``.

With ``context_patch`` 4 the encoder embeds the maps at a quarter of the resolution (its four blocks
cost a quarter as much) and a learned 2x2 transposed convolution brings the context map to the
decoder's first level.

With ``full_res_dim`` > 0 the decoder also works at full resolution, where the noise of a dark photo
lives: a 3x3 convolution embeds the image (and its square root) into ``full_res_dim`` channels at
full resolution, a 1x1 convolution fuses them with the head's features, and one transformer block
(channel self-attention, linear in pixels) or, with ``full_res_block`` ``conv``, a residual pair of
3x3 convolutions refines them before the output convolution. With ``full_res_stem`` those
full-resolution features (after a GELU and ``full_res_stem_blocks`` residual pairs) are also what the
U-Net's first level is embedded from (a 2x2 convolution of stride 2), and what the last stage fuses
with the head's: a full-resolution level on both sides of the U-Net.

With ``output_gain`` the output convolution's residual is joined by a gain map from a second 3x3
convolution on the same features: the output is ``image * (1 + gain) + residual`` (the gain starts
at ``output_gain_init`` everywhere).

All attention is channel attention (:mod:`model.blocks.attention`), so cost is linear in the
number of pixels. Features live at half resolution (a patch embedding equal to pixel-unshuffle + conv) and the
U-Net halves the resolution ``num_resolution - 1`` more times, so inputs are padded (replicate) to
a multiple of ``2 ** num_resolution`` inside :meth:`Enhancer.forward` and cropped back.
Feature maps are channels-last inside (the input is converted once, the output returned as an
ordinary contiguous tensor); see :mod:`model.blocks.attention` for why.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks.attention import TransformerBlock
from model.blocks.exposure import ExposureCurve
from model.blocks.sampling import Downsample, PatchEmbed, PatchUnembed, Upsample, crop_to, pad_to_multiple
from model.blocks.separation import Separation
from utils.hparams import ModelHparams

HEAD_CHANNELS = 16
"""Channels the head brings to full resolution for the output convolution (see :class:`Decoder`;
what it gains over a sub-pixel output layer: docs/model.md, docs/measurements.md)."""

INPUT_STATS = {
    "image": (0.101, 0.091),
    "sqrt": (0.273, 0.162),
    "illumination": (0.083, 0.088),
    "reflectance": (0.531, 0.254),
}
"""Mean and standard deviation of each patch embedding's input (the dark image, its square root, the
illumination map, the squashed reflectance ``r / (1 + r)``) over 200 synthetic low-light crops of
``tools.quality`` (128 px, seed 0). With ``standardize_inputs`` every embedding sees
``(x - mean) / std``: fixed constants, like ImageNet's normalisation, so the first convolutions start
on inputs of unit scale instead of values around 0.1 that their bias drowns."""

OUTPUT_BIAS_INIT = 0.25
"""Initial bias of the last convolution: the network starts by brightening every pixel by 0.25
(a low-light pair's mean residual is positive) instead of learning that offset from a zero-mean
start; docs/measurements.md ("Quality experiments") has the residuals and the gain over ten seeds."""


def input_stats(inputs: list[str], channels: int, standardize: bool) -> dict:
    """``mean`` and ``std`` arguments of a :class:`PatchEmbed` whose input concatenates ``inputs``
    (keys of :data:`INPUT_STATS`, ``channels`` each); empty (no standardisation) unless ``standardize``."""
    if not standardize:
        return {}
    return {
        "mean": [INPUT_STATS[name][0] for name in inputs for _ in range(channels)],
        "std": [INPUT_STATS[name][1] for name in inputs for _ in range(channels)],
    }


def block_options(hp: ModelHparams) -> dict:
    """The keyword arguments every :class:`TransformerBlock` of the enhancer shares (all but its
    width, heads and ``cross``)."""
    return dict(
        mlp_ratio=hp.mlp_ratio,
        dropout_ratio=hp.dropout_ratio,
        temperature_init=hp.temperature_init,
        zero_init=hp.zero_init_residuals,
    )


def channels_last(x: Tensor) -> Tensor:
    """The layout every block below works in (a copy only when ``x`` is not channels-last yet)."""
    return x.contiguous(memory_format=torch.channels_last)


class Encoder(nn.Module):
    """Illumination and reflectance maps ``(B, c, H, W)`` -> context map ``(B, D, H / p, W / p)``
    (``p``: ``context_patch``)."""

    def __init__(self, hp: ModelHparams) -> None:
        super().__init__()
        c, dim = hp.channels, hp.embed_dim
        block = dict(dim=dim, num_heads=hp.num_heads, **block_options(hp))
        stats, patch = hp.standardize_inputs, hp.context_patch
        self.embed_illum = PatchEmbed(c, dim, patch, **input_stats(["illumination"], c, stats))
        self.embed_refl = PatchEmbed(c, dim, patch, **input_stats(["reflectance"], c, stats))
        self.self_illum = TransformerBlock(**block)
        self.self_refl = TransformerBlock(**block)
        self.refl_to_illum = TransformerBlock(**block, cross=True)
        self.illum_to_refl = TransformerBlock(**block, cross=True)
        self.fuse = nn.Conv2d(2 * dim, dim, kernel_size=1)

    def forward(self, illumination: Tensor, reflectance: Tensor) -> Tensor:
        # Reflectance is unbounded above; r / (1 + r) maps it to [0, 1) like the illumination.
        illum = self.self_illum(self.embed_illum(illumination))  # (B, D, H/p, W/p)
        refl = self.self_refl(self.embed_refl(reflectance / (1 + reflectance)))
        refl_ctx = self.refl_to_illum(refl, illum)  # reflectance queries illumination
        illum_ctx = self.illum_to_refl(illum, refl)  # illumination queries reflectance
        return self.fuse(torch.cat((refl_ctx, illum_ctx), dim=1))


class ResidualConv(nn.Module):
    """``x + conv3x3(gelu(conv3x3(x)))`` at constant width: local refinement at full resolution."""

    def __init__(self, dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        if zero_init:  # starts as the identity
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.gelu(self.conv1(x))).add_(x)  # the residual added into the fresh output


class Decoder(nn.Module):
    """U-Net over the image that cross-attends to the context at every resolution.

    Widths double at each of the ``num_resolution`` levels: ``D, 2D, 4D, ...``; heads double too.
    With ``sqrt_input`` the patch embedding takes ``[image, sqrt(image)]`` (``2c`` channels).
    """

    def __init__(self, hp: ModelHparams) -> None:
        super().__init__()
        c, num_resolution, full_res_dim = hp.channels, hp.num_resolution, hp.full_res_dim
        dims = [hp.embed_dim * 2**i for i in range(num_resolution)]
        heads = [hp.num_heads * 2**i for i in range(num_resolution)]
        kw = block_options(hp)
        self.sqrt_input = hp.sqrt_input
        inputs = ["image", "sqrt"] if hp.sqrt_input else ["image"]
        self.stem = None
        if hp.full_res_stem:  # the first level from full-resolution features (full_res_dim > 0)
            blocks = (
                ResidualConv(full_res_dim, zero_init=hp.zero_init_residuals)
                for _ in range(hp.full_res_stem_blocks)
            )
            self.stem = nn.Sequential(nn.GELU(), *blocks)
            self.embed = Downsample(full_res_dim, dims[0])
        else:
            self.embed = PatchEmbed(len(inputs) * c, dims[0], **input_stats(inputs, c, hp.standardize_inputs))
        # a context at 1/4 resolution is brought to the first level's 1/2 (context_patch 4)
        self.context_up = Upsample(dims[0], dims[0]) if hp.context_patch == 4 else None
        self.context_down = nn.ModuleList(Downsample(dims[i], dims[i + 1]) for i in range(num_resolution - 1))
        self.down_blocks = nn.ModuleList(
            TransformerBlock(dims[i], heads[i], **kw) for i in range(num_resolution - 1)
        )
        self.down = nn.ModuleList(Downsample(dims[i], dims[i + 1]) for i in range(num_resolution - 1))
        self.bottleneck = TransformerBlock(dims[-1], heads[-1], **kw)
        self.bottleneck_cross = TransformerBlock(dims[-1], heads[-1], cross=True, **kw)
        self.up = nn.ModuleList(Upsample(dims[i + 1], dims[i]) for i in range(num_resolution - 1))
        self.merge = nn.ModuleList(nn.Conv2d(2 * dims[i], dims[i], 1) for i in range(num_resolution - 1))
        self.up_blocks = nn.ModuleList(
            TransformerBlock(dims[i], heads[i], cross=True, **kw) for i in range(num_resolution - 1)
        )
        # Back to full resolution, then one 3x3 convolution there: a sub-pixel layer alone predicts
        # each 2x2 block of output pixels from one feature vector, which leaves blocking artefacts.
        self.head = PatchUnembed(dims[0], HEAD_CHANNELS)  # (B, HEAD_CHANNELS, H, W)
        self.full_res_dim = full_res_dim
        if full_res_dim:
            self.full_embed = nn.Conv2d(len(inputs) * c, full_res_dim, kernel_size=3, padding=1)
            self.full_fuse = nn.Conv2d(HEAD_CHANNELS + full_res_dim, full_res_dim, kernel_size=1)
            if hp.full_res_block == "conv":
                self.full_block = ResidualConv(full_res_dim, zero_init=hp.zero_init_residuals)
            else:
                self.full_block = TransformerBlock(full_res_dim, 1, **kw)
        self.out = nn.Conv2d(full_res_dim or HEAD_CHANNELS, c, kernel_size=3, padding=1)
        # with an output gain, the residual's offset less what the starting gain adds to a dark input
        # (output_gain_init is 0 without output_gain)
        nn.init.constant_(self.out.bias, OUTPUT_BIAS_INIT - hp.output_gain_init * INPUT_STATS["image"][0])
        self.gain = None
        if hp.output_gain:  # a constant gain to start from
            self.gain = nn.Conv2d(full_res_dim or HEAD_CHANNELS, c, kernel_size=3, padding=1)
            nn.init.zeros_(self.gain.weight)
            nn.init.constant_(self.gain.bias, hp.output_gain_init)

    def forward(self, image: Tensor, context: Tensor, source: Tensor | None = None) -> Tensor:
        """``image (B, c, H, W)``, ``context (B, D, H/p, W/p)`` -> enhanced ``(B, c, H, W)``: a
        residual on ``image``, predicted from ``source`` (same shape; default: ``image``)."""
        contexts = [context if self.context_up is None else self.context_up(context)]  # (B, D, H/2, W/2)
        for down in self.context_down:
            contexts.append(down(contexts[-1]))  # (B, D * 2^i, H / 2^(i+1), W / 2^(i+1))
        source = image if source is None else source
        # with sqrt_input, a brightened copy (gamma 1/2) beside the image: dark values spread out
        inputs = torch.cat((source, source.clamp_min(0).sqrt()), dim=1) if self.sqrt_input else source
        # with full_res_stem, the full-resolution features feed the first level and the last stage
        full = None if self.stem is None else self.stem(self.full_embed(inputs))  # (B, full_res_dim, H, W)
        x = self.embed(inputs if full is None else full)  # (B, D, H/2, W/2)
        skips = []
        for block, down in zip(self.down_blocks, self.down, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck_cross(self.bottleneck(x), contexts[-1])
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat((self.up[i](x), skips[i]), dim=1))
            x = self.up_blocks[i](x, contexts[i])
        y = F.gelu(self.head(x))  # (B, HEAD_CHANNELS, H, W)
        if self.full_res_dim:
            full = self.full_embed(inputs) if full is None else full
            y = self.full_fuse(torch.cat((y, full), dim=1))  # (B, full_res_dim, H, W)
            y = self.full_block(y)
        if self.gain is not None:
            return torch.addcmul(image + self.out(y), image, self.gain(y))  # image * (1 + gain) + residual
        return image + self.out(y)


class Enhancer(nn.Module):
    """``Separation -> Encoder -> Decoder``; maps ``(B, c, H, W)`` in [0, 1] to the same shape.

    Any ``H, W >= 1``: the input is padded (replicate) to the network's stride and cropped back.
    ``hp`` (:class:`~utils.hparams.ModelHparams`, checked there) is the architecture; the separation's
    sigma is learned with ``trainable_separation`` (the second training session).
    """

    def __init__(self, hp: ModelHparams, trainable_separation: bool = False) -> None:
        super().__init__()
        self.stride = max(2**hp.num_resolution, hp.context_patch)
        self.separation = Separation(hp.channels, hp.kernel_size, hp.sigma, trainable=trainable_separation)
        self.encoder = Encoder(hp)
        self.decoder = Decoder(hp)
        self.exposure = ExposureCurve(hp.exposure_level, hp.exposure_exponent) if hp.exposure_level else None

    def forward(self, x: Tensor, return_maps: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``x (B, c, H, W)`` -> enhanced ``(B, c, H, W)``; with ``return_maps`` also the
        illumination and reflectance maps (same shape) for inspection."""
        padded, size = pad_to_multiple(x, self.stride)
        # what the network sees: the image, or the image brought to one brightness by the curve
        source = padded if self.exposure is None else pad_to_multiple(self.exposure(x), self.stride)[0]
        illumination, reflectance = self.separation(source)  # fp32, NCHW whatever the input layout
        context = self.encoder(channels_last(illumination), channels_last(reflectance))
        out = self.decoder(
            channels_last(padded), context, None if self.exposure is None else channels_last(source)
        )
        out = crop_to(out, size).contiguous()
        if return_maps:
            return out, crop_to(illumination, size), crop_to(reflectance, size)
        return out
