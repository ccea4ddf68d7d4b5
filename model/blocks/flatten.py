"""Layout changes used by the attention blocks, named once.

Channel ("transposed") attention treats every channel of a feature map as one token whose
embedding is the flattened spatial map, so the only layout change needed is
``(B, C, H, W) <-> (B, heads, C / heads, H * W)``. Both directions are views, no copies.
"""

from torch import Tensor


def to_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, C, H, W) -> (B, heads, C // heads, H * W)``."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w)


def from_heads(x: Tensor, height: int, width: int) -> Tensor:
    """``(B, heads, C // heads, H * W) -> (B, C, H, W)``."""
    b, heads, d, _ = x.shape
    return x.reshape(b, heads * d, height, width)
