"""Is a variant better than a baseline? Two sets of ``tools.quality`` results, paired by seed.

::

    python -m tools.quality --seeds '[0,1,2,3,4]' --output base.json
    python -m tools.quality --models '[illrecnet]' --embed_dim 40 --seeds '[0,1,2,3,4]' --output wide.json
    python -m tools.compare_quality --baseline '[base.json]' --variant '[wide.json]'

Every seed of ``tools.quality`` fixes the initialisation, the training batches and the held-out pairs,
so two runs of the same seed differ only by the model. Their per-seed differences (variant minus
baseline) remove most of the luck that makes one model move by about 1 dB from seed to seed; this
command prints them for held-out PSNR, SSIM, GT-mean PSNR and the final training L1, with the mean,
standard error, 95 % interval (Student's t) and how many seeds went each way, and writes JSON.

- Each side may come from several files (seeds 0-4 in one run, 5-9 in another); a seed given twice
  on one side is an error, and only the seeds both sides have are compared.
- Both sides must share the recipe (steps, batch, crop, learning rate, training photos, held-out
  size); anything else would not be a paired comparison, so a mismatch is an error naming the file
  and the field. The model fields may differ between the sides (that is the comparison) but not
  within one side. The table's heading lists the model fields that differ.
- ``--baseline_model yardstick`` compares the variant with the baseline files' yardstick, e.g. a
  run with ``--models '[illrecnet]'`` against the yardstick of an earlier full run of the same seeds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tools import publish
from tools.quality import MODELS, gain_interval
from utils.hparams import LEGACY_DEFAULTS, ModelHparams, field_names
from utils.utils import parse_hparams

RECIPE_FIELDS = (
    "steps",
    "batch_size",
    "image_size",
    "lr",
    "train_dir",
    "holdout_max_side",
    "regimes",
    "train_regimes",
    "holdout_dir",
)
"""What must match for two runs of one seed to have seen the same batches and held-out pairs."""

LEGACY_RECIPE = {"regimes": ["default"], "train_regimes": ["default"], "holdout_dir": None}
"""The recipe of a result written before degradation regimes existed."""

COMPARED = {
    "psnr": ("PSNR (dB)", 2),
    "ssim": ("SSIM", 4),
    "psnr_gtmean": ("GT-mean PSNR (dB)", 2),
    "final_l1": ("final L1", 4),
}
"""Per-seed scores compared, with their table label and decimals (the final training L1 is
lower-is-better; the others higher). The PSNR/SSIM scores are also compared per regime."""
PER_REGIME = ("psnr", "ssim", "psnr_gtmean")

Model = Literal[MODELS]


@dataclass
class CompareHparams:
    """Compare two sets of tools.quality results paired by seed (variant minus baseline)."""

    baseline: list[str] = field(default_factory=list)
    """JSON files written by ``tools.quality`` for the baseline (one or more)."""
    variant: list[str] = field(default_factory=list)
    """JSON files written by ``tools.quality`` for the variant (one or more)."""
    baseline_model: Model = "illrecnet"
    """Which model of the baseline files to compare against."""
    variant_model: Model = "illrecnet"
    """Which model of the variant files is compared."""
    output: str = "runs/quality/compare.json"
    """JSON results (written atomically)."""


class Side:
    """One side of the comparison: the per-seed entries of one model gathered from several files."""

    def __init__(self, label: str, paths: list[str], model: Model) -> None:
        if not paths:
            raise ValueError(f"--{label} needs at least one JSON file written by tools.quality")
        self.label, self.model = label, model
        self.recipe: dict | None = None
        self.recipe_file = ""
        self.machines: set[str] = set()
        self.seeds: dict[int, dict] = {}
        self.seed_files: dict[int, str] = {}
        for path in paths:
            self._add(path)

    def _add(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                results = json.load(f)
            # a result written before a model option existed ran with the option's legacy value
            recipe, runs = {**LEGACY_DEFAULTS, **LEGACY_RECIPE, **results["recipe"]}, results["runs"]
            entries = {int(run["seed"]): _flat(run["models"].get(self.model)) for run in runs}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable tools.quality result ({error!r})") from error
        if any(entry is None for entry in entries.values()):
            raise ValueError(f"{path}: has no {self.model} results (trained: {recipe.get('models')})")
        missing = sorted({key for entry in entries.values() for key in COMPARED if key not in entry})
        if missing:
            raise ValueError(
                f"{path}: the {self.model} results lack {', '.join(missing)} (an older tools.quality?)"
            )
        if self.recipe is None:
            self.recipe, self.recipe_file = recipe, path
        else:
            checked = RECIPE_FIELDS + (field_names(ModelHparams) if self.model == "illrecnet" else ())
            _same(self.recipe, self.recipe_file, recipe, path, checked)
        for seed, entry in entries.items():
            if seed in self.seeds:
                raise ValueError(
                    f"seed {seed} is in both {self.seed_files[seed]} and {path} (--{self.label})"
                )
            self.seeds[seed], self.seed_files[seed] = entry, path
        self.machines.add(results.get("machine", "unknown machine"))


def _flat(entry: dict | None) -> dict | None:
    """A model's entry of one seed with its per-regime scores as ``<regime>/<score>`` keys."""
    if entry is None:
        return None
    regimes = entry.get("regimes", {})
    return entry | {f"{r}/{key}": scores[key] for r, scores in regimes.items() for key in PER_REGIME}


