"""Quality per training step: IllRecNet and the yardstick U-Net trained with one fixed recipe.

``python -m tools.quality`` trains both models from the same seed on the same stream of batches and
scores them on the same held-out pairs, once per seed of ``--seeds`` (scores are means over seeds):

- **Training data.** Normal-light photos under ``--train_dir`` (default: Kodak24 + McMaster),
  loaded once. Every sample is a random ``image_size`` crop with random horizontal/vertical flips,
  darkened on the fly by :func:`data.synthesize.synthesize_low` with random parameters from one of
  the ``--train_regimes`` (:data:`data.synthesize.REGIMES`, drawn per crop), so no two steps see the
  same noise.
- **Recipe.** L1 loss, AdamW (lr 2e-4, weight decay 1e-4, fused kernel), cosine decay to 0 over ``steps``,
  batch 4, fp32, ``threads`` CPU threads.
- **Held-out pairs, per regime.** Photographs training never sees: by default 40 of SunHays80's 80
  (``--holdout_dir``, every second file by name; the starter model's validation photos are others),
  each darkened once per regime of ``--regimes`` (mild, LOL-like, extreme) by a generator seeded from
  ``(seed, regime/name)``, shrunk first so the long side is at most ``holdout_max_side``. Without a
  ``holdout_dir``: the earlier set, scikit-image's astronaut, chelsea, coffee and rocket (public
  domain / CC0), each darkened twice (``(seed, name#k)``; with ``--regimes '[default]'
  --train_regimes '[default]'`` the earlier measurements exactly).
- **Scores.** RGB PSNR and SSIM (:mod:`utils.metrics`: pyiqa ``psnr`` / ``ssimc``) of the output
  clamped and rounded to 8 bits against the 8-bit reference, averaged over the held-out pairs; and,
  in its own column, PSNR after the GT-mean rescale (the output scaled by ``mean(target) /
  mean(output)``, means over RGB; bench.py's columns use the grey-level mean), which shows how
  much of the error is the global brightness: the exposure of a dark photo is ambiguous (a dark
  scene or an under-exposed one), for every model alike.

Prints a Markdown table per regime and one of the means over the regimes (PSNR, SSIM, the final
training L1, training time of each model, and the identity baseline: the dark input itself), the gain
over the yardstick per regime and seed (with two seeds or more also its standard error and 95 %
interval, Student's t over the seeds), and writes JSON atomically. The final training L1 (the last 50
steps, on the batches every model of a seed shares)
is the low-noise signal of how well a variant fits; the held-out PSNR of one run also carries the
luck of its initialisation in guessing the exposure of unseen photos (about 1 dB). The target, in
every regime: IllRecNet at least :data:`PSNR_MARGIN_DB` above the yardstick (3.0 dB; 3.5 in the
extreme regime) with a higher SSIM. The model flags (``--embed_dim`` ...) change IllRecNet's
configuration.
"""

from __future__ import annotations

import hashlib
import io
import json
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
from utils.hparams import LEGACY_DEFAULTS, ModelHparams, field_names
from utils.utils import atomic_write_bytes, parse_hparams

PSNR_MARGIN_DB = {"default": 3.8, "mild": 3.0, "lol": 3.0, "extreme": 3.5}
"""Per regime, IllRecNet should end at least this many dB above the yardstick (and with a higher
SSIM); ``default`` keeps the target of the earlier single-regime measurements."""

SCORES = ("psnr", "ssim", "psnr_gtmean")
TRAINING = ("final_l1", "train_s", "s_per_step")
"""Per-image scores, averaged over the held-out pairs and then over the seeds."""

HOLDOUT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
"""scikit-image photographs (public domain / CC0): the held-out references without a holdout_dir."""
HOLDOUT_STRIDE = 2
"""Every HOLDOUT_STRIDE-th photo of holdout_dir (sorted by name) is held out: 40 of SunHays80."""


