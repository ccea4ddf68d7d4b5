"""Exposure curve: a global tone curve that brightens a dark image to a set mean level first.

``f_k(x) = (1 - exp(-k x)) / (1 - exp(-k))`` maps [0, 1] onto [0, 1]: linear with slope about ``k``
in the dark, compressive towards white (a lamp in a dark photo ends at 1, not at ``k`` times its
value), the identity as ``k -> 0``. Per image, ``k = max((level / mean(x)) ** exponent - 1, 0)``
with ``mean`` over all pixels and channels: an image whose mean is ``m`` gets a gain of about
``(level / m) ** exponent`` in its shadows, and an image already brighter than ``level`` is left as
it is. With ``exponent`` 1 every dark image comes out at about the same brightness, and the network
can no longer tell how dark it was, which is half of what predicts the brightness of the reference
(the exposure is unknown, but a darker input still means a darker scene more often than not);
below 1 the spread of brightness is narrowed, not removed. ``level`` is learned (from
``init_level``); ``exponent`` is fixed.

Every part of the enhancer (separation, encoder, decoder) sees ``f_k(x)`` instead of ``x``: whatever
the exposure of a photo (a factor of four within LOL-v1 alone, and more between datasets), the
network's input has about the same brightness. The residual it predicts is still added to the dark
image ``x``: added to ``f_k(x)`` it had to cancel that image's noise, amplified by the gain, pixel by
pixel (docs/measurements.md).

The mean is the module's only global statistic. Tiled inference gives every tile the whole image's
mean through :func:`fixed_exposure` (as :func:`model.blocks.attention.fixed_attention` does for
attention).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

MIN_MEAN = 1e-4
"""Means below this (a black frame) are taken as this: the gain stays finite."""
MIN_K = 1e-4
"""Curvatures below this are taken as this (``f_k`` is then the identity to within 3e-5)."""


class ExposureCurve(nn.Module):
    """``x (B, C, H, W)`` in [0, 1] -> ``f_k(x)`` of the same shape, ``k`` per image."""

    def __init__(self, init_level: float, exponent: float = 1.0) -> None:
        super().__init__()
        if not 0 < init_level < 1:
            raise ValueError(f"exposure level must be in (0, 1), got {init_level}")
        if not 0 < exponent <= 1:
            raise ValueError(f"exposure exponent must be in (0, 1], got {exponent}")
        self.log_level = nn.Parameter(torch.tensor(math.log(init_level)))
        self.exponent = float(exponent)
        self.fixed_mean: Tensor | None = None
        """Mean ``(B or 1, 1, 1, 1)`` used instead of the input's own (tiled inference)."""

    def curvature(self, mean: Tensor) -> Tensor:
        """``k`` for images of mean level ``mean`` (any shape)."""
        log_ratio = self.log_level - mean.clamp_min(MIN_MEAN).log()
        return torch.expm1(self.exponent * log_ratio).clamp_min(MIN_K)

    def forward(self, x: Tensor) -> Tensor:
        mean = self.fixed_mean if self.fixed_mean is not None else x.mean(dim=(1, 2, 3), keepdim=True)
        k = self.curvature(mean.to(x.dtype))  # (B, 1, 1, 1)
        return torch.expm1(-k * x.clamp_min(0)) / torch.expm1(-k)


@contextmanager
def fixed_exposure(model: nn.Module, mean: Tensor) -> Iterator[None]:
    """Inside the block, every :class:`ExposureCurve` of ``model`` takes ``mean`` (``(B or 1, 1, 1,
    1)``: the whole image's) as its input's mean level, so tiles of one image share one curve."""
    curves = [m for m in model.modules() if isinstance(m, ExposureCurve)]
    for curve in curves:
        curve.fixed_mean = mean
    try:
        yield
    finally:
        for curve in curves:
            curve.fixed_mean = None
