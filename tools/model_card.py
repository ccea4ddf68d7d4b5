"""The numbers and the picture of a model card: checkpoints against the dark input and two classical
enhancers, on held-out synthetic pairs, the real LOL pair and real unpaired dark photos.

::

    python -m tools.model_card --models '[starter=checkpoints/starter.ckpt, sample=runs/.../best.ckpt]'

- **Held-out synthetic pairs**: scikit-image photos that neither the starter model nor the shipped
  sample trains on (:data:`HELD_OUT`), darkened in each of ``--regimes`` from ``(seed, regime/name)``:
  PSNR, SSIM and GT-mean PSNR (the output scaled to the reference's mean first).
- **Real pair**: LOL-v1 778 (``--lol_dir``), the same three scores.
- **Real unpaired photos**: NIQE and BRISQUE (LIVE's parameters in ``assets/iqa``; lower is better)
  over DICM and LIME (``--unpaired``).
- **Classical enhancers that need no training**, scored the same way: ``gamma`` (every channel
  ``x ** (1 / 2.2)``) and ``clahe`` (OpenCV CLAHE on the L channel of CIELAB, clip limit 2.0, 8x8 tiles).
- **A picture** (``--grid``): real dark photos, one row each, the input beside each method's output, as
  one JPEG (``--grid_width`` px per image).

Every image is enhanced whole (``Enhance``: the tiling bench.py and infer.py use for large images).
Prints Markdown tables and writes them with the per-image scores as JSON, atomically.
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from tools import publish
from utils.utils import atomic_write_bytes, parse_hparams

HELD_OUT = ("chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field")
"""scikit-image photos outside the sample's training split (astronaut, coffee, retina) and outside
the starter model's photo folders."""
CLASSICAL = ("gamma", "clahe")


@dataclass
class ModelCardHparams:
    """Scores and a before/after grid for checkpoints, the dark input and classical enhancers."""

    models: list[str] = field(default_factory=list)
    """``label=checkpoint`` entries (a bare path is labelled by its file name)."""
    regimes: list[str] = field(default_factory=lambda: ["camera", "lol", "extreme"])
    """Degradations of the held-out synthetic pairs (data.synthesize.REGIMES)."""
    max_side: int = 512
    """Held-out photos are shrunk so their long side is at most this."""
    seed: int = 0
    """Seed of the held-out degradations."""
    lol_dir: str = "../shared/datasets/LOLv1-eval15-partial"
    """A paired folder (low/, high/) of real pairs; skipped when missing."""
    unpaired: list[str] = field(
        default_factory=lambda: ["../shared/datasets/DICM/low", "../shared/datasets/LIME/low"]
    )
    """Folders of real low-light photos for NIQE/BRISQUE; missing ones are skipped."""
    unpaired_max_side: int = 1024
    """Real photos are shrunk to this long side first (NIQE/BRISQUE are scale-dependent, the
    enhancers are not needed at full size for them)."""
    grid: str | None = "docs/images/before_after.jpg"
    """JPEG of real dark photos before and after (null: none)."""
    grid_photos: list[str] = field(
        default_factory=lambda: [
            "../shared/datasets/DICM/low/01.jpg",
            "../shared/datasets/DICM/low/22.jpg",
            "../shared/datasets/DICM/low/34.jpg",
            "../shared/datasets/LIME/low/9.bmp",
            "../shared/datasets/LIME/low/3.bmp",
            "../shared/datasets/LOLv1-eval15-partial/low/778.png",
        ]
    )
    """Photos in the grid, one row each (missing ones are skipped)."""
    grid_width: int = 240
    """Width of every image in the grid, in pixels."""
    output: str = "runs/model_card/model_card.json"
    """JSON results (written atomically)."""

    def __post_init__(self) -> None:
        from data.synthesize import REGIMES

        wrong = sorted(set(self.regimes) - set(REGIMES))
        if wrong:
            raise ValueError(f"regimes must be names of [{', '.join(REGIMES)}], got {wrong}")
        labels = [parse_entry(entry)[0] for entry in self.models]
        if len(set(labels)) != len(labels) or set(labels) & {"dark input", *CLASSICAL}:
            raise ValueError(f"model labels must be distinct and not 'dark input', gamma or clahe: {labels}")


