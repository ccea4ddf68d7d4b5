"""Image discovery, decoding, low/high pairing and whole-split validation.

Layout of a split (the seed's layout)::

    data/1_train/<SubDataset>/low/<name>.png
    data/1_train/<SubDataset>/high/<name>.png

Policies (each pinned by a test in ``tests/test_data.py``):

- **Discovery.** Only the top level of ``low/`` and ``high/`` is read. A file counts as an image when
  its extension is in :data:`IMG_EXTENSIONS` (case-insensitive); hidden files (leading ``.``,
  including AppleDouble ``._a.png`` and ``.DS_Store``), ``Thumbs.db``, ``desktop.ini`` and other
  extensions are ignored.
- **Symlinks** to files and to sub-dataset folders are followed. Every directory entry is listed
  once, under its own name; a sub-dataset symlink that resolves to a folder already listed in the
  same split is skipped with a warning so its images are not counted twice.
- **Pairing** is by file name, never by position. The key is the file stem (Unicode NFC), so
  ``low/a.jpg`` pairs with ``high/a.png`` and an info line is logged. Two files with the same stem
  in one folder (``a.png`` and ``a.jpg``) are an "ambiguous pairing" error.
- **Colour.** Every image is decoded to float32 RGB (3, H, W) in [0, 1]: EXIF orientation applied,
  grey/1-bit/palette/CMYK converted to RGB, an alpha channel dropped (RGB kept as stored, not
  composited; one warning per folder), 16-bit files divided by 65535 and never clipped.
- **Size limit.** Images with more than :data:`MAX_IMAGE_PIXELS` pixels are rejected from the header,
  before decoding, with a :class:`DataError` (raise the module attribute to allow larger files).
- **Errors.** Every problem raises :class:`DataError`, whose message names the split, the
  sub-dataset and the file(s). :func:`validate_split` collects all problems of a split and raises
  them together.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.utils import atomic_write_bytes

log = logging.getLogger(f"illrecnet.{__name__}")  # shown by utils.utils.setup_logging

IMG_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""Allowed image file extensions, compared in lower case."""

IGNORED_FILE_NAMES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini"})
"""OS metadata files that are never images (compared in lower case); hidden files are ignored too."""

MAX_IMAGE_PIXELS: int = 40_000_000
"""Largest accepted image (W * H, checked from the header before decoding). 40 MP is a 7300 x 5500
photo, about 0.5 GB as float32 RGB; assign a larger value to this attribute to accept larger files."""

MAX_LISTED = 10
"""How many file names an error message lists before it summarises the rest as a count."""

_MAX_PROBLEMS = 200
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ORIENTATION_OPS = {  # EXIF orientation -> (swap H and W, then flip rows, flip columns)
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}

_warned_alpha: set[Path] = set()
_warned_lock = threading.Lock()


class DataError(ValueError):
    """A data problem: a missing folder, an unpaired or unreadable file, a size mismatch, ..."""


@dataclass(frozen=True)
class ImagePair:
    """One low-light image and its normal-light reference (``high`` is None where there is none)."""

    low: Path
    high: Path | None
    dataset: str
    """Name of the sub-dataset folder, e.g. ``LOLv1``."""
    name: str
    """File name of the low image, extension included."""
    synthetic: bool = False
    """A photo of a photo folder: ``low`` and ``high`` are the same normal-light photo, whose
    low-light twin is synthesized when the sample is served (:mod:`data.dataloader`)."""


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    """Whether a file name passes the extension allow-list and the hidden/OS-junk filter."""
    if name.startswith(".") or name.lower() in IGNORED_FILE_NAMES:
        return False
    return Path(name).suffix.lower() in IMG_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Symlinked files are followed and listed once under their own name. A symlink whose target is
    missing is still listed, so that decoding it reports the broken link by name.
    """
    folder = Path(folder)
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if is_image_name(e.name) and not e.is_dir()]
    return [folder / name for name in sorted(names)]


def _stem_key(path: Path) -> str:
    """Pairing key: the file stem in Unicode NFC (macOS may store names decomposed, NFD)."""
    return unicodedata.normalize("NFC", path.stem)


def _summarise(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``'a.png, b.png, ... (+3 more)'`` for error messages."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _index_folder(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map pairing key -> file for one ``low/`` or ``high/`` folder, plus ambiguity problems."""
    by_key: dict[str, list[Path]] = {}
    for path in list_images(folder):
        by_key.setdefault(_stem_key(path), []).append(path)
    problems = [
        f"ambiguous pairing in {folder}: {_summarise(p.name for p in paths)} share the stem {key!r}"
        for key, paths in by_key.items()
        if len(paths) > 1
    ]
    return {key: paths[0] for key, paths in by_key.items() if len(paths) == 1}, problems


