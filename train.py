"""Train IllRecNet: two sessions (separation frozen, then trainable), each with its own logs and
checkpoints under ``<log_dir>/<experiment_name>/version_<N>/<session>/``.

The defaults below are the full recipe for LOL on a GPU box. The quick CPU run on the shipped
sample is ``python train.py --config configs/sample.yaml``.

Ctrl-C or SIGTERM stops at the next training batch, saves ``checkpoints/interrupted.ckpt``, flushes
the logs and prints the command that resumes (``... --resume true``, exit status 130 or 143).
``--resume true`` also continues a run killed outright, from its ``last.ckpt``.
"""

import sys
from dataclasses import dataclass, field

from utils.hparams import (
    DataHparams,
    ModelHparams,
    OptimHparams,
    RuntimeHparams,
    TrainLoopHparams,
)
from utils.utils import parse_hparams, run_main


@dataclass
class TrainHparams(TrainLoopHparams, RuntimeHparams, OptimHparams, ModelHparams, DataHparams):
    """Train IllRecNet (defaults: LOL recipe for one GPU)."""

    precision: str = "bf16-mixed"
    """32-true, bf16-mixed or 16-mixed (use 16-mixed on GPUs without bfloat16, e.g. V100, T4)."""
    resume: bool = False
    """Continue the newest run of this experiment: each unfinished session from its newest checkpoint."""
    checkpoint_path: str = ""
    """With --resume: continue the first unfinished session from it; alone: start from its weights."""
    init_from: str = ""
    """Start the first session from this checkpoint's weights (any IllRecNet checkpoint, the shipped
    starter model included) with a fresh optimizer and learning-rate schedule: fine-tuning, e.g. on
    LOL after synthetic pre-training. Its architecture must match this run's."""
    bench_data_path: str = "data/3_bench"
    """After training, benchmark the final best checkpoint on this split (skipped if it does not exist)."""
    infer_data_path: str = "data/4_infer"
    """After training, enhance this split's low/ images (skipped if it does not exist)."""
    bench_metrics: list[str] = field(default_factory=lambda: ["PSNR", "SSIM", "LPIPS", "NIQE", "BRISQUE"])
    """Metrics of the closing bench table."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_from and self.checkpoint_path:
            raise ValueError("give --init_from (weights only) or --checkpoint_path, not both")


def get_hparams() -> TrainHparams:
    """The defaults of ``train.py`` (every field is also a command-line flag)."""
    return TrainHparams()


def main(hp: TrainHparams) -> None:
    from engine.run_dirs import is_rank_zero
    from engine.runner import TrainingInterrupted, evaluate_run, resume_command, run_training

    try:
        run_dir, results = run_training(hp)
    except TrainingInterrupted as stop:
        command = resume_command(sys.argv, checkpoint_in_config=bool(hp.checkpoint_path))
        print(f"\n{stop}\nresume with:\n  {command}", file=sys.stderr)
        sys.exit(stop.exit_code)
    if not is_rank_zero():
        return  # the summary, bench and inference belong to rank 0
    # The closing bench uses the best checkpoint over all sessions (lowest valid/3_total).
    best = min(results, key=lambda r: r.valid_total) if results else None
    closing = evaluate_run(hp, run_dir, best.best_checkpoint) if best else ""
    print(f"\nIllRecNet training finished: {run_dir}")
    for r in results:
        print(
            f"  session {r.session:<9} best valid PSNR {r.valid_psnr:.2f} dB, SSIM {r.valid_ssim:.4f} "
            f"(epochs {r.epochs}, steps {r.global_step})\n"
            f"    best checkpoint: {r.best_checkpoint}\n    last checkpoint: {r.last_checkpoint}"
        )
    print(closing)
    print(f"TensorBoard logs: {run_dir}\n  tensorboard --logdir {run_dir.parent}")


if __name__ == "__main__":
    hparams = parse_hparams(type(get_hparams()), __doc__, sys.argv[1:])
    run_main(main, hparams)
