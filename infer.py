"""Enhance low-light images with a trained IllRecNet checkpoint.

Every image under ``<infer_data_path>/*/low`` (or ``--input``: one file or any folder) is written
to ``<log_dir>/<experiment_name>/inference/<sub-dataset>/<stem>.png`` as 8-bit RGB at the input's
displayed size. Large images are enhanced in overlapping tiles. Outputs are written atomically;
a re-run skips finished images (``--overwrite`` redoes them). Bad files are reported by name, get
no output and do not stop the others; the exit status is non-zero if any image failed.
"""

import sys
from dataclasses import dataclass

from utils.hparams import RuntimeHparams, TileHparams
from utils.utils import parse_hparams, run_main


@dataclass
class InferHparams(TileHparams, RuntimeHparams):
    """Enhance images with a checkpoint."""

    checkpoint_path: str = ""
    """Checkpoint to use; empty: the shipped starter model (checkpoints/starter.ckpt)."""
    infer_data_path: str = "data/4_infer"
    """Folder of sub-datasets whose low/ images are enhanced (high/ is optional and unused)."""
    input: str | None = None
    """A single image or any folder of images, instead of infer_data_path."""
    overwrite: bool = False
    """Redo images that already have an output."""
    self_ensemble: bool = False
    """Average the outputs of the 8 flips/rotations of each image."""
    log_dir: str = "runs"
    """Outputs go to <log_dir>/<experiment_name>/inference/."""


def get_hparams() -> InferHparams:
    return InferHparams(checkpoint_path="")


def main(hp: InferHparams) -> None:
    from pathlib import Path

    from engine.engine import LightningEngine
    from engine.infer import collect_inputs, run_infer
    from model.model import load_checkpoint, resolve_checkpoint
    from utils.hparams import field_values

    engine = LightningEngine.from_hparams(hp)
    hp.checkpoint_path = str(resolve_checkpoint(hp.checkpoint_path))  # default: the shipped starter model
    module = load_checkpoint(hp.checkpoint_path)
    inputs = collect_inputs(hp.infer_data_path, hp.input)
    out_dir = Path(hp.log_dir) / hp.experiment_name / "inference"
    summary = run_infer(
        engine.enhancer(module, hp.self_ensemble),
        inputs=inputs,
        out_dir=out_dir,
        tiles=TileHparams(**field_values(hp, TileHparams)),
        overwrite=hp.overwrite,
        checkpoint_path=hp.checkpoint_path,
    )
    print(
        f"\nenhanced {len(summary.enhanced)}, skipped (already done) {len(summary.skipped)}, "
        f"failed {len(summary.failed)}; outputs in {out_dir}"
    )
    for path, reason in summary.failed:
        print(f"  failed: {path}: {reason}")
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    hparams = parse_hparams(type(get_hparams()), __doc__, sys.argv[1:])
    run_main(main, hparams)
