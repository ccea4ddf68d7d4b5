"""Quality per training step: IllRecNet and the yardstick U-Net trained with one fixed recipe.

``python -m tools.quality`` trains both models from the same seed on the same stream of batches and
scores them on the same held-out pairs, once per seed of ``--seeds`` (scores are means over seeds):

- **Training data.** Normal-light photos under ``--train_dir`` (default: Kodak24 + McMaster),
  loaded once. Every sample is a random ``image_size`` crop with random horizontal/vertical flips,
  darkened on the fly by :func:`data.synthesize.synthesize_low` with random parameters (default
  :class:`~data.synthesize.SynthesisParams` ranges), so no two steps see the same noise.
- **Recipe.** L1 loss, AdamW (lr 2e-4, weight decay 1e-4, fused kernel), cosine decay to 0 over ``steps``,
  batch 4, fp32, ``threads`` CPU threads.
- **Held-out pairs.** Other photographs: scikit-image's astronaut, chelsea, coffee and rocket
  (public domain / CC0), each darkened twice by generators seeded from ``(seed, name#k)``, shrunk
  first so the long side is at most ``holdout_max_side``.
- **Scores.** RGB PSNR and SSIM (:mod:`utils.metrics`: pyiqa ``psnr`` / ``ssimc``) of the output
  clamped and rounded to 8 bits against the 8-bit reference, averaged over the held-out pairs; and,
  in its own column, PSNR after the GT-mean rescale (the output scaled by ``mean(target) /
  mean(output)``, means over RGB; bench.py's columns use the grey-level mean), which shows how
  much of the error is the global brightness: the exposure of a dark photo is ambiguous (a dark
  scene or an under-exposed one), for every model alike.

Prints a Markdown table (PSNR, SSIM, the final training L1, training time of each model, and the
identity baseline: the dark input itself), the gain over the yardstick per seed (with two seeds or
more also its standard error and 95 % interval, Student's t over the seeds), and writes JSON
atomically. The final training L1 (the last 50 steps, on the batches every model of a seed shares)
is the low-noise signal of how well a variant fits; the held-out PSNR of one run also carries the
luck of its initialisation in guessing the exposure of unseen photos (about 1 dB). The target:
IllRecNet >= 3.8 dB above the yardstick with a higher SSIM. The model flags (``--embed_dim`` ...)
change IllRecNet's configuration.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tools import check_device, publish
from utils.hparams import ModelHparams, check_all_groups, field_values
from utils.utils import parse_hparams

PSNR_MARGIN_DB = 3.8
"""IllRecNet should end at least this many dB above the yardstick (and with a higher SSIM)."""

SCORES = ("psnr", "ssim", "psnr_gtmean")
"""Per-image scores, averaged over the held-out pairs and then over the seeds."""

HOLDOUT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
"""scikit-image photographs (public domain / CC0) used as held-out references."""


@dataclass
class QualityHparams(ModelHparams):
    """Train IllRecNet and the yardstick with one recipe; compare held-out PSNR/SSIM."""

    train_dir: list[str] = field(default_factory=lambda: ["../shared/datasets/natural"])
    """Folders of normal-light photos (searched recursively), e.g. Kodak24 and McMaster; relative
    paths start from the current folder (the default: the photos shipped beside the repository)."""
    steps: int = 1500
    """Optimizer steps per model."""
    batch_size: int = 4
    """Crops per step."""
    image_size: int = 128
    """Side of the random training crop, in pixels."""
    lr: float = 2e-4
    """Peak AdamW learning rate (cosine decay to 0)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One run per seed (initialisation, crops, flips, synthesis and the held-out pairs); the scores
    and the target use the mean over the seeds. One initialisation draw moves a model by about 1 dB,
    so rank variants over several seeds."""
    holdout_max_side: int = 512
    """Held-out photos are shrunk (area filter) so the long side is at most this."""
    threads: int = 2
    """torch intra-op threads."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the models train and run (the crops are synthesized on the CPU either way). CUDA runs
    in strict fp32 (TF32 off) so the recipe stays the same; scores move by run-to-run noise only."""
    models: list[str] = field(default_factory=lambda: ["illrecnet", "yardstick"])
    """Which models to train: illrecnet, yardstick or both."""
    output: str = "runs/quality/quality.json"
    """JSON results (written atomically)."""

    def __post_init__(self) -> None:
        check_all_groups(self)
        for name in ("steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 8 or self.holdout_max_side < 16:
            raise ValueError("image_size must be >= 8 and holdout_max_side >= 16")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_device(self.device)
        if not self.seeds or min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct numbers >= 0, got {self.seeds}")
        unknown = sorted(set(self.models) - {"illrecnet", "yardstick"})
        if unknown or not self.models:
            raise ValueError(
                f"models must be a non-empty subset of [illrecnet, yardstick], got {self.models}"
            )


# -------------------------------------------------------------------------------------------- data
def load_photos(folders: list[str]) -> list[np.ndarray]:
    """Every image under ``folders`` (recursively) as an ``(H, W, 3)`` float32 array in [0, 1]."""
    from data.utils import is_image_name, load_image

    paths = sorted(p for folder in folders for p in Path(folder).rglob("*") if is_image_name(p.name))
    if not paths:
        where = ", ".join(str(Path(folder).resolve()) for folder in folders)
        raise FileNotFoundError(f"no images under {where}; point --train_dir at normal-light photos")
    return [load_image(p).permute(1, 2, 0).numpy() for p in paths]


class SyntheticPairs:
    """Endless batches of ``(low, high)`` crops, low synthesized on the fly; one seed, one stream."""

    def __init__(self, photos: list[np.ndarray], crop: int, batch_size: int, seed: int) -> None:
        from data.synthesize import SynthesisParams

        self.photos = [p for p in photos if min(p.shape[:2]) >= crop]
        if not self.photos:
            raise ValueError(f"no training photo is at least {crop} px on its short side")
        self.crop, self.batch_size = crop, batch_size
        self.params = SynthesisParams()
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        from data.synthesize import synthesize_low

        rng = self.rng
        photo = self.photos[rng.integers(len(self.photos))]
        top = rng.integers(photo.shape[0] - self.crop + 1)
        left = rng.integers(photo.shape[1] - self.crop + 1)
        high = photo[top : top + self.crop, left : left + self.crop]  # (crop, crop, 3)
        if rng.random() < 0.5:
            high = high[:, ::-1]
        if rng.random() < 0.5:
            high = high[::-1]
        high = np.round(high * 255.0) / 255.0  # 8-bit reference, as a saved photo would be
        low = synthesize_low(high, rng, self.params) / np.float32(255.0)
        return low, high

    def batch(self) -> tuple[Tensor, Tensor]:
        """``low, high``: float32 ``(B, 3, crop, crop)`` in [0, 1]."""
        lows, highs = zip(*(self.sample() for _ in range(self.batch_size)), strict=True)
        to_tensor = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)  # noqa: E731
        return to_tensor(lows).contiguous(), to_tensor(highs).contiguous()


def holdout_pairs(seed: int, max_side: int, draws: int = 2) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, low, high)`` held-out pairs, each ``(1, 3, H, W)`` in [0, 1]."""
    import skimage.data

    from data.synthesize import SynthesisParams, image_rng, synthesize_low, to_srgb8

    pairs = []
    for photo in HOLDOUT_PHOTOS:
        high8 = to_srgb8(getattr(skimage.data, photo)() / 255.0, max_side)  # (H, W, 3) uint8
        for k in range(draws):
            name = f"{photo}#{k}"
            low8 = synthesize_low(high8 / 255.0, image_rng(seed, name), SynthesisParams())
            as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
            pairs.append((name, as_tensor(low8), as_tensor(high8)))
    return pairs


