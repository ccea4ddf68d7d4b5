"""Attention blocks whose cost is linear in the number of pixels.

Channel ("transposed") attention, after the multi-Dconv head transposed attention of Restormer
(Zamir et al., CVPR 2022): every channel is a token and its embedding is the whole spatial map.
The attention matrix is ``(C / heads) x (C / heads)`` per head whatever the image size, so time and
memory grow linearly with ``H * W`` while every output pixel still sees global statistics.
Queries and keys are compared by cosine similarity along the spatial axis, scaled by a learned
per-head temperature.

The same block does self-attention (queries, keys and values from one map) and cross-attention
(queries from the features, keys and values from a context map of the same size).

Layout (measured with ``python -m tools.speed_report``: docs/speed.md): feature maps stay in
channels-last memory format, so layer norm is one fused ``F.layer_norm`` pass over contiguous
channels, depth-wise convolutions take their fast kernels, and attention works on the
``(B, H * W, C)`` pixel view with matrix products and no transposed copies.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks.flatten import from_pixels, to_pixels


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map (each pixel normalised on its own).

    ``F.layer_norm`` on the ``(B, H, W, C)`` view: one fused pass over a channels-last map (the
    ``var_mean`` over dim 1 it replaces took a third of the whole forward on a CPU).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last


def pixel_norms(x: Tensor) -> Tensor:
    """Euclidean norm of each channel of a pixel view ``(B, H * W, C)`` over its pixels -> ``(B, C)``.

    On a CPU a product with a vector of ones: the matrix-product kernel sums over the pixels 2.5-8x
    faster than ``torch.linalg.vector_norm(x, dim=1)``, which reduces across the rows (docs/speed.md);
    elsewhere that one fused kernel.
    """
    if x.device.type != "cpu":
        return torch.linalg.vector_norm(x, dim=1)
    return (x.new_ones(x.shape[0], 1, x.shape[1]) @ x.square()).squeeze(1).sqrt()


def pointwise_depthwise(
    x: Tensor, pointwise: nn.Conv2d, depthwise: nn.Conv2d, parts: int, separate: bool | None = None
) -> list[Tensor]:
    """``depthwise(pointwise(x)).chunk(parts, dim=1)``: a 1x1 convolution, then a depth-wise one, split
    into ``parts`` equal groups of channels (queries / keys / values, or the two halves of a gate).

    With ``separate`` (the default on a CPU) each part is computed by its own pair of convolutions on
    its slice of the weights, so it comes out as a contiguous channels-last map: a chunk of one
    channels-last output is a strided view, on which GELU and products run 1.6-5x slower on
    a CPU (docs/speed.md). The same numbers either way; elsewhere (GPU: bound by kernel launches) one
    convolution each, then views.
    """
    if separate is None:
        separate = x.device.type == "cpu"
    if not separate:
        return list(depthwise(pointwise(x)).chunk(parts, dim=1))
    width = pointwise.out_channels // parts
    out = []
    for i in range(0, pointwise.out_channels, width):
        part = F.conv2d(x, pointwise.weight[i : i + width], pointwise.bias[i : i + width])
        depth_weight, depth_bias = depthwise.weight[i : i + width], depthwise.bias[i : i + width]
        out.append(F.conv2d(part, depth_weight, depth_bias, padding=depthwise.padding, groups=width))
    return out


class ChannelAttention(nn.Module):
    """Transposed multi-head attention; self-attention when ``context`` is None, else cross-attention.

    Projections are a 1x1 convolution (channel mixing) followed by a 3x3 depth-wise convolution
    (local spatial context), so each token also carries neighbourhood information.

    All heads are computed at once on the pixel view: ``q^T k`` is one ``(C x C)`` matrix whose
    entries between different heads are masked out before the softmax, and the output is
    ``v @ attn^T`` on the ``(B, H * W, C)`` values, already channels-last.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        cross: bool = False,
        dropout_ratio: float = 0.0,
        temperature_init: float = 1.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.cross = cross
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), float(temperature_init)))
        if cross:
            self.q = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
            self.kv = nn.Sequential(
                nn.Conv2d(dim, 2 * dim, 1), nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
            )
        else:
            self.qkv = nn.Sequential(
                nn.Conv2d(dim, 3 * dim, 1), nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim)
            )
        self.proj = nn.Conv2d(dim, dim, 1)
        self.drop = nn.Dropout(dropout_ratio)
        head = torch.arange(dim) // (dim // num_heads)
        mask = torch.where(head[:, None] == head[None, :], 0.0, float("-inf"))  # (C, C) block-diagonal
        self.register_buffer("head_mask", mask, persistent=False)
        self.fixed_weights: Tensor | None = None
        """Attention matrix ``(B or 1, C, C)`` used instead of one computed from the input
        (see :func:`fixed_attention`)."""
        self.recorded_weights: list[Tensor] | None = None
        """While not None, each forward appends its attention matrix (see :func:`record_attention`)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)``, ``context (B, C, H, W)`` or None -> ``(B, C, H, W)``."""
        c, h, w = x.shape[-3:]
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context map")
            q = self.q(x)
            k, v = pointwise_depthwise(context, *self.kv, parts=2)
        else:
            q, k, v = pointwise_depthwise(x, *self.qkv, parts=3)
        if self.fixed_weights is not None:
            attn = self.fixed_weights
        else:
            attn = self.weights(q, k)
        if self.recorded_weights is not None:
            self.recorded_weights.append(attn)
        out = from_pixels(to_pixels(v) @ attn.transpose(1, 2), h, w)  # (B, C, H, W), channels-last
        return self.drop(self.proj(out))

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        """Queries and keys ``(B, C, H, W)`` -> attention matrix ``(B, C, C)``, zero across heads."""
        c = q.shape[1]
        q, k = to_pixels(q), to_pixels(k)  # 2 x (B, HW, C)
        if q.dtype in (torch.float16, torch.bfloat16):
            # Each entry of q^T k sums H * W products: at LOL's 600x400 it passes fp16's 65504 and the
            # softmax turns the inf into NaN. Normalised first (norms in fp32), every entry is a cosine.
            norm_q = torch.linalg.vector_norm(q, dim=1, keepdim=True, dtype=torch.float32)  # (B, 1, C)
            norm_k = torch.linalg.vector_norm(k, dim=1, keepdim=True, dtype=torch.float32)
            q, k = q / norm_q.clamp_min(1e-12), k / norm_k.clamp_min(1e-12)
            cosine = q.transpose(1, 2) @ k  # (B, C, C), in [-1, 1]
        else:  # fp32: normalise the small C x C product instead of the two (HW, C) maps (faster)
            norm_q, norm_k = pixel_norms(q), pixel_norms(k)  # (B, C)
            cosine = (q.transpose(1, 2) @ k) / (norm_q[:, :, None] * norm_k[:, None, :]).clamp_min(
                1e-12
            )  # (B, C, C)
        scale = self.temperature.repeat_interleave(c // self.num_heads, dim=0).view(c, 1)
        return torch.softmax(cosine * scale + self.head_mask, dim=-1)


class GatedFeedForward(nn.Module):
    """Pixel-wise MLP with a depth-wise 3x3 convolution and a GELU gate (gated-Dconv FFN idea)."""

    def __init__(self, dim: int, mlp_ratio: float, dropout_ratio: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.inp = nn.Conv2d(dim, 2 * hidden, 1)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.out = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(dropout_ratio)

    def forward(self, x: Tensor) -> Tensor:
        a, b = pointwise_depthwise(x, self.inp, self.dw, parts=2)  # 2 x (B, hidden, H, W)
        gate = F.gelu(a)
        # in place when nothing is recorded for a backward pass: one map fewer to allocate and write
        # (with autograd, an in-place product would save a copy of the gate for its gradient)
        gate = gate * b if torch.is_grad_enabled() else gate.mul_(b)
        return self.drop(self.out(gate))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x)[, norm(context)])`` then ``x + ffn(norm(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        cross: bool = False,
        dropout_ratio: float = 0.0,
        temperature_init: float = 1.0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.norm_attn = LayerNorm2d(dim)
        self.norm_context = LayerNorm2d(dim) if cross else None
        self.attn = ChannelAttention(dim, num_heads, cross, dropout_ratio, temperature_init)
        self.norm_ffn = LayerNorm2d(dim)
        self.ffn = GatedFeedForward(dim, mlp_ratio, dropout_ratio)
        if zero_init:  # both branches start at zero: the block starts as the identity
            for last in (self.attn.proj, self.ffn.out):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.norm_context is not None:
            context = self.norm_context(context)
        # each residual is added into the branch's fresh output: one full-size map fewer per step
        # (on a CPU, allocating and faulting in each new map costs time at large sizes; docs/speed.md)
        x = self.attn(self.norm_attn(x), context).add_(x)
        return self.ffn(self.norm_ffn(x)).add_(x)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[ChannelAttention, list[Tensor]]]:
    """Inside the block, every :class:`ChannelAttention` of ``model`` records the attention matrix of
    each forward: ``{layer: [matrix of the 1st forward, of the 2nd, ...]}``."""
    records = {layer: [] for layer in model.modules() if isinstance(layer, ChannelAttention)}
    for layer, weights in records.items():
        layer.recorded_weights = weights
    try:
        yield records
    finally:
        for layer in records:
            layer.recorded_weights = None


@contextmanager
def fixed_attention(model: nn.Module, weights: dict[ChannelAttention, Tensor]) -> Iterator[None]:
    """Inside the block, the listed layers use the given attention matrices instead of computing
    them from their input.

    Tiled inference uses it to give every tile the statistics of the whole image: channel attention
    is the only global operation of the enhancer, so with fixed matrices a tile's output no longer
    depends on which part of the image the tile covers (see :mod:`utils.tiling`).
    """
    for layer, matrix in weights.items():
        layer.fixed_weights = matrix
    try:
        yield
    finally:
        for layer in weights:
            layer.fixed_weights = None
