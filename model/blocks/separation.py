"""Illumination / reflectance separation: a differentiable approximation of homomorphic filtering.

Retinex model: ``I = L * R``. In the log domain the product becomes a sum,
``log I = log L + log R``; the illumination ``L`` varies slowly, so a per-channel Gaussian low-pass
of ``log I`` estimates ``log L`` and the remainder is ``log R``. Back in the linear domain
``L * R = I + eps`` exactly, whatever the kernel (tested).

Frozen: the Gaussian's standard deviation is a fixed buffer-like parameter (``requires_grad=False``).
Trainable: the per-channel ``log(sigma)`` is learned; the kernel is rebuilt from it at every
forward pass so it always stays a normalised Gaussian (positive, sums to one, symmetric).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Separation(nn.Module):
    """Split an image ``(B, C, H, W)`` in [0, 1] into illumination and reflectance maps.

    Args:
        channels: colour channels of the image; each gets its own Gaussian.
        kernel_size: odd size of the (separable) Gaussian kernel.
        sigma: initial standard deviation of the Gaussian, in pixels.
        trainable: learn ``sigma`` (per channel) instead of keeping it fixed.
        eps: added before the logarithm so black pixels stay finite.
    """

    def __init__(
        self, channels: int, kernel_size: int, sigma: float, trainable: bool = False, eps: float = 1e-4
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.eps = eps
        self.log_sigma = nn.Parameter(torch.full((channels,), math.log(sigma)), requires_grad=trainable)

    def kernel(self) -> Tensor:
        """Per-channel normalised 1-D Gaussians ``(C, K)``."""
        radius = self.kernel_size // 2
        pos = torch.arange(-radius, radius + 1, device=self.log_sigma.device, dtype=self.log_sigma.dtype)
        sigma = self.log_sigma.exp().unsqueeze(1)  # (C, 1)
        weights = torch.exp(-0.5 * (pos / sigma) ** 2)  # (C, K)
        return weights / weights.sum(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, C, H, W)`` -> ``(illumination, reflectance)``, both ``(B, C, H, W)`` and positive."""
        # fp32 and plain (NCHW) layout whatever the caller uses: logarithms need the precision, and
        # a 3-channel depth-wise convolution has no fast channels-last or bf16 kernel on CPUs
        # (under bf16 autocast it took minutes for a 32x32 image).
        with torch.autocast(x.device.type, enabled=False):
            log_i = torch.log(x.float().contiguous().clamp_min(0) + self.eps)  # (B, C, H, W)
            k = self.kernel().float()
            r = self.kernel_size // 2
            c = self.channels
            # Separable blur: rows then columns, replicate padding so any size (1x1 too) works. One
            # pad of the input on all sides gives what padding before each pass would (a row blur
            # of replicated edge rows is the replicated blurred edge row), and nothing that needs a
            # gradient is padded: inductor miscompiled the backward of that pad (--compile with a
            # trainable separation, torch 2.14).
            padded = F.pad(log_i, (r, r, r, r), mode="replicate")  # (B, C, H + 2r, W + 2r)
            log_l = F.conv2d(padded, k.view(c, 1, 1, -1), groups=c)  # (B, C, H + 2r, W)
            log_l = F.conv2d(log_l, k.view(c, 1, -1, 1), groups=c)  # (B, C, H, W)
            log_r = log_i - log_l
        return log_l.exp().to(x.dtype), log_r.exp().to(x.dtype)
