"""Tiled against whole-image output of a checkpoint on one large photo (4K by default)::

    python -m tools.tiling_check --checkpoint_path checkpoints/starter.ckpt

The photo is resized (bicubic) to ``--width`` x ``--height`` and enhanced twice on the CPU: whole (one
pass of the model) and the way bench.py and infer.py enhance an image of that size (``TileHparams``:
automatic tiles above ``max_pixels``, the attention of the whole image shared by the tiles). Prints
and writes (JSON, atomically) the PSNR of the tiled output against the whole one, in float and after
8-bit quantisation (what infer.py writes), the tile grid and both times.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tools import publish
from utils.hparams import TileHparams
from utils.utils import parse_hparams


@dataclass
class TilingCheckHparams:
    """Tiled against whole-image output of one checkpoint on one large photo."""

    checkpoint_path: str = "checkpoints/starter.ckpt"
    """The checkpoint to run."""
    photo: str = "../shared/datasets/DICM/low/01.jpg"
    """The photo, resized to width x height."""
    width: int = 3840
    """Width after resizing."""
    height: int = 2160
    """Height after resizing."""
    max_pixels: int = TileHparams.max_pixels
    """Above this many pixels the tiled run tiles (bench.py and infer.py's ``--max_pixels``)."""
    threads: int = 2
    """torch intra-op threads."""
    output: str = "runs/tiling_check/tiling_check.json"
    """JSON results (written atomically)."""

    def __post_init__(self) -> None:
        if min(self.width, self.height) < 16 or self.threads < 1:
            raise ValueError("width and height must be >= 16 and threads >= 1")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR (dB) of ``x`` against ``y`` in [0, 1]; inf when they are equal."""
    mse = float(torch.mean((x.double() - y.double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def report_size(hp: TilingCheckHparams) -> str:
    return f"{hp.width}x{hp.height}"


def main(hp: TilingCheckHparams) -> dict:
    from data.utils import load_image
    from engine.enhance import Enhance, enhance_one, to_uint8
    from model.model import load_checkpoint

    if hp.width * hp.height <= hp.max_pixels:
        raise ValueError(f"{report_size(hp)} <= --max_pixels {hp.max_pixels}: nothing is tiled")
    torch.set_num_threads(hp.threads)
    photo = load_image(hp.photo)[None]  # the loaders' decode: EXIF orientation, 16-bit files
    x = torch.nn.functional.interpolate(photo, size=(hp.height, hp.width), mode="bicubic", antialias=True)
    x = x.clamp(0, 1)
    enhance = Enhance(load_checkpoint(hp.checkpoint_path), torch.device("cpu"))
    start = time.perf_counter()
    whole = enhance(x).clamp(0, 1)
    whole_s = time.perf_counter() - start
    start = time.perf_counter()
    tiled, info = enhance_one(enhance, x, TileHparams(max_pixels=hp.max_pixels))
    tiled_s = time.perf_counter() - start
    tiled = tiled.clamp(0, 1)
    if info["mode"] != "tiled":
        raise ValueError(
            f"{report_size(hp)} has at most --max_pixels {hp.max_pixels} pixels: nothing was tiled"
        )
    to8 = lambda t: torch.from_numpy(to_uint8(t)).float() / 255  # noqa: E731
    report = {
        "checkpoint_path": hp.checkpoint_path,
        "photo": hp.photo,
        "size": report_size(hp),
        "tiles": info,
        "psnr_float_db": psnr(tiled, whole),
        "psnr_8bit_db": psnr(to8(tiled), to8(whole)),
        "whole_s": whole_s,
        "tiled_s": tiled_s,
        "machine": f"{platform.machine()}, {hp.threads} threads, torch {torch.__version__}",
        "hparams": asdict(hp),
    }
    markdown = (
        f"{hp.checkpoint_path} on {Path(hp.photo).name} at {report['size']}: tiled against whole "
        f"{report['psnr_float_db']:.1f} dB (float), {report['psnr_8bit_db']:.1f} dB (8-bit); "
        f"whole {whole_s:.0f} s, tiled {tiled_s:.0f} s; tiles {report['tiles']}"
    )
    publish(report, markdown, hp.output)
    return report


if __name__ == "__main__":
    main(parse_hparams(TilingCheckHparams, __doc__.split("\n\n")[0], sys.argv[1:]))