MODELS = ("illrecnet", "yardstick", "retinexformer")
"""What ``--models`` can name."""


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
    regimes: list[str] = field(default_factory=lambda: ["mild", "lol", "extreme"])
    """Degradation regimes of the held-out pairs (names of data.synthesize.REGIMES), each scored
    on its own; the overall scores are their means."""
    train_regimes: list[str] = field(default_factory=lambda: ["mild", "lol", "extreme"])
    """Regimes the training crops are darkened with, one drawn per crop (one name: the whole stream,
    drawn exactly as before regimes existed)."""
    holdout_dir: str | None = "../shared/datasets/photos/SunHays80"
    """Folder of held-out photos (every second file by name); null: the four scikit-image photos,
    darkened twice each (the earlier measuring stick)."""
    holdout_max_side: int = 512
    """Held-out photos are shrunk (area filter) so the long side is at most this."""
    threads: int = 2
    """torch intra-op threads."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the models train and run (the crops are synthesized on the CPU either way). CUDA runs
    in strict fp32 (TF32 off) so the recipe stays the same; scores move by run-to-run noise only."""
    models: list[str] = field(default_factory=lambda: ["illrecnet", "yardstick"])
    """Which models to train, of illrecnet, yardstick and retinexformer (a reference model with
    Retinexformer's layout, ``tools/retinexformer.py``; about 5x the yardstick's time per training
    step on a CPU)."""
    output: str = "runs/quality/quality.json"
    """JSON results (written atomically)."""
    models_dir: str | None = None
    """Folder for the trained models: each model of each seed is saved there once trained
    (``<model>_seed<N>_<key>.pt``: weights and training statistics; ``key`` hashes everything that
    decides the training, :func:`training_key`), and a run that finds its file loads it instead of
    training again: scoring more ``--regimes`` later, or finishing a run stopped midway, retrains
    nothing. The held-out scores of each model and of the dark input are kept under ``scores/``
    the same way, so a table over seeds run in separate processes is one more run that only reads
    files. null: nothing is saved."""

    def __post_init__(self) -> None:
        super().__post_init__()
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
        from data.synthesize import REGIMES

        for name in ("regimes", "train_regimes"):
            names = getattr(self, name)
            wrong = sorted(set(names) - set(REGIMES))
            if wrong or not names or len(set(names)) != len(names):
                raise ValueError(f"{name} must be distinct names of [{', '.join(REGIMES)}], got {names}")
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty subset of [{', '.join(MODELS)}], got {self.models}")


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

    def __init__(
        self,
        photos: list[np.ndarray],
        crop: int,
        batch_size: int,
        seed: int,
        regimes: tuple[str, ...] = ("default",),
    ) -> None:
        from data.synthesize import REGIMES

        self.photos = [p for p in photos if min(p.shape[:2]) >= crop]
        if not self.photos:
            raise ValueError(f"no training photo is at least {crop} px on its short side")
        self.crop, self.batch_size = crop, batch_size
        self.params = [REGIMES[name] for name in regimes]
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
        # one regime: no draw, so the stream of a single regime is the one from before regimes
        params = self.params[0] if len(self.params) == 1 else self.params[rng.integers(len(self.params))]
        low = synthesize_low(high, rng, params) / np.float32(255.0)
        return low, high

    def batch(self) -> tuple[Tensor, Tensor]:
        """``low, high``: float32 ``(B, 3, crop, crop)`` in [0, 1]."""
        lows, highs = zip(*(self.sample() for _ in range(self.batch_size)), strict=True)
        to_tensor = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)  # noqa: E731
        return to_tensor(lows).contiguous(), to_tensor(highs).contiguous()


Pairs = list[tuple[str, Tensor, Tensor]]


def holdout_references(holdout_dir: str | None, max_side: int) -> dict[str, np.ndarray]:
    """Held-out references by name, each ``(H, W, 3)`` uint8: every :data:`HOLDOUT_STRIDE`-th photo
    of ``holdout_dir`` by file name, or the scikit-image photos when it is None."""
    from data.synthesize import to_srgb8

    if holdout_dir is None:
        import skimage.data

        return {p: to_srgb8(getattr(skimage.data, p)() / 255.0, max_side) for p in HOLDOUT_PHOTOS}
    from data.utils import list_images, load_image

    folder = Path(holdout_dir)
    paths = list_images(folder)[::HOLDOUT_STRIDE] if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no images in {Path(holdout_dir).resolve()}; point --holdout_dir at photos")
    return {p.name: to_srgb8(load_image(p).permute(1, 2, 0).numpy(), max_side) for p in paths}