# ---------------------------------------------------------------------------------------- training
def build_model(name: str, hp: QualityHparams) -> nn.Module:
    from model.blocks.enhancer import Enhancer
    from tools.yardstick import YardstickUNet

    if name == "yardstick":
        return YardstickUNet()
    return Enhancer(**field_values(hp, ModelHparams))


def train(model: nn.Module, data: SyntheticPairs, steps: int, lr: float) -> dict:
    """The fixed recipe: L1, AdamW, cosine decay to 0; returns the wall time and the loss curve.

    The batches go to the device of ``model``; the time counts the optimizer steps, not the synthesis.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    losses, seconds = [], 0.0
    for step in range(steps):
        low, high = (t.to(device) for t in data.batch())
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.l1_loss(model(low), high)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()  # waits for the device, so the time below is the step's
        seconds += time.perf_counter() - start
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss at step {step}")
        losses.append(loss_value)
        if (step + 1) % max(1, steps // 10) == 0:
            recent = float(np.mean(losses[-max(1, steps // 10) :]))
            print(f"  step {step + 1}/{steps}  L1 {recent:.4f}  ({seconds:.0f} s)", file=sys.stderr)
    return {"train_s": seconds, "s_per_step": seconds / steps, "final_l1": float(np.mean(losses[-50:]))}


@torch.no_grad()
def evaluate(model: nn.Module | None, pairs: list[tuple[str, Tensor, Tensor]]) -> dict:
    """Mean and per-image PSNR/SSIM of the 8-bit outputs (``model`` None scores the dark input)."""
    from utils.metrics import gt_mean_rescale, psnr, quantize_8bit, ssim

    if model is not None:
        model.eval()
        device = next(model.parameters()).device
    per_image = {}
    for name, low, high in pairs:
        out = quantize_8bit(low if model is None else model(low.to(device)).cpu())
        rescaled = quantize_8bit(gt_mean_rescale(out, high, luma=False))  # mean over RGB, as recorded
        per_image[name] = {
            "psnr": float(psnr(out, high)),
            "ssim": float(ssim(out, high)),
            "psnr_gtmean": float(psnr(rescaled, high)),
        }
    means = {key: float(np.mean([v[key] for v in per_image.values()])) for key in SCORES}
    return {**means, "per_image": per_image}


def markdown(results: dict) -> str:
    seeds = results["recipe"]["seeds"]
    rows = [
        "| model | params (M) | held-out PSNR (dB) | held-out SSIM | PSNR GT-mean (dB) | PSNR per seed "
        "| final training L1 | training time (s) | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        per_seed = " / ".join(f"{v:.2f}" for v in r["psnr_per_seed"])
        rows.append(
            f"| {name} | {r['params'] / 1e6:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['psnr_gtmean']:.2f} | {per_seed} | {r['final_l1']:.4f} | {r['train_s']:.0f} | "
            f"{r['s_per_step']:.3f} |"
        )
    base = results["dark_input"]
    rows.append(f"| (dark input, no model) | | {base['psnr']:.2f} | {base['ssim']:.4f} | | | | | |")
    recipe = results["recipe"]
    pairs = len(results["runs"][0]["dark_input"]["per_image"])
    head = (
        f"Quality after {recipe['steps']} steps (L1, AdamW lr {recipe['lr']:g} cosine, batch "
        f"{recipe['batch_size']}, {recipe['image_size']}px crops, fp32, {results['machine']}), "
        f"mean over seeds {seeds}; held-out: {pairs} synthetic pairs per seed from skimage photos, "
        "RGB PSNR/SSIM on 8-bit outputs; PSNR GT-mean: the output first scaled by mean(target)/mean(output), "
        "i.e. without the global brightness error; final training L1: mean L1 of the last 50 steps "
        "(same batches for every model of a seed); training time: mean per seed"
    )
    text = head + "\n\n" + "\n".join(rows) + "\n"
    if "target" in results:
        t = results["target"]
        per_seed = " / ".join(f"{g:+.2f}" for g in t["psnr_gain_per_seed"])
        spread = ""
        if t["psnr_gain_se"] is not None:
            low, high = t["psnr_gain_ci95"]
            spread = f"standard error {t['psnr_gain_se']:.2f}, 95 % interval {low:+.2f} to {high:+.2f}; "
        text += (
            f"\nIllRecNet - yardstick: {t['psnr_gain_db']:+.2f} dB PSNR ({spread}per seed {per_seed}; "
            f"target >= +{PSNR_MARGIN_DB}), {t['ssim_gain']:+.4f} SSIM (target > 0): "
            f"{'PASS' if t['pass'] else 'FAIL'}\n"
        )
    return text


def run_seed(hp: QualityHparams, photos: list[np.ndarray], seed: int) -> dict:
    """Train and score every model of ``hp.models`` from ``seed``; same batches for each model."""
    pairs = holdout_pairs(seed, hp.holdout_max_side)
    run: dict = {"seed": seed, "dark_input": evaluate(None, pairs), "models": {}}
    for name in hp.models:
        torch.manual_seed(seed)
        model = build_model(name, hp).to(hp.device)
        data = SyntheticPairs(photos, hp.image_size, hp.batch_size, seed)
        print(f"training {name} (seed {seed}) ...", file=sys.stderr)
        stats = train(model, data, hp.steps, hp.lr)
        run["models"][name] = {"params": sum(p.numel() for p in model.parameters()), **stats}
        run["models"][name] |= evaluate(model, pairs)
    return run


def summarize(runs: list[dict], models: list[str]) -> tuple[dict, dict]:
    """Means over the seeds: ``(dark_input, models)``; each model also keeps its per-seed PSNR/SSIM."""
    mean = lambda entries, key: float(np.mean([e[key] for e in entries]))  # noqa: E731
    dark = [run["dark_input"] for run in runs]
    dark_input = {key: mean(dark, key) for key in SCORES}
    summary = {}
    for name in models:
        entries = [run["models"][name] for run in runs]
        summary[name] = {
            "params": entries[0]["params"],
            **{key: mean(entries, key) for key in (*SCORES, "final_l1", "train_s", "s_per_step")},
            "psnr_per_seed": [e["psnr"] for e in entries],
            "ssim_per_seed": [e["ssim"] for e in entries],
        }
    return dark_input, summary


def gain_interval(gains: list[float]) -> dict:
    """Mean, standard error and 95 % confidence interval (Student's t over the seeds) of per-seed
    gains; one seed gives no spread, so its error and interval are None."""
    from scipy import stats

    n, mean = len(gains), float(np.mean(gains))
    if n < 2:
        return {"mean": mean, "se": None, "ci95": None}
    se = float(np.std(gains, ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half]}


def get_hparams() -> QualityHparams:
    return QualityHparams()


def main(hp: QualityHparams) -> dict:
    torch.set_num_threads(hp.threads)
    if hp.device == "cuda":  # the recipe is fp32: no TF32 in convolutions or matrix products
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    photos = load_photos(hp.train_dir)
    runs = [run_seed(hp, photos, seed) for seed in hp.seeds]
    dark_input, models = summarize(runs, hp.models)
    results: dict = {
        "recipe": asdict(hp)
        | {"loss": "L1", "optimizer": "AdamW(weight_decay=1e-4, fused=True)", "schedule": "cosine"},
        "machine": (
            f"CUDA: {torch.cuda.get_device_name()}" if hp.device == "cuda" else f"CPU, {hp.threads} threads"
        ),
        "train_photos": len(photos),
        "dark_input": dark_input,
        "models": models,
        "runs": runs,
    }
    if {"illrecnet", "yardstick"} <= set(models):
        ill, yard = models["illrecnet"], models["yardstick"]
        gain, ssim_gain = ill["psnr"] - yard["psnr"], ill["ssim"] - yard["ssim"]
        gains = [i - y for i, y in zip(ill["psnr_per_seed"], yard["psnr_per_seed"], strict=True)]
        spread = gain_interval(gains)
        results["target"] = {
            "psnr_gain_db": gain,
            "psnr_gain_per_seed": gains,
            "psnr_gain_se": spread["se"],
            "psnr_gain_ci95": spread["ci95"],
            "ssim_gain": ssim_gain,
            "pass": gain >= PSNR_MARGIN_DB and ssim_gain > 0,
        }
    publish(results, markdown(results), hp.output)
    return results


if __name__ == "__main__":
    main(parse_hparams(type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:]))
