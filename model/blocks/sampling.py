"""Resolution changes: patch embedding, down/up-sampling, and padding to the network's stride.

Every resolution change is a single strided (or transposed) convolution that sees whole patches, so
no information is thrown away by striding:

- :class:`PatchEmbed` is pixel-unshuffle by ``p`` (Shi et al. 2016) followed by a 3x3 convolution,
  written as the equivalent ``3p x 3p`` convolution of stride ``p`` (each output pixel sees the 3x3
  neighbourhood of ``p x p`` patches, the same weights one-to-one); :class:`PatchUnembed` is its
  transpose (3x3 convolution then pixel-shuffle).
- :class:`Downsample` / :class:`Upsample` are 2x2 convolutions of stride 2 and their transposes,
  the same linear maps as pixel-unshuffle + 1x1 convolution and 1x1 convolution + pixel-shuffle.

One operation instead of a re-arranged copy plus a convolution is faster, and its output size is a
plain formula of the input size, which keeps exported graphs (``export.py``) free of shape guards.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def unshuffle_conv_weight(weight: Tensor, patch: int) -> Tensor:
    """Weights ``(out, c * p * p, k, k)`` of a convolution applied after pixel-unshuffle by ``p`` ->
    the equivalent ``(out, c, k * p, k * p)`` kernel of a stride-``p`` convolution on the image."""
    out, cpp, k, _ = weight.shape
    w = weight.reshape(out, cpp // patch**2, patch, patch, k, k)  # (out, c, i, j, ky, kx)
    return w.permute(0, 1, 4, 2, 5, 3).reshape(out, cpp // patch**2, k * patch, k * patch)


@torch.no_grad()
def shuffle_conv_weight(weight: Tensor, patch: int) -> Tensor:
    """Weights ``(c * p * p, dim, k, k)`` of a convolution followed by pixel-shuffle by ``p`` -> the
    equivalent ``(dim, c, k * p, k * p)`` kernel of a stride-``p`` transposed convolution."""
    cpp, dim, k, _ = weight.shape
    w = weight.reshape(cpp // patch**2, patch, patch, dim, k, k).flip(-2, -1)  # (c, i, j, dim, ky, kx)
    return w.permute(3, 0, 4, 1, 5, 2).reshape(dim, cpp // patch**2, k * patch, k * patch)


@torch.no_grad()
def init_as_shuffle_pair_(conv: nn.ConvTranspose2d, kernel: int, patch: int) -> None:
    """Initialise a stride-``patch`` transposed convolution as a default-initialised ``kernel x
    kernel`` convolution followed by pixel-shuffle would be; its bias, which the transposed
    convolution shares across the ``p x p`` positions of a patch, is their mean."""
    dim, out = conv.weight.shape[:2]
    pair = nn.Conv2d(dim, out * patch**2, kernel_size=kernel, padding=kernel // 2)
    conv.weight.copy_(shuffle_conv_weight(pair.weight, patch))
    conv.bias.copy_(pair.bias.view(out, -1).mean(1))


class PatchEmbed(nn.Module):
    """Image ``(B, c, H, W)`` -> features ``(B, dim, H / p, W / p)``: pixel-unshuffle by ``p`` then a
    3x3 convolution, as one ``3p x 3p`` convolution of stride ``p``. Working at half resolution
    keeps every block cheap at 4K. Initialised as that pair would be (PyTorch's default init).

    With ``mean`` and ``std`` (one value per input channel) the input is first standardised,
    ``(x - mean) / std``, with these fixed values (not learned, not saved in the state dict).
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3 * patch, stride=patch, padding=patch)
        pair = nn.Conv2d(in_channels * patch**2, dim, kernel_size=3, padding=1)
        with torch.no_grad():
            self.proj.weight.copy_(unshuffle_conv_weight(pair.weight, patch))
            self.proj.bias.copy_(pair.bias)
        self.standardize = mean is not None
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
                raise ValueError(f"mean and std need {in_channels} values each, std > 0; got {mean}, {std}")
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.standardize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.proj(x)


class PatchUnembed(nn.Module):
    """Features ``(B, dim, h, w)`` -> full-resolution map ``(B, c, h * p, w * p)``: a 3x3 convolution to
    ``c * p * p`` channels then pixel-shuffle, as one ``3p x 3p`` transposed convolution of stride
    ``p`` (the inverse of :class:`PatchEmbed`). Initialised as that pair would be, except that the
    bias is shared by the ``p x p`` positions of a patch (their mean)."""

    def __init__(self, dim: int, out_channels: int, patch: int = 2) -> None:
        super().__init__()
        self.proj = nn.ConvTranspose2d(dim, out_channels, kernel_size=3 * patch, stride=patch, padding=patch)
        init_as_shuffle_pair_(self.proj, kernel=3, patch=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """``(B, C, H, W) -> (B, out, H / 2, W / 2)``: 2x2 convolution of stride 2 (the same map and
    default initialisation as pixel-unshuffle then a 1x1 convolution)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """``(B, C, H, W) -> (B, out, 2H, 2W)``: 2x2 transposed convolution of stride 2, the map of a 1x1
    convolution then pixel-shuffle, and initialised as that pair would be (bias shared per patch)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.ConvTranspose2d(dim, out_dim, kernel_size=2, stride=2)
        init_as_shuffle_pair_(self.body, kernel=1, patch=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` on the bottom/right to a multiple of ``multiple``.

    Replicate padding works for every size, including 1x1 where reflect padding fails. The pad is
    applied even when it is zero (a cheap copy of the input): no branch on the size, so an exported
    graph (``export.py``, symbolic height and width) pads correctly for every size.
    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate"), (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