def holdout_pairs(
    seed: int, references: dict[str, np.ndarray], regimes: list[str], draws: int = 1
) -> dict[str, Pairs]:
    """Per regime, ``(name, low, high)`` held-out pairs, each ``(1, 3, H, W)`` in [0, 1]; the low image
    of ``name`` comes from a generator seeded by ``(seed, regime/name)`` (``(seed, name#k)`` for the
    default regime, as before regimes existed)."""
    from data.synthesize import REGIMES, image_rng, synthesize_low

    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    by_regime = {}
    for regime in regimes:
        pairs = []
        for photo, high8 in references.items():
            for k in range(draws):
                name = f"{photo}#{k}" if draws > 1 else photo
                key = name if regime == "default" else f"{regime}/{name}"
                low8 = synthesize_low(high8 / 255.0, image_rng(seed, key), REGIMES[regime])
                pairs.append((name, as_tensor(low8), as_tensor(high8)))
        by_regime[regime] = pairs
    return by_regime


# ---------------------------------------------------------------------------------------- training
def build_model(name: str, hp: QualityHparams) -> nn.Module:
    from model.blocks.enhancer import Enhancer
    from tools.retinexformer import RetinexformerReference
    from tools.yardstick import YardstickUNet

    if name == "yardstick":
        return YardstickUNet()
    if name == "retinexformer":
        return RetinexformerReference()
    return Enhancer(hp)  # a QualityHparams is a ModelHparams: the model flags


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
def evaluate(model: nn.Module | None, pairs: Pairs) -> dict:
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


def evaluate_regimes(
    model: nn.Module | None, by_regime: dict[str, Pairs], saved: dict[str, Path] | None = None
) -> dict:
    """:func:`evaluate` per regime (``regimes``) and the means of its scores over the regimes.

    With ``saved`` (``{regime: JSON file}``, :func:`score_files`), a regime whose file exists is read
    from it instead of scored again, and a regime scored here is written there (atomically)."""
    regimes = {}
    for regime, pairs in by_regime.items():
        path = saved[regime] if saved else None
        if path is not None and path.is_file():
            try:
                scores = json.loads(path.read_text())
                if not (isinstance(scores, dict) and set(SCORES) <= set(scores) and scores.get("per_image")):
                    raise ValueError(f"missing {', '.join(SCORES)} or per_image")
            except Exception as error:
                raise RuntimeError(
                    f"{path}: not readable tools.quality scores ({error}); delete it"
                ) from error
            regimes[regime] = scores
            continue
        regimes[regime] = evaluate(model, pairs)
        if path is not None:
            atomic_write_bytes(path, json.dumps(regimes[regime]).encode())
    means = {key: float(np.mean([r[key] for r in regimes.values()])) for key in SCORES}
    return {**means, "regimes": regimes}


