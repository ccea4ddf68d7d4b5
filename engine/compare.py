"""Comparison tables: several methods scored under one protocol on one bench split.

A method is a checkpoint (enhanced here, as ``bench.py`` does) or a folder of images another method
already produced (``FOLDER/<sub-dataset>/<stem>.*``, or ``FOLDER/<stem>.*`` when the split has one
sub-dataset), matched to the split's images by file stem. Folder outputs are scored as they are
stored: the decoded file (8-bit as is, 16-bit scaled by 65535), then, like every output, clamped and
rounded to 8 bits. Nothing is resized or cropped: every problem of every folder (a missing output, an
unreadable file, another size than the reference) is reported at once before anything is scored.

Results: one table per sub-dataset and one over all images, one row per method (the best value of a
column in bold); paired differences of PSNR and SSIM against the first method (mean per-image
difference, its 95 % interval, Student's t over the images, and on how many images the method is
better); written as Markdown, CSV, JSON and a LaTeX ``booktabs`` tabular.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from data.utils import DataError, DecodedImages, ImagePair, decode_image_array, list_images, to_unit_float
from utils.metrics import GT_MEAN_COLUMNS, LOWER_IS_BETTER, PROTOCOL_SUMMARY, BenchScorer
from utils.utils import atomic_write_text, log, sha256_of

PAIRED = ("PSNR", "SSIM")
"""Scores whose per-image differences against the first method are reported."""
ALL = "all"
"""Name of the table over every image of every sub-dataset."""


@dataclass(frozen=True)
class Method:
    label: str
    path: Path
    kind: Literal["checkpoint", "folder"]


def parse_methods(entries: list[str]) -> list[Method]:
    """``label=path`` entries (a bare path is labelled by its file stem or folder name) -> methods.

    A label must be non-empty, unique, and hold no comma or ``=``; a path must exist (a folder is a
    folder of outputs, a file a checkpoint). Every problem is reported at once."""
    methods, problems = [], []
    for entry in entries:
        label, sep, path = (part.strip() for part in entry.partition("="))
        if not sep:
            label, path = Path(entry.strip()).stem or Path(entry.strip()).name, entry.strip()
        where = Path(path)
        if not label or "," in label or "=" in label or "=" in path:
            problems.append(
                f"method label {label!r} (in {entry!r}): a label is not empty and holds no ',' or '='"
            )
            continue
        if not where.exists():
            problems.append(
                f"method {label}: {where} does not exist (a checkpoint file or a folder of outputs)"
            )
            continue
        methods.append(Method(label, where, "folder" if where.is_dir() else "checkpoint"))
    labels = [m.label for m in methods]
    problems += [
        f"method label {label!r} is given twice"
        for label in sorted({x for x in labels if labels.count(x) > 1})
    ]
    if problems:
        raise DataError("--methods: " + "; ".join(problems))
    if not methods:
        raise DataError("--methods: give at least one method")
    return methods


# ------------------------------------------------------------------------------- folder outputs
@dataclass
class FolderOutputs:
    """A folder method's output file for every ``(sub-dataset, image)`` and what it holds."""

    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    """How many files of each kind (``8-bit PNG``, ``16-bit PNG``, ``JPEG`` ...) the folder holds."""
    extra: list[Path] = field(default_factory=list)


def _kind(path: Path, array: np.ndarray) -> str:
    suffix = path.suffix.lower().lstrip(".")
    name = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(suffix, suffix.upper())
    return f"{8 if array.dtype == np.uint8 else 16}-bit {name}"


