"""Build the shipped ``sample/`` dataset from public-domain / CC0 photographs in scikit-image.

The photographs ship inside the scikit-image wheel (no download). Each one is resized, cut into
disjoint tiles, and darkened with :func:`data.synthesize.synthesize_low` (default
:class:`~data.synthesize.SynthesisParams`, one generator per file seeded from ``(seed, file name)``).
Train, valid and bench/infer use different photographs, so the valid split is held out.

    python -m data.make_sample --output sample --seed 0 --overwrite true

Rerunning the command reproduces byte-identical files.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jsonargparse import CLI
from PIL import Image
from skimage import data as skdata

from data.synthesize import SynthesisParams, image_rng, synthesize_low
from data.utils import save_png_atomic

SUB_DATASET = "SkimageSynth"
SPLITS = ("1_train", "2_valid", "3_bench", "4_infer")


@dataclass(frozen=True)
class Photo:
    """A scikit-image photograph, its provenance and licence as stated in skimage/data/_fetchers.py."""

    loader: Callable[[], np.ndarray]
    title: str
    licence: str


PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(
        skdata.astronaut,
        "Eileen Collins, NASA Great Images database",
        "public domain ('No known copyright restrictions, released into the public domain.')",
    ),
    "coffee": Photo(
        skdata.coffee,
        "Coffee cup, courtesy of Pikolo Espresso Bar, photo by Rachel Michetti",
        "CC0 ('No copyright restrictions. CC0 by the photographer (Rachel Michetti).')",
    ),
    "retina": Photo(
        skdata.retina,
        "Fundus photograph of a normal left eye, Mikael Häggström, Wikimedia Commons",
        "CC0 1.0 ('made available under the Creative Commons CC0 1.0 Universal Public Domain Dedication')",
    ),
    "chelsea": Photo(
        skdata.chelsea,
        "Chelsea the cat, photo by Stefan van der Walt",
        "CC0 ('No copyright restrictions. CC0 by the photographer (Stefan van der Walt).')",
    ),
    "rocket": Photo(
        skdata.rocket,
        "Launch of DSCOVR on Falcon 9, SpaceX Photos (Flickr)",
        "public domain ('captured by SpaceX and released in the public domain')",
    ),
    "camera": Photo(
        skdata.camera,
        "Cameraman (grey), photo by Lav Varshney",
        "CC0 ('No copyright restrictions. CC0 by the photographer (Lav Varshney).')",
    ),
    "hubble_deep_field": Photo(
        skdata.hubble_deep_field,
        "Hubble eXtreme Deep Field, NASA / HubbleSite",
        "public domain ('captured by NASA and may be freely used in the public domain')",
    ),
}


@dataclass(frozen=True)
class Tiling:
    """Resize a photo to (H, W), then cut it into a rows x cols grid of disjoint tiles."""

    photo: str
    split: str
    height: int
    width: int
    rows: int = 1
    cols: int = 1


PLAN: tuple[Tiling, ...] = (
    Tiling("astronaut", "1_train", 512, 512, rows=2, cols=2),  # 4 tiles of 256x256
    Tiling("coffee", "1_train", 320, 480, cols=2),  # 2 tiles of 240x320 (WxH)
    Tiling("retina", "1_train", 512, 512, rows=2, cols=2),  # 4 tiles of 256x256
    Tiling("chelsea", "2_valid", 256, 385, cols=2),  # 192x256 and 193x256: sizes differ on purpose
    Tiling("rocket", "3_bench", 256, 384, cols=2),  # 2 tiles of 192x256
    Tiling("camera", "4_infer", 256, 256),  # grey photo stored as RGB
    Tiling("hubble_deep_field", "4_infer", 256, 294),  # a naturally dark scene
)


def _rgb(photo: str) -> np.ndarray:
    """(H, W, 3) uint8 photograph; grey photos are replicated to three channels."""
    image = PHOTOS[photo].loader()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _tiles(plan: Tiling) -> list[tuple[str, np.ndarray]]:
    """(file name, (h, w, 3) uint8 tile) for every tile of one photo, row-major."""
    resized = np.asarray(
        Image.fromarray(_rgb(plan.photo)).resize((plan.width, plan.height), Image.Resampling.LANCZOS)
    )
    row_edges = np.linspace(0, plan.height, plan.rows + 1).round().astype(int)
    col_edges = np.linspace(0, plan.width, plan.cols + 1).round().astype(int)
    tiles = []
    for r in range(plan.rows):
        for c in range(plan.cols):
            index = r * plan.cols + c
            name = f"{plan.photo}.png" if plan.rows * plan.cols == 1 else f"{plan.photo}_{index}.png"
            tiles.append((name, resized[row_edges[r] : row_edges[r + 1], col_edges[c] : col_edges[c + 1]]))
    return tiles


def _readme(seed: int, counts: dict[str, int]) -> str:
    """sample/README.md: layout, provenance, licences and the command that regenerates the files."""
    used = {t.photo: t.split for t in PLAN}
    rows = "\n".join(
        f"| `{name}` | {used[name]} | {p.title} | {p.licence} |" for name, p in PHOTOS.items() if name in used
    )
    layout = "\n".join(f"- `{split}/{SUB_DATASET}/{{low,high}}`: {counts[split]} pairs" for split in SPLITS)
    return f"""# IllRecNet sample dataset

