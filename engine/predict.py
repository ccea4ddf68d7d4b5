"""Bench and inference loops: enhance whole images (tiled when large), score them, write outputs.

These loops run on one device outside a Lightning Trainer on purpose: every image is processed
exactly once (no distributed sampler padding that would double-count images), outputs are written
atomically one by one, and a bad file is reported without stopping the others.
"""

import csv
import io
import json
import math
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.utils import (
    DataError,
    DecodedImages,
    ImagePair,
    decode_image_array,
    list_images,
    load_image,
    save_png_atomic,
    scan_split,
    to_unit_float,
    validate_split,
)
from model.blocks.attention import ChannelAttention, fixed_attention, record_attention
from model.blocks.enhancer import Enhancer
from utils.hparams import TileHparams
from utils.metrics import PROTOCOL, PROTOCOL_SUMMARY, BenchScorer
from utils.tiling import enhance_image, is_out_of_memory
from utils.utils import atomic_write_text, log, sha256_of


class BenchError(RuntimeError):
    """The bench could not score every image it was given."""


# ------------------------------------------------------------------------------------ enhancing
VIEWS = tuple((k, flip) for k in range(4) for flip in (False, True))
"""The 8 flips/rotations of the self-ensemble: ``(quarter turns, horizontal flip)``."""