def check_folders(
    methods: list[Method],
    pairs: dict[str, list[ImagePair]],
    references: dict[Path, tuple[int, int]],
    keep: DecodedImages | None = None,
) -> dict[str, FolderOutputs]:
    """Match every folder method's files to the split's images and check them (decoded, same size as
    the reference: ``high`` where there is one, else ``low``); raise one :class:`DataError` with every
    problem, naming the method and the file. Files that match no image are a warning. Each checked
    output is offered to ``keep``, so scoring need not decode it again while the budget holds."""
    found, problems = {}, []
    for method in (m for m in methods if m.kind == "folder"):
        outputs = FolderOutputs()
        for dataset, group in pairs.items():
            folder = method.path / dataset
            if not folder.is_dir():
                if len(pairs) == 1:
                    folder = method.path
                else:
                    problems.append(f"{method.label}: no folder {folder} for sub-dataset {dataset}")
                    continue
            by_stem: dict[str, list[Path]] = {}
            for path in list_images(folder):
                by_stem.setdefault(path.stem, []).append(path)
            wanted = {Path(pair.name).stem: pair for pair in group}
            outputs.extra += [p for stem, paths in by_stem.items() if stem not in wanted for p in paths]
            for stem, pair in wanted.items():
                paths = by_stem.get(stem, [])
                if len(paths) != 1:
                    what = (
                        "missing output"
                        if not paths
                        else f"{len(paths)} outputs ({', '.join(p.name for p in paths)})"
                    )
                    problems.append(
                        f"{method.label}: {what} for {dataset}/{pair.name} in {folder} (stem {stem!r})"
                    )
                    continue
                try:
                    array = decode_image_array(paths[0])
                except DataError as error:
                    problems.append(f"{method.label}: unreadable output: {error}")
                    continue
                height, width = array.shape[:2]
                ref = pair.high if pair.high is not None else pair.low
                ref_h, ref_w = references[ref]
                if (height, width) != (ref_h, ref_w):
                    problems.append(
                        f"{method.label}: {paths[0]} is {width} x {height} but its reference {ref} is "
                        f"{ref_w} x {ref_h} (W x H); outputs are never resized or cropped"
                    )
                    continue
                outputs.files[(dataset, pair.name)] = paths[0]
                if keep is not None:
                    keep.offer(paths[0], array)
                kind = _kind(paths[0], array)
                outputs.kinds[kind] = outputs.kinds.get(kind, 0) + 1
        if outputs.extra:
            log.warning(
                "%s: %d file(s) match no bench image and are not scored: %s",
                method.label,
                len(outputs.extra),
                ", ".join(str(p) for p in outputs.extra[:10]) + (" ..." if len(outputs.extra) > 10 else ""),
            )
        found[method.label] = outputs
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) with the method folders:\n  - " + "\n  - ".join(problems)
        )
    return found


def folder_source(path: Path, files: list[Path]) -> dict:
    """A folder method's provenance: the folder and the sha256 of each scored file (and of their list)."""
    digests = {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}
    combined = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    return {"kind": "folder", "path": str(path), "sha256": combined, "files": digests}


# --------------------------------------------------------------------------------------- scoring
def score_methods(
    methods: list[Method],
    enhancers: dict[str, callable],
    folders: dict[str, FolderOutputs],
    pairs: dict[str, list[ImagePair]],
    scorer: BenchScorer,
    image,
    keep=None,
) -> list[dict]:
    """One row per method and image: ``{method, dataset, image, **scores}``. ``enhancers`` maps a
    checkpoint method's label to ``(1, 3, H, W) -> (1, 3, H, W)``; ``image(path)`` loads a split image
    or a folder method's output as ``(1, 3, H, W)`` in [0, 1]; ``keep(label, dataset, pair, low,
    output, high)`` sees every output (the report's thumbnails)."""
    rows = []
    for dataset, group in pairs.items():
        for pair in group:
            low = image(pair.low)
            high = image(pair.high) if pair.high is not None else None
            for method in methods:
                if method.kind == "checkpoint":
                    output = enhancers[method.label](low)
                else:
                    output = image(folders[method.label].files[(dataset, pair.name)])
                rows.append(
                    {
                        "method": method.label,
                        "dataset": dataset,
                        "image": pair.name,
                        **scorer.score(output, high),
                    }
                )
                if keep is not None:
                    keep(method.label, dataset, pair, low, output, high)
    return rows


