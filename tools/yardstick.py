"""The yardstick: a plain 4-level convolutional U-Net that IllRecNet's speed and quality are compared to.

Widths 32/64/128/256, two 3x3 convolutions + ReLU per level, max-pool down, 2x2 transposed
convolution up, concatenated skips and a global residual (``output = input + conv1x1(features)``),
about 1.93 M parameters. Nothing clever: dense 3x3 convolutions are what CPUs and GPUs run best,
so it is the reference for "how fast could a network of this size be".
"""

import torch
from torch import Tensor, nn

from model.blocks.sampling import crop_to, pad_to_multiple


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class YardstickUNet(nn.Module):
    """``(B, c, H, W)`` -> ``(B, c, H, W)``; any ``H, W >= 1`` (replicate-padded to a multiple of 8)."""

    def __init__(self, channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.stride = 2 ** (len(widths) - 1)
        ins = (channels, *widths[:-1])
        self.down = nn.ModuleList(_double_conv(i, o) for i, o in zip(ins, widths, strict=True))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1)
        )
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        padded, size = pad_to_multiple(x, self.stride)
        y = padded
        skips = []
        for i, block in enumerate(self.down):
            y = block(y if i == 0 else self.pool(y))  # (B, widths[i], H / 2^i, W / 2^i)
            skips.append(y)
        y = skips.pop()
        for i in reversed(range(len(self.up))):
            y = self.merge[i](torch.cat((self.up[i](y), skips[i]), dim=1))
        return crop_to(padded + self.head(y), size)