def parse_entry(entry: str) -> tuple[str, str]:
    """``label=path`` (or a bare path, labelled by its file stem) -> ``(label, path)``."""
    label, sep, path = entry.partition("=")
    return (label.strip(), path.strip()) if sep else (Path(entry).stem, entry)


# ------------------------------------------------------------------------------------- enhancers
def gamma(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> every channel ``x ** (1 / 2.2)`` (x in [0, 1]), uint8."""
    return np.round(255.0 * (image / 255.0) ** (1 / 2.2)).astype(np.uint8)


def clahe(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> OpenCV CLAHE (clip limit 2.0, 8x8 tiles) on the L channel of CIELAB."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def methods(hp: ModelCardHparams) -> dict:
    """Label -> function ``(H, W, 3) uint8 -> (H, W, 3) uint8``: the dark input, the classical
    enhancers and every checkpoint (fp32, on the CPU, whole images)."""
    from engine.enhance import Enhance
    from model.model import load_checkpoint
    from utils.metrics import quantize_8bit

    def network(path: str):
        enhance = Enhance(load_checkpoint(path).model, torch.device("cpu"))

        @torch.no_grad()
        def run(image: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
            out = quantize_8bit(enhance(x))[0].permute(1, 2, 0)  # (H, W, 3) in [0, 1]
            return np.round(out.numpy() * 255.0).astype(np.uint8)

        return run

    found = {"dark input": lambda image: image, "gamma": gamma, "clahe": clahe}
    for entry in hp.models:
        label, path = parse_entry(entry)
        found[label] = network(path)
    return found


# ------------------------------------------------------------------------------------------ data
def _load8(path: str | Path, max_side: int | None = None) -> np.ndarray:
    from data.synthesize import to_srgb8
    from data.utils import load_image

    return to_srgb8(load_image(path).permute(1, 2, 0).numpy(), max_side)


def held_out_pairs(hp: ModelCardHparams) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(regime/photo, low, high)`` uint8 pairs."""
    import skimage.data

    from data.synthesize import REGIMES, image_rng, synthesize_low, to_srgb8

    pairs = []
    for name in HELD_OUT:
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: the left view
        high = to_srgb8(photo / 255.0, hp.max_side)
        for regime in hp.regimes:
            low = synthesize_low(high / 255.0, image_rng(hp.seed, f"{regime}/{name}"), REGIMES[regime])
            pairs.append((f"{regime}/{name}", low, high))
    return pairs


def real_pairs(folder: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, low, high)`` of a sub-dataset folder's ``low/`` and ``high/`` images of one stem."""
    from data.utils import list_images

    root = Path(folder)
    if not (root / "low").is_dir() or not (root / "high").is_dir():
        return []
    highs = {p.stem: p for p in list_images(root / "high")}
    return [(p.name, _load8(p), _load8(highs[p.stem])) for p in list_images(root / "low") if p.stem in highs]


def unpaired(folders: list[str], max_side: int) -> list[tuple[str, np.ndarray]]:
    from data.utils import list_images

    images = []
    for folder in folders:
        if Path(folder).is_dir():
            name = Path(folder).parent.name if Path(folder).name == "low" else Path(folder).name
            images += [(f"{name}/{p.name}", _load8(p, max_side)) for p in list_images(folder)]
    return images


# --------------------------------------------------------------------------------------- scoring
def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def full_reference(enhancers: dict, pairs: list) -> dict:
    """Per method: mean PSNR, SSIM and GT-mean PSNR over ``pairs``, and the per-image scores."""
    from utils.metrics import gt_mean_rescale, psnr, quantize_8bit, ssim

    results = {}
    for label, enhance in enhancers.items():
        per_image = {}
        for name, low, high in pairs:
            out, ref = _tensor(enhance(low)), _tensor(high)
            rescaled = quantize_8bit(gt_mean_rescale(out, ref))
            per_image[name] = {
                "psnr": float(psnr(out, ref)),
                "ssim": float(ssim(out, ref)),
                "psnr_gtmean": float(psnr(rescaled, ref)),
            }
        keys = ("psnr", "ssim", "psnr_gtmean")
        results[label] = {k: float(np.mean([v[k] for v in per_image.values()])) for k in keys}
        results[label]["per_image"] = per_image
    return results


def no_reference(enhancers: dict, images: list) -> dict:
    """Per method and source folder: mean NIQE and BRISQUE (lower is better) and the per-image scores."""
    from utils.metrics import BenchScorer

    scorer = BenchScorer(["NIQE", "BRISQUE"], gt_mean=False)
    results = {}
    for label, enhance in enhancers.items():
        per_image = {name: scorer.score(_tensor(enhance(image))) for name, image in images}
        by_set: dict[str, dict] = {}
        for source in sorted({name.split("/")[0] for name in per_image}):
            rows = [v for name, v in per_image.items() if name.split("/")[0] == source]
            by_set[source] = {
                metric: float(np.mean([r[metric] for r in rows if r[metric] is not None]))
                for metric in ("NIQE", "BRISQUE")
            } | {"images": len(rows)}
        results[label] = {"sets": by_set, "per_image": per_image}
    return results


def grid(enhancers: dict, photos: list[str], width: int) -> Image.Image | None:
    """One row per photo: the input, then every other method's output, each ``width`` px wide."""
    rows = []
    for path in photos:
        if not Path(path).is_file():
            continue
        image = _load8(path)
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        rows.append(np.concatenate([enhance(small) for enhance in enhancers.values()], axis=1))
    if not rows:
        return None
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return Image.fromarray(np.concatenate([x for row in rows for x in (row, gap)][:-1], axis=0))


def markdown(results: dict) -> str:
    lines = []
    for title, key in (("Held-out synthetic pairs", "held_out"), ("Real pair (LOL-v1 778)", "real_pair")):
        if not results[key]:
            continue
        lines += [f"{title}:", "", "| method | PSNR (dB) | SSIM | GT-mean PSNR (dB) |", "|---|---|---|---|"]
        lines += [
            f"| {label} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_gtmean']:.2f} |"
            for label, r in results[key].items()
        ]
        lines.append("")
    if results["unpaired"]:
        sets = list(next(iter(results["unpaired"].values()))["sets"])
        head = " | ".join(f"{s} NIQE | {s} BRISQUE" for s in sets)
        lines += [
            "Real dark photos (lower is better):",
            "",
            f"| method | {head} |",
            "|---" * (1 + 2 * len(sets)) + "|",
        ]
        for label, r in results["unpaired"].items():
            cells = " | ".join(f"{r['sets'][s]['NIQE']:.2f} | {r['sets'][s]['BRISQUE']:.2f}" for s in sets)
            lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def get_hparams() -> ModelCardHparams:
    return ModelCardHparams()


def main(hp: ModelCardHparams) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    enhancers = methods(hp)
    results = {
        "settings": asdict(hp),
        "held_out": full_reference(enhancers, held_out_pairs(hp)),
        "real_pair": full_reference(enhancers, real_pairs(hp.lol_dir)),
        "unpaired": no_reference(enhancers, unpaired(hp.unpaired, hp.unpaired_max_side)),
    }
    if hp.grid:
        picture = grid(enhancers, hp.grid_photos, hp.grid_width)
        if picture is not None:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=85)
            atomic_write_bytes(Path(hp.grid), buffer.getvalue())
            results["grid"] = {"path": hp.grid, "columns": list(enhancers)}
    publish(results, markdown(results), hp.output)
    return results


if __name__ == "__main__":
    main(parse_hparams(type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:]))
