"""Benchmark a trained IllRecNet checkpoint, or compare methods: per-image PSNR, SSIM, LPIPS, NIQE, BRISQUE.

Every sub-dataset under ``--bench_data_path`` is enhanced at native resolution (the architecture
comes from the checkpoint) and scored under an explicit protocol (RGB, outputs clamped and rounded
to 8 bits; GT-mean numbers only in their own ``*_GTmean`` columns). Writes ``bench.csv`` (one row
per image) and ``bench.json`` (means, counts, protocol, checkpoint sha256, package versions) into
``<log_dir>/<experiment_name>/version_<N>/``, prints one Markdown table per sub-dataset and logs
them to TensorBoard. Sub-datasets with only ``low/`` get the no-reference metrics.

``--methods '[ours=path/best.ckpt, Retinexformer=results/retinexformer/]'`` scores several methods
under the same protocol (a checkpoint is enhanced here, a folder holds another method's outputs,
``FOLDER/<sub-dataset>/<stem>.*``): one table per sub-dataset and one over all, paired differences
against the first method, as table.md, table.csv, table.tex (booktabs), bench.csv and bench.json;
``--report`` adds report.html (engine/compare.py, engine/report.py).
"""

import sys
from dataclasses import dataclass, field

from utils.hparams import CacheHparams, RuntimeHparams, TileHparams
from utils.utils import log, parse_hparams, run_main


@dataclass
class BenchHparams(TileHparams, RuntimeHparams, CacheHparams):
    """Benchmark a checkpoint."""

    checkpoint_path: str = ""
    """Checkpoint to evaluate; empty: the shipped starter model (checkpoints/starter.ckpt)."""
    methods: list[str] = field(default_factory=list)
    """Methods to compare, 'label=path' each (a checkpoint, or a folder of another method's outputs
    FOLDER/<sub-dataset>/<stem>.*); the first is the baseline of the paired differences."""
    report: bool = False
    """Also write report.html: images side by side, a before/after slider, sortable scores."""
    bench_data_path: str = "data/3_bench"
    """Bench split: sub-datasets with low/ and (optionally) high/."""
    metrics: list[str] = field(default_factory=lambda: ["PSNR", "SSIM", "LPIPS", "NIQE", "BRISQUE"])
    """Metrics to compute, e.g. '[PSNR, SSIM]' for a fast table."""
    strict_metrics: bool = False
    """Fail instead of writing n/a when a metric cannot be computed (e.g. LPIPS weights missing offline)."""
    self_ensemble: bool = False
    """Average the outputs of the 8 flips/rotations of each image."""
    save_images: bool = False
    """Write low | enhanced | high comparison strips (PNG) for every image."""
    log_dir: str = "runs/bench"
    """Root folder of bench results."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from utils.metrics import METRICS

        unknown = sorted({m.upper() for m in self.metrics} - set(METRICS))
        if unknown or not self.metrics:
            raise ValueError(f"--metrics must be a non-empty subset of {list(METRICS)}, got {self.metrics}")
        if self.methods and self.checkpoint_path:
            raise ValueError("give --methods or --checkpoint_path (the one-method shorthand), not both")


def get_hparams() -> BenchHparams:
    return BenchHparams(checkpoint_path="")


def main(hp: BenchHparams) -> None:
    from pathlib import Path

    from torch.utils.tensorboard import SummaryWriter

    from engine.bench import BenchSettings, run_bench
    from engine.engine import LightningEngine
    from engine.run_dirs import discard_if_unused, new_run_dir
    from model.model import load_checkpoint, resolve_checkpoint
    from utils.hparams import field_values

    engine = LightningEngine.from_hparams(hp)
    if hp.methods or hp.report:
        compare(hp, engine)
        return
    hp.checkpoint_path = str(resolve_checkpoint(hp.checkpoint_path))  # default: the shipped starter model
    module = load_checkpoint(hp.checkpoint_path)
    settings = BenchSettings(
        bench_data_path=hp.bench_data_path,
        checkpoint_path=hp.checkpoint_path,
        metrics=hp.metrics,
        strict=hp.strict_metrics,
        tiles=TileHparams(**field_values(hp, TileHparams)),
        save_images=hp.save_images,
        cache_gb=hp.cache_gb,
    )
    out_dir = new_run_dir(Path(hp.log_dir) / hp.experiment_name)
    writer = SummaryWriter(str(out_dir))
    try:
        result = run_bench(engine.enhancer(module, hp.self_ensemble), settings, out_dir, logger=writer)
    except BaseException:  # a failed run (bad data, a --strict_metrics error) leaves no empty folder
        writer.close()
        try:
            discard_if_unused(out_dir)
        except OSError:  # never let the clean-up hide the error that stopped the run
            log.debug("could not remove %s", out_dir, exc_info=True)
        raise
    finally:
        writer.close()
    print(f"\n{result.tables}\nwritten: {out_dir / 'bench.csv'}, {out_dir / 'bench.json'}")


def compare(hp: BenchHparams, engine) -> None:
    """``--methods`` (or ``--report`` for one checkpoint): every method on every sub-dataset."""
    from pathlib import Path

    from engine.compare import parse_methods, run_compare
    from engine.run_dirs import discard_if_unused, new_run_dir
    from model.model import resolve_checkpoint

    if hp.methods:
        methods = parse_methods(hp.methods)
    else:
        path = resolve_checkpoint(hp.checkpoint_path)
        methods = parse_methods([f"{path.stem}={path}"])
    out_dir = new_run_dir(Path(hp.log_dir) / hp.experiment_name)
    try:
        result = run_compare(
            methods,
            hp.bench_data_path,
            out_dir,
            hp.metrics,
            hp.strict_metrics,
            hp,
            engine.device(),
            self_ensemble=hp.self_ensemble,
            precision=hp.precision,
            cache_gb=hp.cache_gb,
            report=hp.report,
        )
    except BaseException:
        try:
            discard_if_unused(out_dir)
        except OSError:
            log.debug("could not remove %s", out_dir, exc_info=True)
        raise
    written = ", ".join(
        str(out_dir / f) for f in ("table.md", "table.csv", "table.tex", "bench.csv", "bench.json")
    )
    print(f"\n{result.tables}\nwritten: {written}" + (f", {out_dir / 'report.html'}" if hp.report else ""))


if __name__ == "__main__":
    hparams = parse_hparams(type(get_hparams()), __doc__, sys.argv[1:])
    run_main(main, hparams)