def _mean(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else None


def paired_difference(diffs: list[float]) -> dict:
    """Mean, 95 % interval (Student's t over the images) and count of positive per-image differences."""
    from scipy import stats

    n = len(diffs)
    mean = float(np.mean(diffs)) if n else None
    if n < 2:
        return {"images": n, "mean": mean, "ci95": None, "better": sum(d > 0 for d in diffs)}
    half = float(stats.t.ppf(0.975, n - 1)) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return {
        "images": n,
        "mean": mean,
        "ci95": [mean - half, mean + half],
        "better": sum(d > 0 for d in diffs),
    }


def summarise(rows: list[dict], methods: list[Method], datasets: list[str], columns: list[str]) -> dict:
    """Per table (each sub-dataset, then ``all``) and method: means and image counts; and the paired
    differences of :data:`PAIRED` against the first method."""
    tables: dict = {}
    first = methods[0].label
    for table in [*datasets, ALL]:
        own = [r for r in rows if table == ALL or r["dataset"] == table]
        entry = {"means": {}, "images": {}, "scored": {}, "paired": {}}
        for method in methods:
            mine = [r for r in own if r["method"] == method.label]
            entry["means"][method.label] = {c: _mean([r[c] for r in mine]) for c in columns}
            entry["images"][method.label] = len(mine)
            entry["scored"][method.label] = {
                c: sum(r[c] is not None and math.isfinite(r[c]) for r in mine) for c in columns
            }
        base = {(r["dataset"], r["image"]): r for r in own if r["method"] == first}
        for method in methods[1:]:
            entry["paired"][method.label] = {}
            for score in (s for s in PAIRED if s in columns):
                diffs = [
                    r[score] - base[(r["dataset"], r["image"])][score]
                    for r in own
                    if r["method"] == method.label
                    and r[score] is not None
                    and base[(r["dataset"], r["image"])][score] is not None
                ]
                entry["paired"][method.label][score] = paired_difference(diffs)
        tables[table] = entry
    return tables


def best(means: dict[str, dict], column: str) -> float | None:
    """The best mean of a column over the methods (lowest for LPIPS, NIQE, BRISQUE)."""
    values = [m[column] for m in means.values() if m[column] is not None]
    if not values:
        return None
    lower = column in LOWER_IS_BETTER
    return min(values) if lower else max(values)


def _cell(value: float | None, top: float | None, bold: tuple[str, str]) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return f"{bold[0]}{text}{bold[1]}" if top is not None and value == top else text


def markdown(tables: dict, columns: list[str], protocol: str) -> str:
    out = [f"Protocol: {PROTOCOL_SUMMARY}", protocol, ""]
    for table, entry in tables.items():
        title = "All sub-datasets" if table == ALL else table
        out += [f"**{title}**", "", "| method | images | " + " | ".join(columns) + " |"]
        out.append("|---|---|" + "---|" * len(columns))
        tops = {c: best(entry["means"], c) for c in columns}
        for label, means in entry["means"].items():
            images, scored = entry["images"][label], entry["scored"][label]
            cells = [
                _cell(means[c], tops[c], ("**", "**"))
                + (f" ({scored[c]}/{images})" if means[c] is not None and scored[c] < images else "")
                for c in columns
            ]
            out.append(f"| {label} | {images} | " + " | ".join(cells) + " |")
        if entry["paired"]:
            first = next(iter(entry["means"]))
            out += ["", f"Paired per-image differences against {first} (95 % interval; images better):", ""]
            for label, scores in entry["paired"].items():
                parts = []
                for score, d in scores.items():
                    if d["mean"] is None:
                        continue
                    ci = "" if d["ci95"] is None else f" ({d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f})"
                    parts.append(f"{score} {d['mean']:+.4f}{ci}, better on {d['better']}/{d['images']}")
                out.append(f"- {label}: " + ("; ".join(parts) or "no full-reference scores (no high/)"))
        out.append("")
    return "\n".join(out)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(tables: dict, columns: list[str]) -> str:
    """A ``booktabs`` tabular: one block of rows per table (sub-datasets, then all), best in bold."""
    header = " & ".join(["Method", "Dataset", *(latex_escape(c) for c in columns)])
    lines = [
        "% needs \\usepackage{booktabs}",
        "\\begin{tabular}{ll" + "r" * len(columns) + "}",
        "\\toprule",
        header + " \\\\",
        "\\midrule",
    ]
    for i, (table, entry) in enumerate(tables.items()):
        if i:
            lines.append("\\midrule")
        tops = {c: best(entry["means"], c) for c in columns}
        for label, means in entry["means"].items():
            cells = [_cell(means[c], tops[c], ("\\textbf{", "}")) for c in columns]
            name = "All" if table == ALL else table
            lines.append(" & ".join([latex_escape(label), latex_escape(name), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def write_tables(out_dir: Path, rows: list[dict], tables: dict, columns: list[str], summary: dict) -> str:
    """bench.csv (per image, with a ``method`` column), table.csv (means), bench.json, table.tex and
    table.md, all atomically; returns the Markdown."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "dataset", "image", *columns])
    for r in rows:
        writer.writerow(
            [r["method"], r["dataset"], r["image"], *("" if r[c] is None else f"{r[c]:.6f}" for c in columns)]
        )
    atomic_write_text(out_dir / "bench.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "dataset", "images", *columns])
    for table, entry in tables.items():
        for label, means in entry["means"].items():
            values = ("" if means[c] is None else f"{means[c]:.6f}" for c in columns)
            writer.writerow([label, table, entry["images"][label], *values])
    atomic_write_text(out_dir / "table.csv", buffer.getvalue())
    text = markdown(tables, columns, summary["protocol_line"])
    atomic_write_text(out_dir / "table.md", text)
    atomic_write_text(out_dir / "table.tex", latex(tables, columns))
    atomic_write_text(out_dir / "bench.json", json.dumps(summary | {"tables": tables}, indent=2))
    return text


def protocol_line(methods: list[Method], folders: dict[str, FolderOutputs]) -> str:
    """What was scored for each method, e.g. ``ours: checkpoint outputs; SCI: folder of 15 8-bit PNG``."""
    parts = []
    for m in methods:
        if m.kind == "checkpoint":
            parts.append(f"{m.label}: checkpoint, enhanced here")
        else:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(folders[m.label].kinds.items()))
            parts.append(
                f"{m.label}: folder of {kinds} (16-bit scaled by 65535)"
                if "16-bit" in kinds
                else f"{m.label}: folder of {kinds}"
            )
    return "Scored: " + "; ".join(parts) + "."


def gt_columns(metrics: list[str]) -> list[str]:
    return [GT_MEAN_COLUMNS[m] for m in metrics if m in GT_MEAN_COLUMNS]


def load_split_image(decoded: DecodedImages):
    """``image(path)``: a split image or a folder method's output as ``(1, 3, H, W)`` in [0, 1], from
    ``decoded`` when kept there; scoring uses each once, so it is released from there."""
    from data.utils import load_image

    def image(path: Path) -> torch.Tensor:
        array = decoded.pop(path, None)
        return (load_image(path) if array is None else to_unit_float(array)).unsqueeze(0)

    return image


@dataclass
class CompareResult:
    rows: list[dict]
    summary: dict
    tables: str
    out_dir: Path


def run_compare(
    methods: list[Method],
    bench_data_path: str,
    out_dir: Path,
    metrics: list[str],
    strict: bool,
    tiles,
    device: torch.device,
    self_ensemble: bool = False,
    precision: str = "32-true",
    cache_gb: float = 4.0,
    report: bool = False,
) -> CompareResult:
    """Score every method on every image of ``bench_data_path`` (see the module docstring); with
    ``report`` also write ``report.html`` and its thumbnails (:mod:`engine.report`)."""
    from data.utils import validate_split
    from engine.enhance import Enhance, enhance_one
    from model.model import load_checkpoint

    decoded = DecodedImages(cache_gb)
    pairs = validate_split(bench_data_path, require_high=False, keep=decoded)
    references = {}
    for group in pairs.values():
        for pair in group:
            for path in (pair.low, pair.high):
                if path is not None and path not in references:
                    array = decoded.get(path)
                    references[path] = (array if array is not None else decode_image_array(path)).shape[:2]
    folders = check_folders(methods, pairs, references, keep=decoded)
    enhancers, sources = {}, {}
    for method in methods:
        if method.kind == "checkpoint":
            enhance = Enhance(load_checkpoint(method.path).model, device, self_ensemble, precision)
            enhancers[method.label] = lambda x, enhance=enhance: enhance_one(enhance, x, tiles)[0]
            sources[method.label] = {
                "kind": "checkpoint",
                "path": str(method.path),
                "sha256": sha256_of(method.path),
            }
        else:
            sources[method.label] = folder_source(method.path, list(folders[method.label].files.values()))
    scorer = BenchScorer(metrics, device=device, strict=strict)
    columns = scorer.columns
    keep = None
    if report:
        from engine.report import ReportImages

        keep = ReportImages(out_dir)
    rows = score_methods(methods, enhancers, folders, pairs, scorer, load_split_image(decoded), keep)
    tables = summarise(rows, methods, list(pairs), columns)
    summary = {
        "bench_data_path": str(bench_data_path),
        "methods": [{"label": m.label, **sources[m.label]} for m in methods],
        "protocol_line": protocol_line(methods, folders),
        "columns": columns,
    }
    text = write_tables(out_dir, rows, tables, columns, summary)
    if report:
        from engine.report import write_report

        write_report(out_dir, summary, tables, rows, keep, columns)
    return CompareResult(rows, summary, text, out_dir)
