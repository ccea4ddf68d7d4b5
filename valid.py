"""Validate a trained IllRecNet checkpoint on a validation split.

The architecture comes from the checkpoint alone. Prints the losses, PSNR and SSIM and writes them
to ``<log_dir>/<experiment_name>/version_<N>/valid.json``. With several devices (``--devices 2
--strategy ddp``) every image is scored on exactly one rank and the means are summed across ranks,
so the numbers equal a single-device run; rank 0 writes the one report.
"""

import json
import sys
from dataclasses import dataclass

from utils.hparams import CacheHparams, RuntimeHparams
from utils.utils import parse_hparams, run_main


@dataclass
class ValidHparams(RuntimeHparams, CacheHparams):
    """Validate a checkpoint."""

    checkpoint_path: str = ""
    """Checkpoint to evaluate (required), e.g. .../version_0/trainable/checkpoints/best.ckpt"""
    valid_data_path: str = "data/2_valid"
    """Validation split: sub-datasets with low/ and high/."""
    num_workers: int = 2
    """DataLoader worker processes."""
    log_dir: str = "runs/valid"
    """Where valid.json is written."""


def get_hparams() -> ValidHparams:
    return ValidHparams(checkpoint_path="")


def main(hp: ValidHparams) -> None:
    from pathlib import Path

    from data.dataloader import LowLightDataModule
    from engine.engine import LightningEngine
    from engine.run_dirs import is_rank_zero, new_run_dir
    from model.model import load_checkpoint
    from utils.hparams import DataHparams
    from utils.utils import atomic_write_text

    engine = LightningEngine.from_hparams(hp)
    module = load_checkpoint(hp.checkpoint_path)
    data = DataHparams(valid_data_path=hp.valid_data_path, num_workers=hp.num_workers, cache_gb=hp.cache_gb)
    datamodule = LowLightDataModule(data, hp.seed)  # the seed darkens photo folders, as in training
    metrics = engine.valid(module, datamodule)[0]  # synced: the same on every rank
    if not is_rank_zero():
        return  # one report, written by rank 0
    out_dir = new_run_dir(Path(hp.log_dir) / hp.experiment_name)
    report = {
        "checkpoint_path": hp.checkpoint_path,
        "valid_data_path": hp.valid_data_path,
        **{k: float(v) for k, v in metrics.items()},
    }
    atomic_write_text(out_dir / "valid.json", json.dumps(report, indent=2))
    print(f"\nValidation of {hp.checkpoint_path} on {hp.valid_data_path}")
    for key, value in metrics.items():
        print(f"  {key:<14} {float(value):.4f}")
    print(f"written: {out_dir / 'valid.json'}")


if __name__ == "__main__":
    hparams = parse_hparams(type(get_hparams()), __doc__, sys.argv[1:], required=("checkpoint_path",))
    run_main(main, hparams)
