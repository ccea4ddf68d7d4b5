"""Resolution changes: patch embedding, down/up-sampling, and padding to the network's stride.

Down- and up-sampling are lossless re-arrangements (pixel-unshuffle / pixel-shuffle, Shi et al.
2016) followed by a 1x1 mixing convolution, so no information is thrown away by striding.
"""

import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Image ``(B, c, H, W)`` -> features ``(B, dim, H / p, W / p)``: pixel-unshuffle by ``p``
    then a 3x3 convolution. Working at half resolution keeps every block cheap at 4K."""

    def __init__(self, in_channels: int, dim: int, patch: int = 2) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(patch)
        self.proj = nn.Conv2d(in_channels * patch * patch, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.unshuffle(x))


class PatchUnembed(nn.Module):
    """Features ``(B, dim, h, w)`` -> image residual ``(B, c, h * p, w * p)``: 3x3 convolution to
    ``c * p * p`` channels then pixel-shuffle (the inverse of :class:`PatchEmbed`)."""

    def __init__(self, dim: int, out_channels: int, patch: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, out_channels * patch * patch, kernel_size=3, padding=1)
        self.shuffle = nn.PixelShuffle(patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.proj(x))


class Downsample(nn.Module):
    """``(B, C, H, W) -> (B, out, H / 2, W / 2)``: pixel-unshuffle then a 1x1 convolution."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, out_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """``(B, C, H, W) -> (B, out, 2H, 2W)``: a 1x1 convolution then pixel-shuffle."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, out_dim * 4, kernel_size=1), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` on the bottom/right to a multiple of ``multiple``.

    Replicate padding works for every size, including 1x1 where reflect padding fails.
    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