def _sub_datasets(split_dir: Path) -> list[Path]:
    """Sub-dataset folders of a split, sorted by name; duplicate symlinks skipped (see module doc)."""
    with os.scandir(split_dir) as entries:
        candidates = [
            e for e in entries if not e.name.startswith(".") and e.name not in ("low", "high") and e.is_dir()
        ]
    seen: dict[Path, str] = {}
    # Real folders claim their target first, so a symlink to them is the one skipped.
    for entry in sorted(candidates, key=lambda e: (e.is_symlink(), e.name)):
        target = Path(entry.path).resolve()
        if target in seen:
            log.warning("%s links to sub-dataset %s of the same split; listed once", entry.path, seen[target])
            continue
        seen[target] = entry.name
    return [split_dir / name for name in sorted(seen.values())]


def _photo_folder(sub: Path, label: str) -> tuple[list[ImagePair], list[str]]:
    """The photos of a photo folder (``sub/high/`` or, without it, ``sub`` itself), each as a
    synthetic pair; an empty folder is a problem."""
    folder = sub / "high" if (sub / "high").is_dir() else sub
    photos, problems = _index_folder(folder)
    if not photos:
        return [], problems + [
            f"no images in photo folder {folder} (sub-dataset {label}: without low/, a training or "
            "validation sub-dataset holds normal-light photos, directly or in high/)"
        ]
    log.info(
        "%s has no low/ folder: %d photos, their low-light twins synthesized on the fly", label, len(photos)
    )
    return [ImagePair(p, p, sub.name, p.name, synthetic=True) for p in photos.values()], problems


def _pair_sub_dataset(
    sub: Path, require_high: bool, label: str, use_high: bool = True, photos: bool = False
) -> tuple[list[ImagePair], list[str]]:
    """Pair one sub-dataset's ``low/`` and ``high/`` by name; return its pairs and problems. With
    ``photos``, a sub-dataset without ``low/`` is a photo folder (:func:`_photo_folder`)."""
    low_dir, high_dir = sub / "low", sub / "high"
    if not low_dir.is_dir():
        if photos:
            return _photo_folder(sub, label)
        return [], [f"missing folder {low_dir} (sub-dataset {label})"]
    has_high = use_high and high_dir.is_dir()  # inference never reads high/, so it is not checked
    if require_high and not has_high:
        return [], [f"missing folder {high_dir} (sub-dataset {label})"]
    lows, problems = _index_folder(low_dir)
    if not has_high:
        if use_high:
            log.info("%s has no high/ folder: no-reference use only (full-reference metrics skipped)", label)
        pairs = [ImagePair(lows[k], None, sub.name, lows[k].name) for k in lows]
        return pairs, problems + ([] if pairs else [f"no images in {label}"])
    highs, high_problems = _index_folder(high_dir)
    problems += high_problems
    counts = f"low/ has {len(lows)} images, high/ has {len(highs)}"
    for side, mine, other, folder in (("low", lows, highs, low_dir), ("high", highs, lows, high_dir)):
        alone = sorted(mine.keys() - other.keys())
        if alone:
            twin = "high" if side == "low" else "low"
            problems.append(
                f"{label}: {len(alone)} {side} image(s) without a {twin} twin ({counts}) in {folder}: "
                + _summarise(mine[k].name for k in alone)
            )
    keys = sorted(lows.keys() & highs.keys())
    renamed = [k for k in keys if lows[k].name != highs[k].name]
    if renamed:
        log.info(
            "%s: %d pair(s) matched on the stem with different extensions, e.g. low/%s <-> high/%s",
            label,
            len(renamed),
            lows[renamed[0]].name,
            highs[renamed[0]].name,
        )
    pairs = [ImagePair(lows[k], highs[k], sub.name, lows[k].name) for k in keys]
    return pairs, problems + ([] if pairs else [f"no image pairs in {label}"])


