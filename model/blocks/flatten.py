"""Layout changes used by the attention blocks, named once.

Channel ("transposed") attention treats every channel of a feature map as one token whose
embedding is the flattened spatial map. The enhancer keeps its feature maps in channels-last
memory format, where a ``(B, C, H, W)`` map is stored as ``(B, H, W, C)``; viewed as a
``(B, H * W, C)`` matrix (one row per pixel) it feeds plain matrix products without a copy.
Both directions are views for channels-last tensors (a contiguous NCHW input is copied once).
"""

from torch import Tensor


def to_pixels(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, H * W, C)``: one row per pixel."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_pixels(x: Tensor, height: int, width: int) -> Tensor:
    """``(B, H * W, C) -> (B, C, H, W)`` in channels-last memory format."""
    b, _, c = x.shape
    return x.reshape(b, height, width, c).permute(0, 3, 1, 2)
