"""The bench: enhance every image of a split (tiled when large), score it, and write the scores.

:func:`score_bench` returns a :class:`BenchResult` (one row per image and the summary);
:func:`write_bench` writes it as bench.csv, bench.json and TensorBoard text/scalars. What is scored
and how is one :class:`BenchSettings`, the same for ``bench.py`` and train.py's closing bench.

The loop runs on one device outside a Lightning Trainer on purpose: every image is scored exactly
once (no distributed sampler padding that would double-count images), and a bad file is reported
without stopping the others.
"""

import csv
import io
import json
import math
import platform
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.utils import DecodedImages, ImagePair, load_image, save_png_atomic, to_unit_float, validate_split
from engine.enhance import Enhance, enhance_one, is_per_image_failure, to_uint8
from utils.hparams import CacheHparams, TileHparams
from utils.metrics import PROTOCOL, PROTOCOL_SUMMARY, BenchScorer
from utils.utils import atomic_write_text, log, sha256_of


class BenchError(RuntimeError):
    """The bench could not score every image it was given."""


@dataclass(frozen=True)
class BenchSettings:
    """What one bench scores and how."""

    bench_data_path: str
    """Split of sub-datasets with low/ and (optionally) high/."""
    checkpoint_path: str
    """The checkpoint being scored: recorded (path and sha256) in bench.json."""
    metrics: list[str]
    """Metric names (:data:`utils.metrics.METRICS`)."""
    strict: bool = False
    """Fail instead of n/a when a metric cannot be computed."""
    tiles: TileHparams = field(default_factory=TileHparams)
    """How large images are split."""
    save_images: bool = False
    """Write a low | enhanced | high strip per image under ``<out_dir>/images``."""
    cache_gb: float = CacheHparams.cache_gb
    """Keep the arrays the start-up check decodes when the split takes at most this many GB."""


@dataclass
class BenchResult:
    """Every image's scores (``rows``: dataset, image and one value per column) and the summary
    that bench.json holds (means, counts, protocol, checkpoint, versions)."""

    rows: list[dict]
    summary: dict
    columns: list[str]

    @property
    def tables(self) -> str:
        """The summary as Markdown tables, one per sub-dataset."""
        return markdown_tables(self.summary, self.columns)


def run_bench(enhance: Enhance, settings: BenchSettings, out_dir: Path, logger=None) -> BenchResult:
    """:func:`score_bench`, then :func:`write_bench` into ``out_dir`` (and ``logger``)."""
    result = score_bench(enhance, settings, out_dir)
    write_bench(result, out_dir, logger)
    return result


def score_bench(enhance: Enhance, settings: BenchSettings, out_dir: Path) -> BenchResult:
    """Score every image of every sub-dataset under ``settings.bench_data_path``. Only the image
    strips of ``settings.save_images`` are written (under ``out_dir/images``, one by one).

    An image that cannot be read, enhanced (out of memory even in the smallest tiles) or saved is
    reported and the others go on; then :class:`BenchError` names every such image: a mean over
    fewer images than the sub-dataset holds is never returned.

    The start-up check decodes every file (in threads); when the split takes at most
    ``settings.cache_gb`` GB decoded, those arrays are what is enhanced and scored, so no file is
    decoded twice.
    """
    decoded = DecodedImages(settings.cache_gb)
    pairs = validate_split(settings.bench_data_path, require_high=False, keep=decoded)
    scorer = BenchScorer(settings.metrics, device=enhance.device, strict=settings.strict)
    columns = scorer.columns
    rows: list[dict] = []
    failed: list[str] = []
    strip_dir = out_dir / "images" if settings.save_images else None
    total = sum(len(v) for v in pairs.values())
    with tqdm(total=total, desc="bench", unit="img", dynamic_ncols=True) as bar:
        for dataset, group in pairs.items():
            for pair in group:
                try:
                    scores = _bench_one(enhance, scorer, pair, settings.tiles, strip_dir, decoded)
                except Exception as error:
                    if not is_per_image_failure(error):
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
    summary = _summarise(rows, pairs, columns, settings.checkpoint_path, settings.bench_data_path)
    return BenchResult(rows, summary, columns)


def write_bench(result: BenchResult, out_dir: Path, logger=None) -> None:
    """``out_dir/bench.csv`` (one row per image), ``out_dir/bench.json`` (the summary), each written
    atomically; with a TensorBoard ``logger`` (a ``SummaryWriter``) the tables as text and every
    mean as a scalar."""
    _write_csv(out_dir / "bench.csv", result.rows, result.columns)
    atomic_write_text(out_dir / "bench.json", json.dumps(result.summary, indent=2))
    if logger is not None:
        logger.add_text("bench/table", result.tables)
        for dataset, info in result.summary["datasets"].items():
            for key, value in info["means"].items():
                if value is not None:
                    logger.add_scalar(f"bench/{dataset}/{key}", value)


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


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