def _scan(
    split_dir: Path, require_high: bool, split_name: str, use_high: bool = True, photos: bool = False
) -> tuple[dict[str, list[ImagePair]], list[str]]:
    """Pair every sub-dataset of a split by name; return the pairs and every problem found."""
    layout = f"expected {split_name}/<SubDataset>/low" + (" and .../high" if require_high else "")
    if not split_dir.is_dir():
        return {}, [f"split folder not found: {split_name} ({layout})"]
    problems: list[str] = []
    if (split_dir / "low").is_dir() or (split_dir / "high").is_dir():
        problems.append(
            f"{split_name} holds low/ or high/ directly; move them into a sub-dataset folder ({layout})"
        )
    subs = _sub_datasets(split_dir)
    if not subs:
        problems.append(f"no sub-dataset folders in {split_name} ({layout})")
    pairs: dict[str, list[ImagePair]] = {}
    for sub in subs:
        found, sub_problems = _pair_sub_dataset(
            sub, require_high, f"{split_name}/{sub.name}", use_high, photos
        )
        problems += sub_problems
        if found:
            pairs[sub.name] = sorted(found, key=lambda p: p.name)
    return pairs, problems


def _raise_problems(split_name: str, problems: list[str]) -> None:
    """Raise one DataError listing every problem of a split (capped at a few hundred lines)."""
    if not problems:
        return
    shown = problems[:_MAX_PROBLEMS]
    more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
    raise DataError(f"{split_name}: {len(problems)} data problem(s):\n  - " + "\n  - ".join(shown) + more)


def scan_split(
    split_dir: str | os.PathLike, require_high: bool, split_name: str | None = None, use_high: bool = True
) -> dict[str, list[ImagePair]]:
    """Pair the images of every sub-dataset of a split by name, without decoding them.

    Args:
        split_dir: the split folder, e.g. ``data/1_train``.
        require_high: train/valid need ``high/`` in every sub-dataset; bench/infer do not (a
            sub-dataset without ``high/`` gives pairs with ``high=None``). Where ``high/`` exists it
            must match ``low/`` exactly, whatever this flag says.
        split_name: how messages name the split (default: ``split_dir`` as given).
        use_high: False for inference: ``high/`` is ignored (not read, not checked) and every pair
            has ``high=None``, so a partial or stray ``high/`` folder does not stop inference.

    Returns:
        sub-dataset name -> its pairs sorted by file name, sub-datasets sorted by name.

    Raises:
        DataError: listing every structural problem (missing folders, unpaired or ambiguous names,
            empty sub-datasets) at once.
    """
    split_dir = Path(split_dir)
    split_name = split_name or str(split_dir)
    pairs, problems = _scan(split_dir, require_high, split_name, use_high)
    _raise_problems(split_name, problems)
    return pairs


DECODE_THREADS = min(16, (os.cpu_count() or 1) + 4)
"""Threads that decode a whole split (Pillow, libpng and libjpeg release the GIL)."""


class DecodedImages(dict[Path, np.ndarray]):
    """Decoded images by path, ``(H, W, 3)`` uint8/uint16 arrays that are contiguous and writable
    (:meth:`offer` makes them so with :func:`writable_contiguous`), kept only while they take at most
    ``limit_gb`` in all.

    :meth:`offer` adds one; the first image that takes the total past the limit empties the
    collection and sets :attr:`overflowed`, after which nothing more is kept (the caller then reads
    from disk).
    """

    def __init__(self, limit_gb: float) -> None:
        super().__init__()
        self.limit_gb = limit_gb
        self.nbytes = 0
        """Bytes of every image offered so far, kept or not."""
        self.overflowed = limit_gb <= 0

    def offer(self, path: Path, array: np.ndarray) -> None:
        self.nbytes += array.nbytes
        if self.overflowed:
            return
        if self.nbytes > self.limit_gb * 1e9:
            self.clear()
            self.overflowed = True
            return
        self[path] = writable_contiguous(array)

    def pass_over(self, nbytes: int) -> None:
        """Count an image decoded but not offered (the limit was passed already), for the log."""
        self.nbytes += nbytes


