"""Tiled inference equals whole-image inference for local functions, blends exactly, and handles
out-of-memory errors by retrying with smaller tiles (never by writing a wrong image)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from utils.tiling import _spans, enhance_image, enhance_tiled, is_out_of_memory

RADIUS = 2  # receptive radius of the 5x5 convolution below


def local_fn() -> torch.nn.Module:
    """A fixed 5x5 convolution, 3 -> 3 channels, zero padding: output depends on inputs within RADIUS."""
    conv = torch.nn.Conv2d(3, 3, kernel_size=2 * RADIUS + 1, padding=RADIUS)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
        conv.bias.copy_(torch.randn(3, generator=generator))
    return conv.requires_grad_(False)


def image(height: int, width: int) -> Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height * 7919 + width))


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(601, 399, 128, 4 * RADIUS), (1, 1, 64, 8), (3, 5, 64, 8), (1024, 1024, 256, 32), (130, 70, 64, 63)],
)
def test_tiled_equals_whole_for_local_fn(height: int, width: int, tile: int, overlap: int) -> None:
    fn, x = local_fn(), image(height, width)
    tiled = enhance_tiled(fn, x, tile, overlap)
    assert tiled.shape == x.shape
    assert torch.allclose(tiled, fn(x), atol=1e-5)


def test_overlap_below_four_radii_is_not_exact() -> None:
    """The documented condition overlap >= 4 * radius is needed: below it tile edges leak in."""
    fn, x = local_fn(), image(300, 300)
    assert (enhance_tiled(fn, x, 128, 4 * RADIUS - 1) - fn(x)).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"), [(601, 399, 128, 8), (257, 300, 64, 33), (50, 90, 16, 1)]
)
def test_blend_weights_sum_to_one(height: int, width: int, tile: int, overlap: int) -> None:
    def constant(t: Tensor) -> Tensor:
        return torch.ones_like(t)

    assert torch.allclose(
        enhance_tiled(constant, image(height, width), tile, overlap),
        torch.ones(1, 3, height, width),
        atol=1e-6,
    )


def test_identity_is_exact_and_every_tile_runs_once() -> None:
    calls: list[tuple[int, ...]] = []

    def identity(t: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return t.clone()

    x = image(601, 399)
    assert torch.allclose(enhance_tiled(identity, x, 256, 32), x, atol=1e-6)
    assert len(calls) == 3 * 2  # ceil((601 - 32) / 224) rows, 2 columns; last ones border-aligned
    assert all(shape == (1, 3, 256, 256) for shape in calls)


def test_failing_tile_raises() -> None:
    calls = 0

    def broken(t: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ValueError("tile 3 exploded")
        return t

    with pytest.raises(ValueError, match="tile 3 exploded"):
        enhance_image(broken, image(300, 300), tile=128, overlap=16, max_pixels=10**6)


def out_of_memory_above(side: int, fn: Callable[[Tensor], Tensor], seen: list) -> Callable[[Tensor], Tensor]:
    """``fn`` that records each input's longer side in ``seen`` and runs out of (CUDA) memory above
    ``side`` pixels, like a network on a too small GPU."""

    def fragile(t: Tensor) -> Tensor:
        seen.append(max(t.shape[-2:]))
        if max(t.shape[-2:]) > side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn(t)

    return fragile


def test_out_of_memory_retries_with_smaller_tiles(caplog: pytest.LogCaptureFixture) -> None:
    conv = local_fn()
    sizes: list[int] = []
    fragile = out_of_memory_above(100, conv, sizes)
    x = image(300, 280)
    with caplog.at_level(logging.WARNING, logger="utils.tiling"):
        out, info = enhance_image(fragile, x, tile=None, overlap=8, max_pixels=10**6, min_tile=64)
    assert info == {"mode": "tiled", "tile": 75, "overlap": 8, "retries": 2}
    assert sizes[:2] == [300, 150]
    assert torch.allclose(out, conv(x), atol=1e-5)
    messages = [r.message for r in caplog.records]
    assert len(messages) == 2 and "whole 300x280" in messages[0] and "150px tiles" in messages[0]
    assert "retrying with 75px tiles" in messages[1]


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "align"),
    [(2160, 1449, 32, 8), (3840, 1449, 32, 8), (1000, 128, 16, 8), (300, 100, 95, 8), (500, 128, 32, 1)],
)
def test_tile_spans_start_on_the_grid_cover_the_axis_and_overlap(size, tile, overlap, align) -> None:
    spans = _spans(size, tile, overlap, align)
    step_align = align if tile - overlap >= align else 1  # documented fallback
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(start % step_align == 0 for start, _ in spans)
    assert all(end - start <= tile + step_align - 1 for start, end in spans)
    assert all(
        prev_end - start >= overlap for (_, prev_end), (start, _) in zip(spans[:-1], spans[1:], strict=True)
    )


def grid_fn(t: Tensor) -> Tensor:
    """Average over the 8x8 blocks of an 8-aligned grid, then back to full size: like any network
    that downsamples by 8, its output depends on where the grid falls."""
    h, w = t.shape[-2:]
    padded = torch.nn.functional.pad(t, (0, -w % 8, 0, -h % 8), mode="replicate")
    blocks = torch.nn.functional.avg_pool2d(padded, 8)
    return torch.nn.functional.interpolate(blocks, scale_factor=8, mode="nearest")[..., :h, :w]


def test_aligned_tiles_reproduce_a_strided_network() -> None:
    """Tile origins on multiples of the network's stride give the whole-image result (the 1449 px
    auto tiles of a 4K image once started at 711, 1417, 2391 unaligned, which shifted the grid)."""
    x = image(700, 1100)
    assert torch.allclose(enhance_tiled(grid_fn, x, 301, 64, align=8), grid_fn(x), atol=1e-6)
    assert not torch.allclose(enhance_tiled(grid_fn, x, 301, 64, align=1), grid_fn(x), atol=1e-3)


def test_shared_context_wraps_every_tiled_attempt_and_only_those() -> None:
    """The whole-image statistics are prepared for each tiled attempt with that attempt's tile area
    (so they never need more memory than a tile), tiles run inside it, and a whole image skips it."""
    conv = local_fn()
    events: list[object] = []

    class Shared:
        def __init__(self, x: Tensor, pixels: int) -> None:
            events.append(("prepare", tuple(x.shape[-2:]), pixels))

        def __enter__(self) -> None:
            events.append("enter")

        def __exit__(self, *exc: object) -> None:
            events.append("exit")

    fragile = out_of_memory_above(100, conv, events)
    x = image(150, 90)
    enhance_image(fragile, x, tile=None, overlap=8, max_pixels=10**6, min_tile=64, shared_context=Shared)
    assert events[:5] == [150, ("prepare", (150, 90), 75 * 75), "enter", 75, 75]
    assert events[-1] == "exit" and events.count("enter") == events.count("exit") == 1
    events.clear()
    enhance_image(fragile, image(90, 90), tile=None, overlap=8, max_pixels=10**6, shared_context=Shared)
    assert events == [90]


def test_cpu_allocation_failure_is_retried_other_errors_are_not() -> None:
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    assert is_out_of_memory(cpu_oom) and is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("size mismatch")) and not is_out_of_memory(MemoryError())

    def big_fails(t: Tensor) -> Tensor:
        if t.shape[-1] > 200:
            raise cpu_oom
        return t

    out, info = enhance_image(big_fails, image(10, 400), tile=400, overlap=8, max_pixels=10**6)
    assert info["tile"] == 200 and info["retries"] == 1 and out.shape == (1, 3, 10, 400)

    def wrong(t: Tensor) -> Tensor:
        raise RuntimeError("size mismatch")

    with pytest.raises(RuntimeError, match="size mismatch"):
        enhance_image(wrong, image(300, 300), tile=None, overlap=8, max_pixels=10**6)


def test_always_out_of_memory_ends_with_clear_error() -> None:
    def hopeless(t: Tensor) -> Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="--tile") as caught:
        enhance_image(hopeless, image(600, 500), tile=None, overlap=16, max_pixels=10**6)
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(RuntimeError, match="--tile"):
        enhance_image(hopeless, image(100, 100), tile=None, overlap=16, max_pixels=10**6)


def test_whole_or_tiled_by_size() -> None:
    fn, x = local_fn(), image(200, 300)
    out, info = enhance_image(fn, x, tile=None, overlap=8, max_pixels=200 * 300)
    assert info["mode"] == "whole" and torch.equal(out, fn(x))
    out, info = enhance_image(fn, x, tile=None, overlap=8, max_pixels=2 * 150 * 150)  # tiles: half of it
    assert info == {"mode": "tiled", "tile": 150, "overlap": 8, "retries": 0}
    assert torch.allclose(out, fn(x), atol=1e-5)
    _, info = enhance_image(fn, x, tile=128, overlap=8, max_pixels=10**9)
    assert info["mode"] == "tiled" and info["tile"] == 128


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="overlap"):
        enhance_tiled(torch.nn.Identity(), image(10, 10), tile=8, overlap=8)
    with pytest.raises(ValueError, match="shape"):
        enhance_tiled(lambda t: t[..., :-1], image(10, 10), tile=8, overlap=2)


@pytest.mark.parametrize("script", ["bench", "infer"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tile": 8}, "--tile must be >= 16"),
        ({"tile_overlap": -1}, "--tile_overlap must be >= 0"),
        ({"max_pixels": 10}, "--max_pixels must be >= 65536"),
        # accepted before, then a ValueError on every image: overlap as large as the tile
        ({"tile": 16}, "--tile_overlap must be smaller than --tile, got 32 with --tile 16"),
        ({"tile_overlap": 128}, "--tile_overlap must be < 128"),
    ],
)
def test_tile_flags_are_checked_for_bench_and_infer(script, flags, message):
    """bench.py and infer.py share one group of tile flags, with the same checks."""
    import importlib

    hparams = importlib.import_module(script).get_hparams()
    assert (hparams.tile, hparams.tile_overlap, hparams.max_pixels) == (None, 32, 2_100_000)
    with pytest.raises(ValueError, match=message):
        type(hparams)(**flags)
    type(hparams)(tile=16, tile_overlap=15)  # the largest overlap a 16 px tile allows


def test_tiling_check_reports_tiled_against_whole_for_a_checkpoint(tmp_path) -> None:
    """tools.tiling_check (the model card's 4K check) runs a checkpoint whole and in the tiles
    bench.py/infer.py use, and refuses a size that would not be tiled."""
    from model.model import LowLightEnhancerLightning
    from tests.conftest import tiny_model
    from tools.tiling_check import TilingCheckHparams
    from tools.tiling_check import main as tiling_check

    torch.manual_seed(0)
    module = LowLightEnhancerLightning(tiny_model())
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, checkpoint)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 80, (90, 120, 3), dtype=np.uint8)).save(photo)
    common = dict(checkpoint_path=str(checkpoint), photo=str(photo), width=330, height=260, threads=1)
    report = tiling_check(TilingCheckHparams(**common, max_pixels=65536, output=str(tmp_path / "t.json")))
    assert report["tiles"]["mode"] == "tiled" and report["psnr_float_db"] > 60
    assert report["psnr_8bit_db"] > 45 and (tmp_path / "t.json").is_file()
    with pytest.raises(ValueError, match="nothing is tiled"):
        tiling_check(TilingCheckHparams(**common, output=str(tmp_path / "u.json")))
