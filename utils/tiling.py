"""Tiled inference: enhance an image too large for memory in overlapping tiles and blend them back.

Tiles of `tile` x `tile` pixels overlap their neighbours by at least `overlap` pixels; the last tile of
each row and column is aligned to the image border, so nothing is padded outside the image and images
smaller than a tile are one (smaller) tile. Each tile's output is weighted by a separable window that,
across every side shared with a neighbour, is 0 over the outer `overlap // 4` pixels, rises as a raised
cosine over the next `overlap - 2 * (overlap // 4)` pixels, and is 1 beyond; sides on the image border
keep weight 1. The blend divides by the summed weights, so the weights of each pixel sum to exactly one.

Consequence: for an `fn` whose output at a pixel depends only on inputs within radius r (a stack of
convolutions), the tiled result equals the whole-image result when `r <= overlap // 4`, i.e.
`overlap >= 4 * r`, because every tile contributing to a pixel sees its full receptive field. Networks
with a global receptive field (attention over the whole image, global pooling) only approximate the
whole-image result unless their global statistics are computed once for the whole image and shared
by the tiles: `enhance_image`'s `shared_context` does that (for IllRecNet,
`engine.enhance.Enhance.whole_image_statistics`).

The output is accumulated in place on the input's device: pass a CPU tensor for a huge image and let
`fn` move each tile to the model's device. Any exception raised by `fn` propagates; no tile is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

log = logging.getLogger(f"illrecnet.{__name__}")  # shown by utils.utils.setup_logging

MIN_TILE = 128
"""Smallest tile `enhance_image` tries before giving up on out-of-memory errors."""
_CPU_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory")


def _spans(size: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """Tile extents `[start, end)` along one axis. Starts are multiples of `align`, so a network that
    downsamples by `align` sees the same sampling grid in every tile as on the whole image; neighbours
    overlap by at least `overlap`; the last tile ends at the border, up to `align - 1` pixels longer
    than `tile`. `align` falls back to 1 when `tile - overlap < align`."""
    if size <= tile:
        return [(0, size)]
    if tile - overlap < align:
        align = 1
    step = (tile - overlap) // align * align
    last = (size - tile) // align * align
    return [(start, start + tile) for start in range(0, last, step)] + [(last, size)]


def _ramp(overlap: int) -> Tensor:
    """(overlap,) weights rising from 0 to 1: zero margin of overlap // 4, raised cosine in between."""
    margin = overlap // 4
    rise = overlap - 2 * margin
    phase = (torch.arange(rise, dtype=torch.float32) + 0.5) / rise  # (rise,) in (0, 1)
    cosine = 0.5 - 0.5 * torch.cos(math.pi * phase)
    return torch.cat([torch.zeros(margin), cosine, torch.ones(margin)])


def _window(length: int, start: int, size: int, overlap: int) -> Tensor:
    """(length,) blend weights of a tile covering [start, start + length) of an axis of `size` pixels."""
    weight = torch.ones(length)
    if overlap == 0:
        return weight
    ramp = _ramp(overlap)
    if start > 0:  # a neighbour before
        weight[:overlap] *= ramp
    if start + length < size:  # a neighbour after
        weight[-overlap:] *= ramp.flip(0)
    return weight