def _table(rows: dict[str, dict], dark: dict) -> list[str]:
    lines = [
        "| model | params (M) | held-out PSNR (dB) | held-out SSIM | PSNR GT-mean (dB) | PSNR per seed "
        "| final training L1 | training time (s) | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        per_seed = " / ".join(f"{v:.2f}" for v in r["psnr_per_seed"])
        lines.append(
            f"| {name} | {r['params'] / 1e6:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['psnr_gtmean']:.2f} | {per_seed} | {r['final_l1']:.4f} | {r['train_s']:.0f} | "
            f"{r['s_per_step']:.3f} |"
        )
    lines.append(f"| (dark input, no model) | | {dark['psnr']:.2f} | {dark['ssim']:.4f} | | | | | |")
    return lines


def markdown(results: dict) -> str:
    recipe = results["recipe"]
    first = results["runs"][0]["dark_input"]["regimes"]
    pairs = ", ".join(f"{len(r['per_image'])} {name}" for name, r in first.items())
    where = recipe["holdout_dir"] or "scikit-image photos"
    head = (
        f"Quality after {recipe['steps']} steps (L1, AdamW lr {recipe['lr']:g} cosine, batch "
        f"{recipe['batch_size']}, {recipe['image_size']}px crops darkened with "
        f"{'/'.join(recipe['train_regimes'])}, fp32, {results['machine']}), mean over seeds "
        f"{recipe['seeds']}; held-out synthetic pairs per seed from {where} ({pairs}), RGB PSNR/SSIM "
        "on 8-bit outputs; PSNR GT-mean: the output first scaled by mean(target)/mean(output), i.e. "
        "without the global brightness error; final training L1: mean L1 of the last 50 steps (same "
        "batches for every model of a seed); training time: mean per seed"
    )
    text = [head]
    for regime in recipe["regimes"]:
        rows = {name: r | r["regimes"][regime] for name, r in results["models"].items()}
        text += ["", f"Regime **{regime}**:", "", *_table(rows, results["dark_input"]["regimes"][regime])]
    if len(recipe["regimes"]) > 1:
        text += ["", "Mean over the regimes:", "", *_table(results["models"], results["dark_input"])]
    if "target" in results:
        text.append("")
        for regime, t in results["target"]["regimes"].items():
            per_seed = " / ".join(f"{g:+.2f}" for g in t["psnr_gain_per_seed"])
            spread = ""
            if t["psnr_gain_se"] is not None:
                low, high = t["psnr_gain_ci95"]
                spread = f"standard error {t['psnr_gain_se']:.2f}, 95 % interval {low:+.2f} to {high:+.2f}; "
            text.append(
                f"{regime}: IllRecNet - yardstick {t['psnr_gain_db']:+.2f} dB PSNR ({spread}per seed "
                f"{per_seed}; target >= +{t['target_db']}), {t['ssim_gain']:+.4f} SSIM (target > 0): "
                f"{'PASS' if t['pass'] else 'FAIL'}"
            )
    return "\n".join(text) + "\n"


def training_key(hp: QualityHparams, name: str, seed: int) -> str:
    """A short hash of what decides how model ``name`` trains at ``seed``: the recipe, the training
    regimes and photos, and (for IllRecNet) every model flag; not the held-out set or the device.
    Model flags at their :data:`~utils.hparams.LEGACY_DEFAULTS` value (the model as it was before
    the flag existed) are left out, so adding a flag keeps the keys of the models saved before."""
    recipe = {key: getattr(hp, key) for key in ("steps", "batch_size", "image_size", "lr", "train_regimes")}
    recipe |= {"train_dir": [str(Path(d).resolve()) for d in hp.train_dir], "model": name, "seed": seed}
    if name == "illrecnet":
        for key in field_names(ModelHparams):
            if key not in LEGACY_DEFAULTS or getattr(hp, key) != LEGACY_DEFAULTS[key]:
                recipe[key] = getattr(hp, key)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def score_files(hp: QualityHparams, label: str, seed: int, draws: int) -> dict[str, Path] | None:
    """Where the held-out scores of ``label`` (``dark`` or ``<model>_<training key>``) from ``seed``
    are kept, per regime, under ``hp.models_dir/scores`` (None without a models_dir); the file name
    hashes what decides the held-out pairs (photos folder, size, draws, seed, regime)."""
    if not hp.models_dir:
        return None
    holdout = str(Path(hp.holdout_dir).resolve()) if hp.holdout_dir else None
    files = {}
    for regime in hp.regimes:
        pairs = {"holdout_dir": holdout, "max_side": hp.holdout_max_side, "draws": draws, "seed": seed}
        key = hashlib.sha256(json.dumps(pairs | {"regime": regime}, sort_keys=True).encode()).hexdigest()
        files[regime] = Path(hp.models_dir) / "scores" / f"{label}_seed{seed}_{regime}_{key[:12]}.json"
    return files


def trained_model(
    hp: QualityHparams, photos: list[np.ndarray], name: str, seed: int
) -> tuple[nn.Module, dict]:
    """Model ``name`` trained from ``seed`` with the recipe, and its training statistics; loaded from
    ``hp.models_dir`` when an earlier run saved it there, else trained (and then saved there)."""
    torch.manual_seed(seed)
    model = build_model(name, hp).to(hp.device)
    saved = None
    if hp.models_dir:
        saved = Path(hp.models_dir) / f"{name}_seed{seed}_{training_key(hp, name, seed)}.pt"
    if saved is not None and saved.is_file():
        try:
            state = torch.load(saved, map_location=hp.device, weights_only=True)
            model.load_state_dict(state["weights"])
        except Exception as error:  # a damaged file: say which, instead of retraining silently
            problem = f"{saved}: not a readable tools.quality model ({error}); delete it to retrain"
            raise RuntimeError(problem) from error
        print(f"loaded {name} (seed {seed}) from {saved}", file=sys.stderr)
        return model, state["stats"]
    data = SyntheticPairs(photos, hp.image_size, hp.batch_size, seed, tuple(hp.train_regimes))
    print(f"training {name} (seed {seed}) ...", file=sys.stderr)
    stats = train(model, data, hp.steps, hp.lr)
    if saved is not None:
        buffer = io.BytesIO()
        torch.save({"weights": model.state_dict(), "stats": stats}, buffer)
        atomic_write_bytes(saved, buffer.getvalue())
        print(f"saved {name} (seed {seed}) to {saved}", file=sys.stderr)
    return model, stats


def run_seed(
    hp: QualityHparams, photos: list[np.ndarray], references: dict[str, np.ndarray], seed: int
) -> dict:
    """Train (or load) and score every model of ``hp.models`` from ``seed``; same batches for each."""
    draws = 2 if hp.holdout_dir is None else 1
    pairs = holdout_pairs(seed, references, hp.regimes, draws)
    dark = evaluate_regimes(None, pairs, score_files(hp, "dark", seed, draws))
    run: dict = {"seed": seed, "dark_input": dark, "models": {}}
    for name in hp.models:
        model, stats = trained_model(hp, photos, name, seed)
        run["models"][name] = {"params": sum(p.numel() for p in model.parameters()), **stats}
        saved = score_files(hp, f"{name}_{training_key(hp, name, seed)}", seed, draws)
        run["models"][name] |= evaluate_regimes(model, pairs, saved)
    return run


def _means(entries: list[dict]) -> dict:
    """Means over the seeds of the scores, and the per-seed PSNR/SSIM."""
    return {
        **{key: float(np.mean([e[key] for e in entries])) for key in SCORES},
        "psnr_per_seed": [e["psnr"] for e in entries],
        "ssim_per_seed": [e["ssim"] for e in entries],
    }


def summarize(runs: list[dict], models: list[str]) -> tuple[dict, dict]:
    """Means over the seeds: ``(dark_input, models)``, overall and per regime; each model also keeps
    its per-seed PSNR/SSIM."""
    regimes = list(runs[0]["dark_input"]["regimes"])
    per_regime = lambda entries: {r: _means([e["regimes"][r] for e in entries]) for r in regimes}  # noqa: E731
    dark = [run["dark_input"] for run in runs]
    dark_input = {key: float(np.mean([d[key] for d in dark])) for key in SCORES}
    dark_input["regimes"] = per_regime(dark)
    summary = {}
    for name in models:
        entries = [run["models"][name] for run in runs]
        summary[name] = {
            "params": entries[0]["params"],
            **{key: float(np.mean([e[key] for e in entries])) for key in TRAINING},
            **_means(entries),
            "regimes": per_regime(entries),
        }
    return dark_input, summary


def target(models: dict) -> dict:
    """Per regime, IllRecNet's gain over the yardstick (mean, per seed, standard error, 95 % interval)
    against :data:`PSNR_MARGIN_DB`, and whether every regime passes."""
    regimes = {}
    for regime in models["illrecnet"]["regimes"]:
        ill, yard = models["illrecnet"]["regimes"][regime], models["yardstick"]["regimes"][regime]
        gains = [i - y for i, y in zip(ill["psnr_per_seed"], yard["psnr_per_seed"], strict=True)]
        spread, margin = gain_interval(gains), PSNR_MARGIN_DB.get(regime, 3.0)
        ssim_gain = ill["ssim"] - yard["ssim"]
        regimes[regime] = {
            "psnr_gain_db": spread["mean"],
            "psnr_gain_per_seed": gains,
            "psnr_gain_se": spread["se"],
            "psnr_gain_ci95": spread["ci95"],
            "ssim_gain": ssim_gain,
            "target_db": margin,
            "pass": spread["mean"] >= margin and ssim_gain > 0,
        }
    return {"regimes": regimes, "pass": all(r["pass"] for r in regimes.values())}


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
    references = holdout_references(hp.holdout_dir, hp.holdout_max_side)
    runs = [run_seed(hp, photos, references, seed) for seed in hp.seeds]
    dark_input, models = summarize(runs, hp.models)
    results: dict = {
        "recipe": asdict(hp)
        | {"loss": "L1", "optimizer": "AdamW(weight_decay=1e-4, fused=True)", "schedule": "cosine"},
        "machine": (
            f"CUDA: {torch.cuda.get_device_name()}" if hp.device == "cuda" else f"CPU, {hp.threads} threads"
        ),
        "train_photos": len(photos),
        "holdout_photos": sorted(references),
        "dark_input": dark_input,
        "models": models,
        "runs": runs,
    }
    if {"illrecnet", "yardstick"} <= set(models):
        results["target"] = target(models)
    publish(results, markdown(results), hp.output)
    return results


if __name__ == "__main__":
    main(parse_hparams(type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:]))