def writable_contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` as a contiguous, writable array (a copy only when it is not one already: decoders
    may return reversed or read-only views, which ``torch.from_numpy`` refuses or warns about)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def validate_split(
    split_dir: str | os.PathLike,
    require_high: bool,
    split_name: str | None = None,
    min_size: int | None = None,
    max_workers: int | None = None,
    use_high: bool = True,
    keep: DecodedImages | None = None,
    photos: bool = False,
) -> dict[str, list[ImagePair]]:
    """Scan a split and fully decode every file, reporting every problem in one DataError.

    On top of :func:`scan_split` this finds empty, truncated, non-image and oversized files and
    pairs whose sizes differ. Decoding runs in a thread pool (Pillow, libpng and libjpeg release
    the GIL), so a few hundred pairs take seconds.

    Args:
        min_size: the training crop size; pairs whose short side is smaller are not an error, they
            are edge-padded by the dataset, and their count is logged.
        max_workers: decoding threads (default: :data:`DECODE_THREADS`).
        use_high: as in :func:`scan_split` (False for inference: ``high/`` is ignored).
        keep: if given, every decoded image is offered to it (within its limit), so the training
            set need not be decoded a second time to be kept in memory. Without it each image is
            dropped as soon as its size is known.
        photos: sub-datasets without ``low/`` are photo folders (training and validation), checked
            like any image.
    """
    split_dir = Path(split_dir)
    split_name = split_name or str(split_dir)
    pairs, problems = _scan(split_dir, require_high, split_name, use_high, photos)
    paths = (p for group in pairs.values() for pair in group for p in (pair.low, pair.high) if p is not None)
    files = list(dict.fromkeys(paths))  # a photo is both sides of its pair: decoded once
    workers = max_workers or DECODE_THREADS

    def decode(path: Path) -> tuple[tuple[int, int] | str, np.ndarray | int]:
        """``((H, W) or the error message, the array or its size in bytes)``. Arrays come back only
        while ``keep`` has room, so an overflowing split is not held while the pool works on."""
        try:
            array = decode_image_array(path)
        except DataError as err:
            return str(err), 0
        if keep is not None and not keep.overflowed:
            return array.shape[:2], writable_contiguous(array)
        return array.shape[:2], array.nbytes

    shapes: dict[Path, tuple[int, int] | str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, (shape, array) in zip(files, pool.map(decode, files), strict=True):
            shapes[path] = shape
            if isinstance(array, np.ndarray):
                keep.offer(path, array)
            elif keep is not None:
                keep.pass_over(array)
    small = 0
    total = sum(len(group) for group in pairs.values())
    for group in pairs.values():
        for pair in group:
            low, high = shapes[pair.low], shapes[pair.high] if pair.high is not None else None
            bad = [s for s in (low, high) if isinstance(s, str)]
            problems += [f"{msg} (sub-dataset {split_name}/{pair.dataset})" for msg in bad]
            if bad or high is None:
                continue
            if low != high:
                problems.append(
                    f"size mismatch in {split_name}/{pair.dataset}: {pair.low} is {low[1]}x{low[0]} (WxH) "
                    f"but {pair.high} is {high[1]}x{high[0]}"
                )
            elif min_size is not None and min(low) < min_size:
                small += 1
    _raise_problems(split_name, problems)
    if small:
        log.info(
            "%s: %d of %d pairs are smaller than the %d px crop and will be edge-padded",
            split_name,
            small,
            total,
            min_size,
        )
    return pairs


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (Pillow hides it: 16-bit RGB silently opens as 8-bit)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24]
    return None


def _apply_orientation(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as ``ImageOps.exif_transpose`` does."""
    swap, flip_rows, flip_cols = _ORIENTATION_OPS.get(orientation or 1, (False, False, False))
    if swap:
        array = array.swapaxes(0, 1)
    if flip_rows:
        array = array[::-1]
    if flip_cols:
        array = array[:, ::-1]
    return array


def _warn_alpha_once(path: Path) -> None:
    """One warning per folder that holds images with an alpha channel."""
    with _warned_lock:
        if path.parent in _warned_alpha:
            return
        _warned_alpha.add(path.parent)
    log.warning(
        "%s: images with an alpha channel (first: %s); alpha is dropped, RGB kept as stored",
        path.parent,
        path.name,
    )


def _pil_to_array(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 RGB from a loaded, upright Pillow image of any mode."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        grey = np.asarray(im)
        if grey.min() < 0 or grey.max() > 65535:
            raise DataError(f"{path}: 32-bit integer image with values outside 0..65535 is not supported")
        return np.repeat(grey.astype(np.uint16)[..., None], 3, axis=2)
    if im.mode == "F":
        raise DataError(f"{path}: floating-point image (mode F) is not supported; save it as 8/16-bit")
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        _warn_alpha_once(path)
        im = im.convert("RGBA")  # a palette with transparency goes through RGBA to keep its colours
    return np.asarray(im.convert("RGB"))


def _decode_deep(path: Path, im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint16 RGB from a 16-bit PNG or a deep TIFF, which Pillow would cut to 8 bit.

    OpenCV decodes the samples as stored (``IMREAD_UNCHANGED``: no orientation applied, no
    conversion); Pillow's EXIF orientation is applied afterwards, as for every other image.
    """
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        kind = "16-bit PNG" if im.format == "PNG" else "TIFF"
        raise DataError(f"{path}: OpenCV could not decode this {kind} (truncated, corrupt or unsupported)")
    if array.dtype not in (np.uint8, np.uint16):  # float32/64, 32-bit integers: no fixed white level
        raise DataError(f"{path}: {array.dtype} TIFF samples are not supported; save it as 8/16-bit")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] in (2, 4):
        _warn_alpha_once(path)
    match array.shape[2]:
        case 1 | 2:
            array = np.repeat(array[..., :1], 3, axis=2)
        case _:
            array = array[..., 2::-1]  # BGR(A) -> RGB
    return _apply_orientation(array, im.getexif().get(_EXIF_ORIENTATION))


def _is_deep(path: Path, im: Image.Image) -> bool:
    """True for 16-bit files that Pillow would truncate to 8 bit (16-bit grey TIFF it reads fine)."""
    if im.format == "PNG":
        return _png_bit_depth(path) == 16
    if im.format == "TIFF" and im.mode not in _SIXTEEN_BIT_MODES:
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def decode_image_array(path: str | os.PathLike) -> np.ndarray:
    """Fully decode an image to an upright (H, W, 3) RGB array, uint8 or uint16 as stored.

    Raises:
        DataError: naming the file and what is wrong (missing, empty, not an image, truncated,
            decompression bomb, over :data:`MAX_IMAGE_PIXELS`, unsupported mode).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err}; broken symlink?)") from err
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path}: {width}x{height} image has {width * height / 1e6:.1f} MP, over the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP limit (raise data.utils.MAX_IMAGE_PIXELS to allow it)"
                )
            if _is_deep(path, im):
                return _decode_deep(path, im)
            im.load()
            return _pil_to_array(ImageOps.exif_transpose(im), path)
    except DataError:
        raise
    except UnidentifiedImageError as err:
        hint = ""
        if path.suffix.lower() in (".tif", ".tiff"):
            hint = "; TIFFs with floating-point colour samples are not supported, save it as 8/16-bit"
        raise DataError(f"{path}: not a recognised image file ({size} bytes){hint}") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: rejected as a decompression bomb ({err})") from err
    except MemoryError as err:
        raise DataError(f"{path}: out of memory while decoding") from err
    except (OSError, SyntaxError, ValueError, RuntimeError, EOFError, IndexError) as err:
        raise DataError(f"{path}: truncated or corrupt image ({type(err).__name__}: {err})") from err


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a float32 (3, H, W) RGB tensor in [0, 1] (see the module policies).

    8-bit files are divided by 255 and 16-bit files by 65535, so a dark 16-bit file stays dark.
    """
    return to_unit_float(decode_image_array(path))


def to_unit_float(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An (H, W, 3) uint8/uint16 array, or a (3, H, W) uint8/uint16 tensor, as a contiguous float32
    (3, H, W) tensor in [0, 1]: 8-bit values divided by 255, 16-bit by 65535. A float tensor is
    taken as already scaled (only made contiguous float32)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(writable_contiguous(image)).permute(2, 0, 1)  # a (3, H, W) view
    if image.is_floating_point():
        return image.to(torch.float32).contiguous()
    scale = 65535.0 if image.dtype == torch.uint16 else 255.0
    return image.to(torch.float32, memory_format=torch.contiguous_format).div_(scale)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of the upright image, read from the header only (EXIF orientation 5-8 swaps W and H).

    A PNG's orientation is read only from an eXIf chunk before the image data (where Pillow and
    the PNG specification put it): Pillow's ``getexif`` on a PNG without one decodes the whole
    image to look behind the pixels, which made this call as slow as a decode.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            header_only = im.format != "PNG" or "exif" in im.info
            orientation = im.getexif().get(_EXIF_ORIENTATION) if header_only else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image header ({type(err).__name__}: {err})") from err
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


PNG_COMPRESS_LEVEL = 1
"""zlib level of every PNG this project writes (enhanced images, bench strips, synthesized pairs).
PNG is lossless at every level; level 1 encodes several times faster than Pillow's default 6 for
somewhat larger files, so writing an output no longer takes many times the GPU's forward pass
(docs/measurements.md, "Data loading and file I/O")."""


def save_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as PNG, encoded in memory and then written atomically
    (:func:`utils.utils.atomic_write_bytes`: a hidden temporary file in the same folder, then
    ``os.replace``; missing folders are created).

    A reader never sees a partial file under ``path``; a crash leaves at most a hidden ``.*.tmp``
    file, which :func:`list_images` ignores.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    atomic_write_bytes(Path(path), buffer.getvalue())