def to_view(x: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """``x`` rotated by ``view[0]`` quarter turns, then flipped horizontally if ``view[1]``."""
    t = torch.rot90(x, view[0], dims=(-2, -1))
    return t.flip(-1) if view[1] else t


def from_view(y: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """Undo :func:`to_view`."""
    return torch.rot90(y.flip(-1) if view[1] else y, -view[0], dims=(-2, -1))


class Enhance:
    """``(1, 3, H, W)`` in [0, 1] -> enhanced ``(1, 3, H, W)``, optionally averaged over the 8
    flips/rotations (self-ensemble), with optional autocast.

    :meth:`run` is one pass of the model (what tiling calls per tile); calling the object averages
    the views of a whole image. :func:`enhance_one` does both: it tiles each view of the image on
    its own, so every view's tiles sit on the network's sampling grid.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        self_ensemble: bool = False,
        precision: str = "32-true",
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.self_ensemble = self_ensemble
        self.autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self._shared: dict | None = None  # {attention layer: matrix} of the whole image, while tiling
        self.stride = max((m.stride for m in model.modules() if isinstance(m, Enhancer)), default=1)
        """The model's total downsampling factor: tiles start on multiples of it, so each tile is
        sampled on the same grid as the whole image."""

    @property
    def views(self) -> tuple[tuple[int, bool], ...]:
        return VIEWS if self.self_ensemble else VIEWS[:1]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._shared is not None and self.self_ensemble:
            raise RuntimeError("whole_image_attention holds one view's matrices; tile with run(), per view")
        out = sum(from_view(self.run(to_view(x, view)), view) for view in self.views)
        return out / len(self.views)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The model on ``x`` as it is (one view), with the shared whole-image attention if any."""
        x = x.to(self.device)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            if self._shared is None:
                return self.model(x).float()
            with fixed_attention(self.model, self._shared):
                return self.model(x).float()

    @contextmanager
    def whole_image_attention(self, x: torch.Tensor, pixels: int) -> Iterator[None]:
        """Inside the block, :meth:`run` uses the channel-attention matrices of the whole image ``x``
        (shrunk with an area filter to at most ``pixels`` pixels first, so this costs no more
        memory than one tile), not those of its own input.

        Tiled inference runs its tiles inside: channel attention is the enhancer's only global
        operation, so every tile then sees the same global statistics and no tile comes out brighter
        or darker than its neighbours. A model without channel attention is left as it is.
        """
        if not any(isinstance(m, ChannelAttention) for m in self.model.modules()):
            yield
            return
        height, width = x.shape[-2:]
        scale = min(1.0, math.sqrt(pixels / (height * width)))
        guide = x.float()
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            guide = torch.nn.functional.interpolate(guide, size=size, mode="area")
        with record_attention(self.model) as records:
            self.run(guide)
        self._shared = {layer: weights[0] for layer, weights in records.items()}
        try:
            yield
        finally:
            self._shared = None


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` any range -> ``(H, W, 3)`` uint8, clamped and rounded (the values of
    :func:`~utils.metrics.quantize_8bit`) on the tensor's device with one float temporary (a 4K
    image: 100 MB, where a chain of out-of-place steps held 300 MB)."""
    levels = x[0].float().clamp(0.0, 1.0).mul_(255.0).round_()
    return levels.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def enhance_one(
    enhance: Enhance,
    x: torch.Tensor,
    tiles: TileHparams,
    shared_context: Callable[[torch.Tensor, int], AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Enhance one image ``(1, 3, H, W)``: whole or in tiles (:func:`utils.tiling.enhance_image`),
    each self-ensemble view on its own: the view of the whole image is tiled (tile origins on the
    network's grid, attention shared from that view of the whole image) and turned back, so tiles
    reproduce the whole image for every view and every size. ``shared_context`` defaults to
    :meth:`Enhance.whole_image_attention`. Returns the output and the last view's tiling info."""
    out, info = None, {}
    for view in enhance.views:
        y, info = enhance_image(
            enhance.run,
            to_view(x, view),
            tile=tiles.tile,
            overlap=tiles.tile_overlap,
            max_pixels=tiles.max_pixels,
            shared_context=shared_context or enhance.whole_image_attention,
            align=enhance.stride,
        )
        y = from_view(y, view)
        out = y if out is None else out.add_(y)
    return out.div_(len(enhance.views)), info


# ---------------------------------------------------------------------------------------- bench
@dataclass
class BenchResult:
    rows: list[dict]
    summary: dict
    tables: str
    out_dir: Path
    columns: list[str] = field(default_factory=list)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_bench(
    enhance: Enhance,
    bench_data_path: str,
    out_dir: Path,
    metrics: list[str],
    strict: bool,
    tiles: TileHparams,
    save_images: bool,
    checkpoint_path: str,
    logger=None,
    cache_gb: float = 4.0,
) -> BenchResult:
    """Score every image of every sub-dataset under ``bench_data_path``; write bench.csv/json.

    An image that cannot be read, enhanced (out of memory even in the smallest tiles) or saved is
    reported and the others go on; then :class:`BenchError` names every such image and nothing is
    written: a mean over fewer images than the sub-dataset holds is never reported.

    The start-up check decodes every file (in threads); when the split takes at most ``cache_gb``
    GB decoded, those arrays are what is enhanced and scored, so no file is decoded twice.
    """
    decoded = DecodedImages(cache_gb)
    pairs = validate_split(bench_data_path, require_high=False, keep=decoded)
    scorer = BenchScorer(metrics, device=enhance.device, strict=strict)
    columns = scorer.columns
    rows: list[dict] = []
    failed: list[str] = []
    strip_dir = out_dir / "images" if save_images else None
    total = sum(len(v) for v in pairs.values())
    with tqdm(total=total, desc="bench", unit="img", dynamic_ncols=True) as bar:
        for dataset, group in pairs.items():
            for pair in group:
                try:
                    scores = _bench_one(enhance, scorer, pair, tiles, strip_dir, decoded)
                except Exception as error:
                    if not _is_per_image_failure(error):
                        raise
                    log.error("failed: %s: %s", pair.low, error)
                    failed.append(f"{pair.low}: {error}")
                    continue
                finally:
                    bar.update(1)
                rows.append({"dataset": dataset, "image": pair.name, **scores})
    counts = defaultdict(int)
    for row in rows:
        counts[row["dataset"]] += 1
    short = {d: (counts[d], len(g)) for d, g in pairs.items() if counts[d] != len(g)}
    if short:
        raise BenchError(
            f"bench scored fewer images than pairs (scored, pairs): {short}; no bench.csv/json written"
            + "".join(f"\n  failed: {line}" for line in failed)
        )
    summary = _summarise(rows, pairs, columns, checkpoint_path, bench_data_path)
    tables = markdown_tables(summary, columns)
    _write_csv(out_dir / "bench.csv", rows, columns)
    atomic_write_text(out_dir / "bench.json", json.dumps(summary, indent=2))
    if logger is not None:
        logger.add_text("bench/table", tables)
        for dataset, info in summary["datasets"].items():
            for key, value in info["means"].items():
                if value is not None:
                    logger.add_scalar(f"bench/{dataset}/{key}", value)
    return BenchResult(rows, summary, tables, out_dir, columns)


def _bench_one(
    enhance: Enhance,
    scorer: BenchScorer,
    pair: ImagePair,
    tiles: TileHparams,
    strip_dir: Path | None,
    decoded: DecodedImages,
) -> dict:
    """Enhance and score one pair (its images from ``decoded``, else from disk); write its
    low | enhanced | high strip under ``strip_dir`` if given."""

    def image(path: Path) -> torch.Tensor:
        array = decoded.pop(path, None)  # each image is used once: release it
        return (load_image(path) if array is None else to_unit_float(array)).unsqueeze(0)

    low = image(pair.low)
    high = image(pair.high) if pair.high is not None else None
    pred, _ = enhance_one(enhance, low, tiles)
    scores = scorer.score(pred, high)
    if strip_dir is not None:
        strip = _strip([to_uint8(t) for t in (low, pred, high) if t is not None])
        save_png_atomic(strip_dir / pair.dataset / f"{Path(pair.name).stem}.png", strip)
    return scores


def _strip(images: list[np.ndarray]) -> np.ndarray:
    gap = np.full((images[0].shape[0], 4, 3), 255, np.uint8)
    parts = []
    for i, image in enumerate(images):
        parts += [gap, image] if i else [image]
    return np.concatenate(parts, axis=1)


def _mean(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else None


def _summarise(rows, pairs, columns, checkpoint_path, bench_data_path) -> dict:
    import lightning
    import pyiqa
    import torchvision

    datasets = {}
    for dataset in pairs:
        own = [r for r in rows if r["dataset"] == dataset]
        datasets[dataset] = {
            "images": len(own),
            "has_ground_truth": any(p.high is not None for p in pairs[dataset]),
            "means": {c: _mean([r[c] for r in own]) for c in columns},
            "scored": {c: sum(r[c] is not None and math.isfinite(r[c]) for r in own) for c in columns},
        }
    return {
        "checkpoint_path": str(checkpoint_path),
        "checkpoint_sha256": sha256_of(checkpoint_path) if Path(checkpoint_path).is_file() else None,
        "bench_data_path": str(bench_data_path),
        "protocol": PROTOCOL,
        "datasets": datasets,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
            "pyiqa": pyiqa.__version__,
            "numpy": np.__version__,
        },
    }


def markdown_tables(summary: dict, columns: list[str]) -> str:
    """One Markdown table per sub-dataset, the way papers report them. A mean over fewer images than
    the sub-dataset holds (a metric undefined on some of them, e.g. NIQE below 96 px) says so:
    ``5.1234 (3/4 images)``."""
    out = [f"Protocol: {PROTOCOL_SUMMARY}", ""]
    for dataset, info in summary["datasets"].items():
        gt = "" if info["has_ground_truth"] else " (no ground truth: reference metrics n/a)"
        cells = []
        for c in columns:
            mean, scored = info["means"][c], info["scored"][c]
            partial = mean is not None and scored < info["images"]
            cells.append(_fmt(mean) + (f" ({scored}/{info['images']} images)" if partial else ""))
        out += [
            f"**{dataset}** — {info['images']} images{gt}",
            "",
            "| " + " | ".join(["images", *columns]) + " |",
            "|" + "---|" * (len(columns) + 1),
            "| " + " | ".join([str(info["images"]), *cells]) + " |",
            "",
        ]
    return "\n".join(out)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "image", *columns])
    for row in rows:
        writer.writerow([row["dataset"], row["image"], *(_fmt(row[c], 6) for c in columns)])
    atomic_write_text(path, buffer.getvalue())


# ------------------------------------------------------------------------------------ inference
@dataclass
class InferSummary:
    enhanced: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    out_dir: Path | None = None


def collect_inputs(infer_data_path: str, input_path: str | None) -> list[tuple[str, Path]]:
    """``(sub-dataset, file)`` to enhance: every ``<infer_data_path>/*/low`` image, or ``--input``:

    - a file: sub-dataset = its folder's name (the folder above when that is ``low``);
    - a sub-dataset folder (it holds ``low/``): its ``low/`` images, sub-dataset = its name;
    - a split (sub-folders with ``low/``): every sub-dataset, as for ``infer_data_path``;
    - any other folder of images: sub-dataset = its name (the folder above when that is ``low``).
    """
    root = Path(input_path) if input_path else Path(infer_data_path)
    if input_path and root.is_file():
        return [(_dataset_name(root.parent), root)]
    if not root.is_dir():
        raise DataError(f"inference input not found: {root}")
    sub_dataset = (root / "low").is_dir()
    if input_path and (sub_dataset or not any((p / "low").is_dir() for p in root.iterdir() if p.is_dir())):
        folder = root / "low" if sub_dataset else root
        files = list_images(folder)
        if not files:
            raise DataError(f"no images in {folder}")
        return [(_dataset_name(folder), f) for f in files]
    pairs: dict[str, list[ImagePair]] = scan_split(root, require_high=False, use_high=False)
    return [(dataset, pair.low) for dataset, group in pairs.items() for pair in group]


def _dataset_name(folder: Path) -> str:
    """Output sub-folder for the images of ``folder``: its name, or its parent's for a ``low`` folder
    (``X/low`` and ``Y/low`` are two sub-datasets, not one called ``low``)."""
    folder = Path(os.path.abspath(folder))  # "." and ".." resolved; a symbolic link keeps its own name
    if folder.name == "low" and folder.parent.name:
        folder = folder.parent
    return folder.name or "input"


MANIFEST_FLUSH_S = 5.0
"""``run_infer`` records finished outputs in its manifest at most this often (and when it stops)."""


def run_infer(
    enhance: Enhance,
    inputs: list[tuple[str, Path]],
    out_dir: Path,
    tiles: TileHparams,
    overwrite: bool,
    checkpoint_path: str,
) -> InferSummary:
    """Enhance every input into ``out_dir/<sub-dataset>/<stem>.png``.

    ``out_dir/manifest.json`` names the checkpoint the folder is filled with and, per output, the
    source file and checkpoint it was made from. A re-run skips an output only when the manifest
    records it from the same source and checkpoint (``overwrite`` redoes everything); outputs not
    recorded (say, written just before a kill) are redone, so a folder never mixes checkpoints or
    sources. Refused without ``overwrite``: a folder filled with another checkpoint, and an output
    that another source file made (two input folders of the same name). A file that fails
    (unreadable, out of memory even in the smallest tiles, a failed write) is reported and gets no
    output; the others go on. The next input is decoded, and the last output encoded and written, in
    one thread each while the model runs; an output is recorded once its write has finished, and a
    stop (Ctrl-C, an error) waits for the write under way and records it.
    """
    summary = InferSummary(out_dir=out_dir)
    manifest_path = out_dir / "manifest.json"
    digest = sha256_of(checkpoint_path) if Path(checkpoint_path).is_file() else str(checkpoint_path)
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot read {manifest_path} ({error}); delete it (finished outputs are then redone) "
            "or choose another --experiment_name"
        ) from error
    previous = manifest.get("checkpoint_sha256")
    if manifest and previous != digest and not overwrite:
        raise DataError(
            f"{out_dir} holds outputs of another checkpoint (sha256 {str(previous)[:12]}...); "
            "pass --overwrite to replace them or choose another --experiment_name"
        )
    records: dict[str, dict] = manifest.get("outputs", {})
    targets = [(src, out_dir / dataset / f"{src.stem}.png") for dataset, src in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in targets:
        if dst in seen:
            raise DataError(f"{src} and {seen[dst]} would both be written to {dst}; rename one of them")
        seen[dst] = src
    key = lambda dst: dst.relative_to(out_dir).as_posix()  # noqa: E731
    source = lambda src: str(src.resolve())  # noqa: E731
    done_record = lambda src: {"source": source(src), "checkpoint_sha256": digest}  # noqa: E731
    if not overwrite:
        clashes = [
            f"{dst} (made from {records[key(dst)]['source']}; this run: {source(src)})"
            for src, dst in targets
            if dst.is_file() and records.get(key(dst), {}).get("source", source(src)) != source(src)
        ]
        if clashes:
            raise DataError(
                f"{len(clashes)} output(s) in {out_dir} were made from other files of the same name: "
                + "; ".join(clashes[:3])
                + (f" (+{len(clashes) - 3} more)" if len(clashes) > 3 else "")
                + "; pass --overwrite to replace them or choose another --experiment_name"
            )

    def write_manifest() -> None:
        document = {"checkpoint_path": str(checkpoint_path), "checkpoint_sha256": digest, "outputs": records}
        atomic_write_text(manifest_path, json.dumps(document, indent=2, ensure_ascii=False))

    write_manifest()
    todo = []
    for src, dst in targets:
        if not overwrite and dst.is_file() and records.get(key(dst)) == done_record(src):
            summary.skipped.append(dst)
        else:
            records.pop(key(dst), None)  # recorded again once rewritten, or gone if this image fails
            todo.append((src, dst))
    last_flush = time.monotonic()
    writing: tuple[Path, Path, Future] | None = None  # the one output being encoded and written

    def failed(src: Path, dst: Path, error: Exception) -> None:
        if not _is_per_image_failure(error):
            raise error
        log.error("failed: %s: %s", src, error)
        summary.failed.append((src, str(error)))
        dst.unlink(missing_ok=True)  # with --overwrite: no stale output of an earlier run remains

    def finished(src: Path, dst: Path) -> None:
        records[key(dst)] = done_record(src)
        summary.enhanced.append(dst)

    def written() -> None:
        """Wait for the output under way; record it once its file is complete."""
        nonlocal writing, last_flush
        if writing is None:
            return
        src, dst, future = writing
        try:
            future.result()
        except Exception as error:
            writing = None
            failed(src, dst, error)
            return
        writing = None
        finished(src, dst)
        if time.monotonic() - last_flush >= MANIFEST_FLUSH_S:
            write_manifest()
            last_flush = time.monotonic()

    # The next image is decoded ahead and the last output encoded and written behind the model, one
    # thread each (decoders and zlib release the GIL); on a GPU the PNG work dominates otherwise. Both
    # threads hold 8-bit arrays only (a 4K image: 25 MB each), not float tensors.
    reader = ThreadPoolExecutor(1, thread_name_prefix="infer-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="infer-write")
    progress = tqdm(
        total=len(targets), initial=len(summary.skipped), desc="infer", unit="img", dynamic_ncols=True
    )
    try:
        upcoming = reader.submit(decode_image_array, todo[0][0]) if todo else None
        for i, (src, dst) in enumerate(todo):
            read = upcoming
            upcoming = reader.submit(decode_image_array, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                pred, info = enhance_one(enhance, to_unit_float(read.result()).unsqueeze(0), tiles)
                if info.get("retries"):
                    log.info("%s: enhanced in %d px tiles after running out of memory", src, info["tile"])
                image = to_uint8(pred)
                del pred
            except Exception as error:
                failed(src, dst, error)
                continue
            finally:
                progress.update()
            written()
            writing = (src, dst, writer.submit(save_png_atomic, dst, image))
        written()
    finally:  # also on Ctrl-C: the output under way is finished, and what finished is recorded
        reader.shutdown(cancel_futures=True)
        writer.shutdown()
        progress.close()
        if writing is not None and writing[2].exception() is None:
            finished(*writing[:2])
        try:
            write_manifest()
        except OSError as error:  # e.g. a full disk; must not hide the error that stopped the loop
            log.warning(
                "could not record the finished outputs in %s (%s); a re-run redoes them", manifest_path, error
            )
    return summary


def _is_per_image_failure(error: Exception) -> bool:
    """Errors that concern one image and let the others go on: a bad file (DataError), a failed
    write (OSError: full disk, permissions) or out of memory even in the smallest tiles. Anything
    else (a bug) stops the loop."""
    return isinstance(error, DataError | OSError) or is_out_of_memory(error)