A tiny synthetic low-light dataset for smoke tests and tutorials, in the seed's layout:

{layout}

`high/` holds normal-light photographs (8-bit sRGB PNG); `low/` holds the same image darkened by
`data/synthesize.py` (inverse sRGB gamma, exposure cut, Poisson shot noise plus Gaussian read noise,
per-channel colour cast, sRGB gamma, 8-bit quantization) with the default `SynthesisParams`. It is
synthetic data: numbers measured on it say nothing about real low-light photographs.

Train, valid and bench/infer use different photographs (train tiles are disjoint crops), so the
valid split is held out. The two valid images differ in width on purpose (192 and 193 px).

## Provenance and licences

All photographs ship with scikit-image 0.26 (`skimage.data`, loaded offline); the licence text
quoted is the one in that function's docstring in `skimage/data/_fetchers.py`.

| photo (`skimage.data.*`) | split | source | licence |
|---|---|---|---|
{rows}

The derived images here (crops, resizing, synthetic darkening) are released under the same terms
(public domain / CC0).

## Regenerate

```
python -m data.make_sample --output sample --seed {seed} --overwrite true
```

The build is deterministic: each low image is drawn from a generator seeded by (seed, file name),
so rerunning the command reproduces byte-identical files.
"""


def build_sample(output: Path, seed: int, params: SynthesisParams) -> dict[str, int]:
    """Write every split of the sample under ``output``; returns the pair count per split."""
    counts = dict.fromkeys(SPLITS, 0)
    for plan in PLAN:
        folder = output / plan.split / SUB_DATASET
        (folder / "low").mkdir(parents=True, exist_ok=True)
        (folder / "high").mkdir(parents=True, exist_ok=True)
        for name, high in _tiles(plan):
            low = synthesize_low(high / 255.0, image_rng(seed, name), params)  # (h, w, 3) uint8
            save_png_atomic(folder / "high" / name, np.ascontiguousarray(high))
            save_png_atomic(folder / "low" / name, low)
            counts[plan.split] += 1
    (output / "README.md").write_text(_readme(seed, counts), encoding="utf-8")
    return counts


def main(output: Path = Path("sample"), seed: int = 0, overwrite: bool = False) -> None:
    """Build the sample dataset.

    Args:
        output: destination folder.
        seed: base seed for the synthesizer (>= 0).
        overwrite: delete the split folders and README.md already in ``output`` first; without it,
            an existing sample is an error.
    """
    managed = [output / split for split in SPLITS] + [output / "README.md"]
    existing = [p for p in managed if p.exists()]
    if existing and not overwrite:
        sys.exit(
            f"error: {output} already holds {', '.join(p.name for p in existing)}; pass --overwrite true"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    counts = build_sample(output, seed, SynthesisParams())
    print(f"wrote {sum(counts.values())} pairs to {output}: {counts}")


if __name__ == "__main__":
    CLI(main)