def enhance_tiled(
    fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, align: int = 1
) -> Tensor:
    """Apply `fn` to overlapping tiles of `x` and blend the outputs (see the module docstring).

    fn: (B, C, h, w) -> (B, C', h, w). x: (B, C, H, W). tile: tile side in pixels. overlap: pixels
    shared by neighbouring tiles, 0 <= overlap < tile. align: tile origins are multiples of it (pass
    the network's total downsampling factor; see `_spans`). Returns (B, C', H, W) on x's device,
    float32 (or float64 when fn returns float64).
    """
    batch, _, height, width = x.shape
    if tile < 1 or align < 1 or not 0 <= overlap < tile or height * width == 0:
        raise ValueError(
            "need tile >= 1, align >= 1, 0 <= overlap < tile and a non-empty image; "
            f"got {tile=}, {overlap=}, {align=}, {x.shape=}"
        )
    rows, cols = _spans(height, tile, overlap, align), _spans(width, tile, overlap, align)
    out: Tensor | None = None  # (B, C', H, W), allocated once fn reveals C' and dtype
    weight_sum = torch.zeros(1, 1, height, width, device=x.device)  # (1, 1, H, W)
    for top, bottom in rows:
        tile_h = bottom - top
        window_h = _window(tile_h, top, height, overlap).to(x.device)  # (tile_h,)
        for left, right in cols:
            tile_w = right - left
            window_w = _window(tile_w, left, width, overlap).to(x.device)  # (tile_w,)
            y = fn(x[:, :, top:bottom, left:right])  # (B, C', tile_h, tile_w)
            if y.shape[0] != batch or y.shape[-2:] != (tile_h, tile_w):
                raise ValueError(
                    f"fn changed the tile shape: {(batch, tile_h, tile_w)} -> {tuple(y.shape)} (B, h, w)"
                )
            if out is None:
                dtype = torch.promote_types(y.dtype, torch.float32)
                out = torch.zeros(batch, y.shape[1], height, width, dtype=dtype, device=x.device)
            weight = window_h[:, None] * window_w[None, :]  # (tile_h, tile_w)
            region = (slice(None), slice(None), slice(top, top + tile_h), slice(left, left + tile_w))
            out[region].addcmul_(y.to(out.device, out.dtype), weight.to(out.dtype))
            weight_sum[region].add_(weight)
            del y
    assert out is not None  # at least one tile always runs
    return out.div_(weight_sum.to(out.dtype))


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch.OutOfMemoryError (CUDA's is the same class) and allocator failures on other devices."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _CPU_OOM_MARKERS)


def enhance_image(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int | None,
    overlap: int,
    max_pixels: int,
    min_tile: int = MIN_TILE,
    shared_context: Callable[[Tensor, int], AbstractContextManager] | None = None,
    align: int = 1,
) -> tuple[Tensor, dict[str, object]]:
    """Enhance `x` whole when it is small enough, else in tiles, halving the tile on out-of-memory errors.

    x: (B, C, H, W). With `tile=None` an image of at most `max_pixels` pixels goes through `fn` whole;
    a larger one starts with tiles of side isqrt(max_pixels / 2) (at least `min_tile`): besides a
    tile's activations, a tiled image holds its whole input, output and blend weights, and the
    shared context's pass, so tiles of half the whole-image budget keep it within about the memory of
    the largest whole image (IllRecNet at width 44: a 3840x2160 image peaked at 3.21 GB RSS in
    1449 px tiles, 2.38 GB in 1024 px tiles). An out-of-memory error (see
    `is_out_of_memory`) on the whole image restarts tiled with half its longer side (at least
    `min_tile`); one in tiled mode restarts with half the tile (at least `min_tile`), each retry logged;
    out of memory at `min_tile` (or on a whole image no larger than it) raises a RuntimeError suggesting
    `--tile`. Any other exception propagates. Returns the output (B, C', H, W) and
    info = {"mode": "whole" | "tiled", "tile": int | None, "overlap": int, "retries": int}.

    ``shared_context(x, pixels)``, when given, is entered around each tiled attempt with the whole
    image and the tile's pixel count (e.g. ``Enhance.whole_image_statistics``, which gives every tile
    the global statistics of the whole image); an out-of-memory error inside it is retried like one
    in a tile. ``align`` is passed to `enhance_tiled` (tile origins on the network's sampling grid).
    """
    height, width = x.shape[-2:]
    if not 0 <= overlap < min_tile:
        raise ValueError(f"need 0 <= overlap < min_tile; got overlap={overlap}, min_tile={min_tile}")
    retries = 0
    if tile is None and height * width <= max_pixels:
        try:
            return fn(x), {"mode": "whole", "tile": None, "overlap": overlap, "retries": 0}
        except Exception as err:  # only out-of-memory errors are retried
            if not is_out_of_memory(err):
                raise
            if max(height, width) <= min_tile:
                raise _out_of_memory_error(height, width, None, min_tile) from err
            tile, retries = max(max(height, width) // 2, min_tile), 1
            log.warning(
                "out of memory on the whole %dx%d image; retrying with %dpx tiles", height, width, tile
            )
        _release_cached_memory()  # outside `except`, so the failed attempt's tensors are already freed
    if tile is None:
        tile = max(math.isqrt(max_pixels // 2), min_tile)
    while True:
        try:
            with shared_context(x, tile * tile) if shared_context else nullcontext():
                out = enhance_tiled(fn, x, tile, overlap, align)
            return out, {"mode": "tiled", "tile": tile, "overlap": overlap, "retries": retries}
        except Exception as err:  # only out-of-memory errors are retried
            if not is_out_of_memory(err):
                raise
            if tile <= min_tile:
                raise _out_of_memory_error(height, width, tile, min_tile) from err
            smaller = max(tile // 2, min_tile)
            log.warning("out of memory with %dpx tiles; retrying with %dpx tiles", tile, smaller)
        tile, retries = smaller, retries + 1
        _release_cached_memory()


def _out_of_memory_error(height: int, width: int, tile: int | None, min_tile: int) -> RuntimeError:
    tried = "whole" if tile is None else f"with {tile}px tiles"
    suggestion = max((tile or max(height, width)) // 2, 1)
    return RuntimeError(
        f"out of memory enhancing a {height}x{width} image {tried} (retries stop at {min_tile}px tiles); "
        f"pass a smaller --tile (e.g. --tile {suggestion}, with a smaller --tile_overlap), or use a device "
        "with more free memory"
    )


def _release_cached_memory() -> None:
    """Return cached CUDA blocks to the driver before a retry."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