def _label(key: str) -> tuple[str, int]:
    """Table label and decimals of a compared key (``psnr`` or ``lol/psnr``)."""
    regime, _, score = key.rpartition("/")
    label, decimals = COMPARED[score]
    return (f"{label}, {regime}" if regime else label), decimals


def _same(first: dict, first_file: str, other: dict, other_file: str, names: tuple[str, ...]) -> None:
    """Raise naming both files and every field of ``names`` whose values differ."""
    differ = [
        f"{n}: {first.get(n)!r} against {other.get(n)!r}" for n in names if first.get(n) != other.get(n)
    ]
    if differ:
        raise ValueError(f"{first_file} and {other_file} differ in " + "; ".join(differ))


def pair_by_seed(baseline: Side, variant: Side) -> dict:
    """Per-seed differences (variant - baseline) over the seeds both sides have, with their spread."""
    _same(baseline.recipe, baseline.recipe_file, variant.recipe, variant.recipe_file, RECIPE_FIELDS)
    seeds = sorted(set(baseline.seeds) & set(variant.seeds))
    if not seeds:
        raise ValueError(
            f"no seed in common: baseline has {sorted(baseline.seeds)}, variant {sorted(variant.seeds)}"
        )
    scores = {}
    regimes = baseline.recipe["regimes"] if len(baseline.recipe["regimes"]) > 1 else []
    for key in (*COMPARED, *(f"{r}/{k}" for r in regimes for k in PER_REGIME)):
        base = [baseline.seeds[s][key] for s in seeds]
        var = [variant.seeds[s][key] for s in seeds]
        diffs = [v - b for v, b in zip(var, base, strict=True)]
        better = sum(d < 0 if key == "final_l1" else d > 0 for d in diffs)
        scores[key] = {
            "baseline": base,
            "variant": var,
            "diff_per_seed": diffs,
            **{f"diff_{k}": v for k, v in gain_interval(diffs).items()},
            "variant_better_on": better,
        }
    model_changes = {}
    if baseline.model == variant.model == "illrecnet":
        model_changes = {
            name: [baseline.recipe.get(name), variant.recipe.get(name)]
            for name in field_names(ModelHparams)
            if baseline.recipe.get(name) != variant.recipe.get(name)
        }
    return {
        "seeds": seeds,
        "only_baseline": sorted(set(baseline.seeds) - set(variant.seeds)),
        "only_variant": sorted(set(variant.seeds) - set(baseline.seeds)),
        "baseline": {"files": sorted(set(baseline.seed_files.values())), "model": baseline.model},
        "variant": {"files": sorted(set(variant.seed_files.values())), "model": variant.model},
        "model_changes": model_changes,
        "machines": {"baseline": sorted(baseline.machines), "variant": sorted(variant.machines)},
        "scores": scores,
    }


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in result["model_changes"].items())
    base, var = result["baseline"], result["variant"]
    lines = [
        f"Variant ({var['model']}, {', '.join(var['files'])}) minus baseline ({base['model']}, "
        f"{', '.join(base['files'])}), paired by seed over seeds {seeds}"
        + (f"; model fields changed: {changes}" if changes else ""),
        "",
        "| score | baseline (mean) | variant (mean) | difference per seed | mean difference | standard error "
        "| 95 % interval | variant better on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in result["scores"].items():
        label, d = _label(key)
        per_seed = " / ".join(f"{v:+.{d}f}" for v in s["diff_per_seed"])
        se = "" if s["diff_se"] is None else f"{s['diff_se']:.{d}f}"
        ci = "" if s["diff_ci95"] is None else " to ".join(f"{v:+.{d}f}" for v in s["diff_ci95"])
        lines.append(
            f"| {label} | {np.mean(s['baseline']):.{d}f} | {np.mean(s['variant']):.{d}f} | {per_seed} "
            f"| {s['diff_mean']:+.{d}f} | {se} | {ci} | {s['variant_better_on']} of {len(seeds)} |"
        )
    notes = []
    if result["only_baseline"] or result["only_variant"]:
        notes.append(
            f"Left out, on one side only: baseline seeds {result['only_baseline']}, "
            f"variant seeds {result['only_variant']}."
        )
    machines = result["machines"]
    if machines["baseline"] != machines["variant"] or len(machines["baseline"]) > 1:
        notes.append(
            f"Machines differ (baseline: {', '.join(machines['baseline'])}; variant: "
            f"{', '.join(machines['variant'])}): the order of floating-point sums alone moves one run's "
            "held-out PSNR by up to 0.6 dB, so treat small differences as noise."
        )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def get_hparams() -> CompareHparams:
    return CompareHparams()


def main(hp: CompareHparams) -> dict:
    result = pair_by_seed(
        Side("baseline", hp.baseline, hp.baseline_model), Side("variant", hp.variant, hp.variant_model)
    )
    publish(result, markdown(result), hp.output)
    return result


if __name__ == "__main__":
    hparams = parse_hparams(
        type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:], required=("baseline", "variant")
    )
    try:
        main(hparams)
    except ValueError as error:
        sys.exit(f"error: {error}")
