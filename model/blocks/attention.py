"""Attention blocks whose cost is linear in the number of pixels.

Channel ("transposed") attention, after the multi-Dconv head transposed attention of Restormer
(Zamir et al., CVPR 2022): every channel is a token and its embedding is the whole spatial map.
The attention matrix is ``(C / heads) x (C / heads)`` per head whatever the image size, so time and
memory grow linearly with ``H * W`` while every output pixel still sees global statistics.
Queries and keys are L2-normalised along the spatial axis (cosine similarity between channel
maps) and scaled by a learned per-head temperature.

The same block does self-attention (queries, keys and values from one map) and cross-attention
(queries from the features, keys and values from a context map of the same size).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks.flatten import from_heads, to_heads


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map (each pixel normalised on its own)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)  # (B, 1, H, W)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ChannelAttention(nn.Module):
    """Transposed multi-head attention; self-attention when ``context`` is None, else cross-attention.

    Projections are a 1x1 convolution (channel mixing) followed by a 3x3 depth-wise convolution
    (local spatial context), so each token also carries neighbourhood information.
    """

    def __init__(self, dim: int, num_heads: int, cross: bool = False, dropout_ratio: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.cross = cross
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
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

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)``, ``context (B, C, H, W)`` or None -> ``(B, C, H, W)``."""
        h, w = x.shape[-2:]
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context map")
            q = self.q(x)
            k, v = self.kv(context).chunk(2, dim=1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=1)
        q = F.normalize(to_heads(q, self.num_heads), dim=-1)  # (B, heads, d, HW)
        k = F.normalize(to_heads(k, self.num_heads), dim=-1)
        v = to_heads(v, self.num_heads)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)  # (B, heads, d, d)
        out = from_heads(attn @ v, h, w)  # (B, C, H, W)
        return self.drop(self.proj(out))


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
        a, b = self.dw(self.inp(x)).chunk(2, dim=1)  # 2 x (B, hidden, H, W)
        return self.drop(self.out(F.gelu(a) * b))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x)[, norm(context)])`` then ``x + ffn(norm(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, cross: bool = False, dropout_ratio: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_attn = LayerNorm2d(dim)
        self.norm_context = LayerNorm2d(dim) if cross else None
        self.attn = ChannelAttention(dim, num_heads, cross=cross, dropout_ratio=dropout_ratio)
        self.norm_ffn = LayerNorm2d(dim)
        self.ffn = GatedFeedForward(dim, mlp_ratio, dropout_ratio)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.norm_context is not None:
            context = self.norm_context(context)
        x = x + self.attn(self.norm_attn(x), context)
        return x + self.ffn(self.norm_ffn(x))
