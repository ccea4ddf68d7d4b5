"""A reference model for ``tools.quality``: Retinexformer's single-stage layout (Cai et al., ICCV 2023),
written here from the paper's description (not the authors' code), to measure on this project's
protocol what the external check of part 5 measured on its own (docs/measurements.md).

- An illumination estimator: a 1x1 convolution of the image and its channel mean, a 5x5 grouped
  convolution (its output: the illumination features), and a 1x1 convolution to a light-up map;
  the lit-up image is ``image * map + image``.
- A U-Net on the lit-up image with full-resolution first level: widths 40 / 80 / 160 at full, 1/2 and
  1/4 resolution, 1 / 2 / 2 blocks per level (the same on the way up), 40 channels per head. Each
  block is illumination-guided channel attention (values multiplied by the illumination features,
  brought to each level by strided convolutions; a per-head learned scale; a depth-wise
  convolutional position term on the values) and a depth-wise feed-forward, both pre-normed.
- The output is a residual on the lit-up image.

About 1.6 M parameters. It is not part of IllRecNet and nothing else imports it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks.sampling import crop_to, pad_to_multiple


class IlluminationEstimator(nn.Module):
    """``image (B, 3, H, W)`` -> ``(light-up map (B, 3, H, W), features (B, dim, H, W))``."""

    def __init__(self, dim: int = 40, channels: int = 3) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels + 1, dim, kernel_size=1)
        self.spread = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=4)
        self.to_map = nn.Conv2d(dim, channels, kernel_size=1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        features = self.spread(self.mix(torch.cat((image, image.mean(1, keepdim=True)), dim=1)))
        return self.to_map(features), features


class GuidedAttention(nn.Module):
    """Channel attention whose values are weighted by the illumination features (same shape as ``x``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.scale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)
        self.position = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
        )

    def forward(self, x: Tensor, light: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        v = v * light.flatten(2).transpose(1, 2)
        # per head, (B, heads, C / heads, N): attention between channels, linear in N
        q, k, v_heads = (t.transpose(1, 2).reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (k @ q.transpose(-2, -1) * self.scale).softmax(dim=-1)
        out = (attention @ v_heads).reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
        out = self.proj(out).transpose(1, 2).reshape(b, c, h, w)
        return out + self.position(v.transpose(1, 2).reshape(b, c, h, w))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * ratio
        self.body = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GuidedBlock(nn.Module):
    """``x + attention(norm(x), light)``, then ``x + feed_forward(norm(x))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = GuidedAttention(dim, heads)
        self.feed_forward = FeedForward(dim)

    def forward(self, x: Tensor, light: Tensor) -> Tensor:
        x = x + self.attention(_layer_norm(self.norm1, x), light)
        return x + self.feed_forward(_layer_norm(self.norm2, x))


class Stage(nn.Module):
    def __init__(self, dim: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(GuidedBlock(dim, dim // 40) for _ in range(blocks))

    def forward(self, x: Tensor, light: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, light)
        return x


class RetinexformerReference(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, 3, H, W)``; any ``H, W >= 1`` (replicate-padded to a multiple of 4)."""

    def __init__(self, dim: int = 40, blocks: tuple[int, int, int] = (1, 2, 2), channels: int = 3) -> None:
        super().__init__()
        levels = len(blocks) - 1
        self.stride = 2**levels
        dims = [dim * 2**i for i in range(levels + 1)]
        self.estimator = IlluminationEstimator(dim, channels)
        self.embed = nn.Conv2d(channels, dim, 3, padding=1, bias=False)
        self.down_stages = nn.ModuleList(Stage(dims[i], blocks[i]) for i in range(levels))
        self.down = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 4, 2, 1, bias=False) for i in range(levels))
        self.light_down = nn.ModuleList(
            nn.Conv2d(dims[i], dims[i + 1], 4, 2, 1, bias=False) for i in range(levels)
        )
        self.bottleneck = Stage(dims[-1], blocks[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(dims[i + 1], dims[i], 2, stride=2) for i in range(levels))
        self.merge = nn.ModuleList(nn.Conv2d(2 * dims[i], dims[i], 1, bias=False) for i in range(levels))
        self.up_stages = nn.ModuleList(Stage(dims[i], blocks[i]) for i in range(levels))
        self.out = nn.Conv2d(dim, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        padded, size = pad_to_multiple(x, self.stride)
        light_map, light = self.estimator(padded)
        lit = padded * light_map + padded
        y = self.embed(lit)
        skips, lights = [], []
        for stage, down, light_down in zip(self.down_stages, self.down, self.light_down, strict=True):
            y = stage(y, light)
            skips.append(y)
            lights.append(light)
            y, light = down(y), light_down(light)
        y = self.bottleneck(y, light)
        for i in reversed(range(len(self.up))):
            y = self.merge[i](torch.cat((self.up[i](y), skips[i]), dim=1))
            y = self.up_stages[i](y, lights[i])
        return crop_to(self.out(y) + lit, size)
