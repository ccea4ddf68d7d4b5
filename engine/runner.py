"""Training runs: run folders, the frozen -> trainable sessions, resume, and the closing summary.

Layout of one run (``train.py`` invocation)::

    <log_dir>/<experiment_name>/version_<N>/
        frozen/     hparams.yaml, events.out.tfevents.*, checkpoints/{best,last}.ckpt, result.json
        trainable/  the same
        summary.json

Every run gets a fresh ``version_<N>`` (created with an exclusive ``mkdir``), so two runs with the
same ``experiment_name`` never write into each other's folders. ``--resume`` picks the newest
version and continues each session that has no ``result.json`` from its ``last.ckpt``.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from data.dataloader import LowLightDataModule
from engine.engine import MONITOR, LightningEngine
from model.model import LowLightEnhancerLightning
from utils.hparams import DataHparams, ModelHparams, OptimHparams
from utils.utils import atomic_write_text, log

SESSIONS = ("frozen", "trainable")
RUN_DIR_ENV = "ILLRECNET_RUN_DIR"  # shared with DDP worker processes that re-run the script


@dataclass
class SessionResult:
    session: str
    best_checkpoint: str
    last_checkpoint: str
    valid_psnr: float
    valid_ssim: float
    valid_total: float
    epochs: int
    global_step: int


def new_run_dir(experiment_dir: Path) -> Path:
    """Create and return ``experiment_dir/version_<N>`` with the next free N (race-free)."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [
            int(m.group(1)) for p in experiment_dir.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
        ]
        candidate = experiment_dir / f"version_{max(taken, default=-1) + 1}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def latest_run_dir(experiment_dir: Path) -> Path | None:
    """The newest ``version_<N>`` folder, or None."""
    if not experiment_dir.is_dir():
        return None
    runs = [
        (int(m.group(1)), p)
        for p in experiment_dir.iterdir()
        if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return max(runs)[1] if runs else None


def resolve_run_dir(experiment_dir: Path, resume: bool) -> Path:
    """The run folder of this invocation (shared with DDP workers through an environment variable)."""
    if shared := os.environ.get(RUN_DIR_ENV):
        return Path(shared)
    run_dir = None
    if resume:
        run_dir = latest_run_dir(experiment_dir)
        if run_dir is None:
            log.warning("--resume: no earlier run under %s; starting a fresh run", experiment_dir)
    run_dir = run_dir or new_run_dir(experiment_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def build_datamodule(hp: DataHparams) -> LowLightDataModule:
    return LowLightDataModule(
        train_data_path=hp.train_data_path,
        valid_data_path=hp.valid_data_path,
        image_size=hp.image_size,
        batch_size=hp.batch_size,
        num_workers=hp.num_workers,
        train_repeat=hp.train_repeat,
    )


def build_module(hp: ModelHparams | OptimHparams, session: str) -> LowLightEnhancerLightning:
    return LowLightEnhancerLightning(
        channels=hp.channels,
        kernel_size=hp.kernel_size,
        sigma=hp.sigma,
        trainable_separation=session == "trainable",
        embed_dim=hp.embed_dim,
        num_heads=hp.num_heads,
        mlp_ratio=hp.mlp_ratio,
        num_resolution=hp.num_resolution,
        dropout_ratio=hp.dropout_ratio,
        lr=hp.lr,
        betas=list(hp.betas),
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        warmup_ratio=hp.warmup_ratio,
        min_lr_ratio=hp.min_lr_ratio,
        mae_weight=hp.mae_weight,
        mse_weight=hp.mse_weight,
        num_log_images=hp.num_log_images,
    )


def run_training(hp) -> tuple[Path, list[SessionResult]]:
    """Run the requested sessions of ``hp`` (a ``TrainHparams``); returns the run folder and results."""
    engine = LightningEngine(
        accelerator=hp.accelerator,
        devices=hp.devices,
        num_nodes=hp.num_nodes,
        strategy=hp.strategy,
        precision=hp.precision,
        seed=hp.seed,
        deterministic=hp.deterministic,
    )
    run_dir = resolve_run_dir(Path(hp.log_dir) / hp.experiment_name, hp.resume)
    sessions = SESSIONS if hp.session == "both" else (hp.session,)
    results: list[SessionResult] = []
    for session in sessions:
        session_dir = run_dir / session
        done = session_dir / "result.json"
        if done.is_file():
            result = SessionResult(**json.loads(done.read_text()))
            log.info("session %s already finished (%s); skipping it", session, done)
            results.append(result)
            continue
        last = session_dir / "checkpoints" / "last.ckpt"
        ckpt_path = None
        if hp.resume and last.is_file():
            ckpt_path = str(last)
            log.info("resuming session %s from %s", session, last)
        module = build_module(hp, session)
        if ckpt_path is None and session == "trainable" and results:
            # The trainable session starts from the frozen session's best weights.
            state = torch.load(results[-1].best_checkpoint, map_location="cpu", weights_only=True)[
                "state_dict"
            ]
            module.load_state_dict(state)
            log.info("session trainable starts from %s", results[-1].best_checkpoint)
        trainer = engine.fit_trainer(
            session_dir,
            patience=hp.patience,
            max_epochs=hp.max_epochs,
            check_val_every_n_epoch=hp.check_val_every_n_epoch,
            log_every_n_steps=hp.log_every_n_steps,
            gradient_clip_val=hp.gradient_clip_val or None,
        )
        datamodule = build_datamodule(hp)
        engine.train(module, datamodule, trainer, ckpt_path=ckpt_path)
        result = _finish_session(session, trainer, module, datamodule)
        if trainer.is_global_zero:
            atomic_write_text(done, json.dumps(result.__dict__, indent=2))
        results.append(result)
    if results and int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        atomic_write_text(run_dir / "summary.json", json.dumps([r.__dict__ for r in results], indent=2))
    return run_dir, results


def _finish_session(session, trainer, module, datamodule) -> SessionResult:
    """Validate the best checkpoint once more to report what it reached."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path or callback.last_model_path
    metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    return SessionResult(
        session=session,
        best_checkpoint=best,
        last_checkpoint=str(Path(callback.dirpath) / "last.ckpt"),
        valid_psnr=float(metrics["valid/psnr"]),
        valid_ssim=float(metrics["valid/ssim"]),
        valid_total=float(metrics[MONITOR]),
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
    )


def evaluate_run(hp, run_dir: Path, checkpoint: str) -> str:
    """Close a run the way a newcomer wants to see it: a bench table and enhanced images of the
    bench/infer splits (each skipped with a note when its folder does not exist). Rank 0 only."""
    from torch.utils.tensorboard import SummaryWriter

    from engine.predict import TileSettings, collect_inputs
    from model.model import load_checkpoint

    if int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0:
        return ""
    engine = LightningEngine(accelerator=hp.accelerator, devices=1, precision=hp.precision, seed=hp.seed)
    module = load_checkpoint(checkpoint)
    lines = []
    if Path(hp.bench_data_path).is_dir():
        writer = SummaryWriter(str(run_dir / "bench"))
        try:
            result = engine.bench(
                module,
                bench_data_path=hp.bench_data_path,
                out_dir=run_dir / "bench",
                metrics=hp.bench_metrics,
                strict=False,
                tiles=TileSettings(),
                save_images=True,
                checkpoint_path=checkpoint,
                logger=writer,
            )
        finally:
            writer.close()
        lines += [
            f"\nBench of {checkpoint} on {hp.bench_data_path}:\n",
            result.tables,
            f"bench files: {run_dir / 'bench'}",
        ]
    else:
        lines.append(f"no bench split at {hp.bench_data_path}; skipped the closing bench")
    if Path(hp.infer_data_path).is_dir():
        summary = engine.infer(
            module,
            inputs=collect_inputs(hp.infer_data_path, None),
            out_dir=run_dir / "inference",
            tiles=TileSettings(),
            overwrite=False,
            checkpoint_path=checkpoint,
        )
        lines.append(
            f"enhanced images: {run_dir / 'inference'} ({len(summary.enhanced)} written, "
            f"{len(summary.failed)} failed)"
        )
    else:
        lines.append(f"no infer split at {hp.infer_data_path}; skipped the closing inference")
    return "\n".join(lines)
