"""A contact sheet to judge the synthesizer's realism: real dark photos beside synthesized ones.

::

    python -m tools.contact_sheet --output docs/images/contact_sheet.jpg

Each row shows crops of real low-light photos (``--real``: DICM and LIME by default), each beside the
synthesized crop (``--regime`` of :data:`data.synthesize.REGIMES`, from normal-light ``--photos``)
whose mean sRGB level is closest to it, so that noise, colour and compression are compared at a
similar brightness. Every crop is the centre of the image shrunk so that its short side is twice
the crop. The captions give the source and the mean level. Written atomically as a JPEG.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from utils.utils import atomic_write_bytes, parse_hparams


@dataclass
class ContactSheetHparams:
    """Real dark photos beside synthesized ones of similar brightness."""

    real: list[str] = field(
        default_factory=lambda: ["../shared/datasets/DICM/low", "../shared/datasets/LIME/low"]
    )
    """Folders of real low-light photos."""
    photos: list[str] = field(
        default_factory=lambda: ["../shared/datasets/natural/Kodak24", "../shared/datasets/natural/McMaster"]
    )
    """Folders of normal-light photos the synthesized crops come from."""
    regime: str = "camera"
    """Degradation regime (a name of data.synthesize.REGIMES)."""
    pairs: int = 8
    """Real photos shown (evenly spaced over the real folders' files), each with its synthetic match."""
    draws: int = 6
    """Synthesized versions of each normal-light photo to choose the matches from."""
    crop: int = 160
    """Side of each crop, in pixels."""
    seed: int = 0
    """Seed of the synthesis."""
    output: str = "docs/images/contact_sheet.jpg"
    """Where the JPEG is written."""


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """``image (H, W, 3)`` uint8 shrunk (area filter) so its short side is ``2 * crop``, then its
    centre ``crop x crop``."""
    height, width = image.shape[:2]
    scale = 2 * crop / min(height, width)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return image[top : top + crop, left : left + crop]


def _load(folders: list[str]) -> list[tuple[str, np.ndarray]]:
    from data.utils import list_images, load_image

    found = []
    for folder in folders:
        for path in list_images(Path(folder)):
            found.append((f"{Path(folder).parent.name}/{path.name}", load_image(path)))
    if not found:
        raise FileNotFoundError(f"no images in {', '.join(folders)}")
    to8 = lambda t: np.round(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # noqa: E731
    return [(name, to8(image)) for name, image in found]


def matches(hp: ContactSheetHparams) -> list[tuple[str, np.ndarray, str, np.ndarray]]:
    """``(real name, real crop, synthetic name, synthetic crop)`` per row, the synthetic crop of the
    closest mean level that no earlier row took."""
    from data.synthesize import REGIMES, image_rng, synthesize_low

    real = _load(hp.real)
    chosen = [real[i] for i in np.linspace(0, len(real) - 1, min(hp.pairs, len(real))).round().astype(int)]
    pool = []
    for name, photo in _load(hp.photos):
        high = centre_crop(photo, hp.crop) / 255.0
        for k in range(hp.draws):
            low = synthesize_low(high, image_rng(hp.seed, f"{name}#{k}"), REGIMES[hp.regime])
            pool.append((f"{name} ({hp.regime})", low))
    rows = []
    for name, image in chosen:
        crop = centre_crop(image, hp.crop)
        best = min(range(len(pool)), key=lambda i: abs(pool[i][1].mean() - crop.mean()))
        synth_name, synth = pool.pop(best)
        rows.append((name, crop, synth_name, synth))
    return rows


def render(rows: list[tuple[str, np.ndarray, str, np.ndarray]], crop: int) -> Image.Image:
    """Two pairs a row, a caption under every crop."""
    caption, gap, per_row = 28, 6, 2
    lines = (len(rows) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (2 * crop + 3 * gap), lines * (crop + caption + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, real, synth_name, synth) in enumerate(rows):
        x0, y0 = (i % per_row) * (2 * crop + 3 * gap), (i // per_row) * (crop + caption + gap)
        for k, (label, image) in enumerate(((f"real: {name}", real), (f"synthetic: {synth_name}", synth))):
            x = x0 + k * (crop + gap)
            sheet.paste(Image.fromarray(image), (x, y0))
            draw.text((x, y0 + crop + 2), label[:28], fill="black")
            draw.text((x, y0 + crop + 14), f"mean level {image.mean() / 255:.3f}", fill="black")
    return sheet


def get_hparams() -> ContactSheetHparams:
    return ContactSheetHparams()


def main(hp: ContactSheetHparams) -> Path:
    from data.synthesize import REGIMES

    if hp.regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {hp.regime!r}")
    sheet = render(matches(hp), hp.crop)
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85)
    atomic_write_bytes(Path(hp.output), buffer.getvalue())
    print(f"wrote {hp.output}", file=sys.stderr)
    return Path(hp.output)


if __name__ == "__main__":
    main(parse_hparams(type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:]))
