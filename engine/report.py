"""``report.html``: a comparison to look at, beside ``bench.py --methods``'s tables.

The page shows the summary tables, then one row per image: the low input, every method's output and
the reference as thumbnails (small JPEGs in ``report/thumbs/`` that open the full image), a
before/after slider between any two of them, and the image's scores. Rows sort by any score of any
method or by the difference of one score between two methods. It needs no network and opens from the
file system; every name (files, sub-datasets, methods) reaches the page as data and is shown as text
(``textContent``), so a file called ``<img src=x onerror=alert(1)>.png`` is displayed, never run.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from data.utils import ImagePair, save_png_atomic
from utils.utils import atomic_write_bytes, atomic_write_text

THUMB_SIDE = 256
"""Long side of a thumbnail, in pixels."""


def _uint8(image: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [0, 1] (any range: clamped) -> ``(H, W, 3)`` uint8, rounded like the scores."""
    return (image[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()).copy()


class ReportImages:
    """Collects, while the bench scores, the thumbnails (and the full images a checkpoint produced)
    that ``report.html`` shows; files are named by number, never by the images' own names."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows: dict[tuple[str, str], dict] = {}

    def _thumb(self, image: np.ndarray, name: str) -> str:
        import io

        from PIL import Image

        picture = Image.fromarray(image)
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        path = self.out_dir / "report" / "thumbs" / name
        atomic_write_bytes(path, buffer.getvalue())
        return path.relative_to(self.out_dir).as_posix()

    def _link(self, path: Path) -> str:
        """A relative URL from the report to ``path`` (each name percent-encoded: '#', '?', '%')."""
        return quote(Path(os.path.relpath(Path(path).resolve(), self.out_dir.resolve())).as_posix())

    def __call__(self, label: str, dataset: str, pair: ImagePair, low, output, high) -> None:
        key = (dataset, pair.name)
        row = self.rows.get(key)
        number = len(self.rows) if row is None else row["number"]
        if row is None:
            row = {"number": number, "dataset": dataset, "image": pair.name, "images": {}}
            row["images"]["low"] = {
                "thumb": self._thumb(_uint8(low), f"{number}_low.jpg"),
                "full": self._link(pair.low),
            }
            if high is not None:
                thumb = self._thumb(_uint8(high), f"{number}_high.jpg")
                row["images"]["reference"] = {"thumb": thumb, "full": self._link(pair.high)}
            self.rows[key] = row
        index = len(row["images"])
        full = self.out_dir / "report" / "full" / f"{number}_{index}.png"
        save_png_atomic(full, _uint8(output))
        thumb = self._thumb(_uint8(output), f"{number}_{index}.jpg")
        row["images"][label] = {"thumb": thumb, "full": full.relative_to(self.out_dir).as_posix()}


def _script_json(data: object) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can end it early."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE = (Path(__file__).with_name("report_template.html")).read_text(encoding="utf-8")
"""The page: a template with the summary tables (``__TABLES__``) and the data (``__DATA__``) to fill in."""


def _tables_html(tables: dict, columns: list[str]) -> str:
    from engine.compare import ALL, best

    parts = []
    for table, entry in tables.items():
        title = "All sub-datasets" if table == ALL else table
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", "images", *columns])
        body = []
        tops = {c: best(entry["means"], c) for c in columns}
        for label, means in entry["means"].items():
            cells = []
            for c in columns:
                v = means[c]
                text = "n/a" if v is None else f"{v:.4f}"
                cells.append(
                    f"<td><b>{text}</b></td>" if v is not None and v == tops[c] else f"<td>{text}</td>"
                )
            body.append(
                f"<tr><td>{html.escape(label)}</td><td>{entry['images'][label]}</td>{''.join(cells)}</tr>"
            )
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)


def write_report(
    out_dir: Path, summary: dict, tables: dict, rows: list[dict], images: ReportImages, columns
) -> Path:
    """Write ``out_dir/report.html`` (atomically) from the scored rows and the collected images."""
    by_image: dict[tuple[str, str], dict] = {}
    for r in rows:
        by_image.setdefault((r["dataset"], r["image"]), {})[r["method"]] = {c: r[c] for c in columns}
    data = {
        "protocol": summary["protocol_line"],
        "methods": [m["label"] for m in summary["methods"]],
        "columns": list(columns),
        "rows": [
            {
                "number": row["number"],
                "dataset": row["dataset"],
                "image": row["image"],
                "images": row["images"],
                "scores": by_image.get(key, {}),
            }  # fmt: skip
            for key, row in images.rows.items()
        ],
    }
    page = PAGE.replace("__TABLES__", _tables_html(tables, list(columns))).replace(
        "__DATA__", _script_json(data)
    )
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
