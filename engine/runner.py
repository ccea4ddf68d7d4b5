"""Training runs: the frozen -> trainable sessions, resume, and the closing summary, bench and inference.

Layout of one run (``train.py`` invocation)::

    <log_dir>/<experiment_name>/version_<N>/
        frozen/     hparams.yaml, events.out.tfevents.*, checkpoints/{best,last}.ckpt, result.json
        trainable/  the same
        summary.json

Every run gets a fresh ``version_<N>`` (:mod:`engine.run_dirs`). ``--resume`` picks the newest
version and continues each session that has no ``result.json`` from its newest checkpoint:
``last.ckpt`` (written after every finished epoch) or ``interrupted.ckpt`` (written on Ctrl-C, SIGTERM
or an error), whichever holds more steps. A checkpoint that cannot be read or does not fit the model
is an error naming it and the other checkpoints of its folder, never a silent fresh start.
"""

import json
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data.dataloader import LowLightDataModule
from engine.bench import BenchSettings, run_bench
from engine.callbacks import INTERRUPTED, LAST, MONITOR, GracefulInterrupt, InterruptCheckpoint
from engine.engine import LightningEngine
from engine.infer import collect_inputs, run_infer
from engine.run_dirs import is_rank_zero, resolve_run_dir
from model.model import (
    ARCHITECTURE,
    CheckpointError,
    LowLightEnhancerLightning,
    check_compatible,
    read_checkpoint,
)
from utils.hparams import TileHparams
from utils.utils import atomic_write_text, log

SESSIONS = ("frozen", "trainable")
RESUME_FIELDS = (*ARCHITECTURE, "trainable_separation")
"""Hyper-parameters a resumed checkpoint must share with the session (its optimizer state depends on them)."""
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops")


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


class TrainingInterrupted(RuntimeError):
    """Training stopped on Ctrl-C (SIGINT) or SIGTERM; ``exit_code`` is 130 or 143 (128 + signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_module(hp, session: str) -> LowLightEnhancerLightning:
    """The LightningModule of one session of ``hp`` (a ``TrainHparams``: every group it needs), the
    separation trainable in the ``trainable`` session."""
    return LowLightEnhancerLightning(model=hp, optim=hp, loop=hp, trainable_separation=session == "trainable")


def run_training(hp) -> tuple[Path, list[SessionResult]]:
    """Run the requested sessions of ``hp`` (a ``TrainHparams``); returns the run folder and results.

    Raises :class:`TrainingInterrupted` after Ctrl-C or SIGTERM (``interrupted.ckpt`` saved, logs
    flushed) and :class:`~model.model.CheckpointError` for a checkpoint that cannot be resumed.
    """
    engine = LightningEngine.from_hparams(hp)
    init_from = getattr(hp, "init_from", "")
    explicit = Path(hp.checkpoint_path or init_from) if (hp.checkpoint_path or init_from) else None
    if explicit is not None:  # missing, unreadable or another architecture: an error before any folder
        checkpoint = read_checkpoint(explicit)
        if init_from:
            check_compatible(build_module(hp, SESSIONS[0]), checkpoint, explicit)
    run_dir = resolve_run_dir(Path(hp.log_dir) / hp.experiment_name, hp.resume)
    sessions = SESSIONS if hp.session == "both" else (hp.session,)
    results: list[SessionResult] = []
    for number, session in enumerate(sessions):
        if number and init_from:
            explicit = None  # --init_from is for the first session; the next starts from its best
        session_dir = run_dir / session
        done = session_dir / "result.json"
        if done.is_file():
            result = SessionResult(**json.loads(done.read_text()))
            log.info("session %s already finished (%s); skipping it", session, done)
            results.append(result)
            continue
        loop = dict(
            patience=hp.patience,
            max_epochs=hp.max_epochs,
            check_val_every_n_epoch=hp.check_val_every_n_epoch,
            log_every_n_steps=hp.log_every_n_steps,
            gradient_clip_val=hp.gradient_clip_val or None,
        )
        # A resumed session that stopped before its first last.ckpt starts again from step 0, hiding
        # what the stopped attempt logged (one Trainer: a second one would seed again after the model).
        again = hp.resume and (explicit is None or bool(init_from)) and session_dir.is_dir()
        again = again and not any(
            (session_dir / "checkpoints" / f"{stem}.ckpt").is_file() for stem in (LAST, INTERRUPTED)
        )
        trainer = engine.fit_trainer(session_dir, purge_step=0 if again else None, **loop)
        module = build_module(hp, session)  # after fit_trainer seeded everything: --seed sets the weights
        ckpt_path = None
        if explicit is not None and hp.resume and not init_from:
            ckpt_path, explicit = explicit, None  # the first unfinished session continues from it
            checkpoint = resume_state(ckpt_path, module)
        elif hp.resume:
            ckpt_path, checkpoint = newest_checkpoint(session_dir, module) or (None, None)
        if again:
            log.info("session %s: it stopped before finishing its first epoch; starting it again", session)
        if ckpt_path is not None:
            log.info(
                "session %s: resuming from %s (epoch %d, global step %d%s)",
                session,
                ckpt_path,
                checkpoint["epoch"],
                checkpoint["global_step"],
                _where(checkpoint),
            )
            # TensorBoard hides what the stopped run logged from this step on (the resumed run logs it
            # again); the RNG states come from the checkpoint, so seeding again changes nothing.
            trainer = engine.fit_trainer(session_dir, purge_step=checkpoint["global_step"], **loop)
        else:
            explicit = _initialise(module, session, session_dir, explicit, results)
        datamodule = LowLightDataModule(hp, hp.seed)
        if ckpt_path is not None:  # where Lightning continues: the epoch, and the batches it had trained
            loops = checkpoint["loops"]["fit_loop"]
            epochs = loops["epoch_progress"]["current"]
            datamodule.resume_epoch = epochs["processed"]
            if epochs["started"] > epochs["processed"]:  # stopped inside that epoch (interrupted.ckpt)
                # "processed": batches whose optimizer step ran. A Ctrl-C stops in on_train_batch_end,
                # before Lightning counts the batch "completed"; on resume Lightning treats it as done.
                datamodule.resume_batches = loops["epoch_loop.batch_progress"]["current"]["processed"]
        try:
            with warnings.catch_warnings():
                # Lightning warns that a loader without state_dict repeats data after a stop inside
                # an epoch; this one does not (datamodule.resume_batches, SeededSampler.skip).
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
                engine.train(module, datamodule, trainer, ckpt_path=str(ckpt_path) if ckpt_path else None)
            result = _finish_session(session, trainer, module, datamodule)
        except SystemExit as stop:  # Lightning: sys.exit(1) after Ctrl-C, SIGTERMException on SIGTERM
            raise _interrupted(stop, session, trainer) from stop
        except Exception as error:
            # timeout(1), SLURM and `kill -TERM -<pgid>` signal the loader workers too; their death
            # can surface (a RuntimeError from the loader) before Lightning's own SIGTERM check.
            if trainer.received_sigterm:
                raise _interrupted(SIGTERMException(), session, trainer) from error
            raise
        if trainer.is_global_zero:
            atomic_write_text(done, json.dumps(result.__dict__, indent=2))
        results.append(result)
    if results and is_rank_zero():
        atomic_write_text(run_dir / "summary.json", json.dumps([r.__dict__ for r in results], indent=2))
    return run_dir, results


def newest_checkpoint(session_dir: Path, module: LowLightEnhancerLightning) -> tuple[Path, dict] | None:
    """The checkpoint ``--resume`` continues a session from: ``last.ckpt`` or ``interrupted.ckpt``,
    whichever has more steps (``last.ckpt`` on a tie), each checked by :func:`resume_state`. None when
    the session has no checkpoint yet, or only the ``best.ckpt`` of its first epoch (a stop between
    that file and the epoch's ``last.ckpt``); an error when its folder holds only other checkpoints."""
    ckpt_dir = session_dir / "checkpoints"
    found = [path for stem in (LAST, INTERRUPTED) if (path := ckpt_dir / f"{stem}.ckpt").is_file()]
    if not found:
        others = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
        if others == ["best.ckpt"] and read_checkpoint(ckpt_dir / "best.ckpt").get("epoch") == 0:
            return None
        if others:
            raise CheckpointError(
                f"--resume: {ckpt_dir} has no last.ckpt but holds {', '.join(others)}; continue from one "
                "of them with --checkpoint_path <file> --resume true"
            )
        return None
    states = [(path, resume_state(path, module)) for path in found]
    return max(states, key=lambda item: item[1]["global_step"])


def resume_state(path: Path, module: LowLightEnhancerLightning) -> dict:
    """Read ``path`` and check that training can continue from it: readable, IllRecNet weights that
    fit ``module`` (same :data:`RESUME_FIELDS`) and the optimizer, scheduler and loop states. The
    error names the file and lists the other checkpoints of its folder."""
    path = Path(path)
    try:
        checkpoint = read_checkpoint(path)
        check_compatible(module, checkpoint, path, RESUME_FIELDS)
        missing = [key for key in TRAINING_STATE if key not in checkpoint]
        if missing:
            raise CheckpointError(
                f"{path} holds weights but no training state (no {', '.join(missing)}); pass it without "
                "--resume to start a new run from its weights"
            )
    except CheckpointError as error:
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
        listed = ", ".join(others) or "none"
        hint = " (continue from one with --checkpoint_path <file> --resume true)" if others else ""
        raise CheckpointError(
            f"cannot resume: {error}\n  other checkpoints in {path.parent}: {listed}{hint}"
        ) from error
    return checkpoint


def _initialise(
    module: LowLightEnhancerLightning,
    session: str,
    session_dir: Path,
    explicit: Path | None,
    results: list[SessionResult],
) -> Path | None:
    """Weights of a session that starts without a checkpoint of its own: ``--checkpoint_path`` (for the
    first session; recorded in ``init.json`` so that a resumed run starts that session the same way),
    else the frozen session's best for the trainable one (this run folder's, also when an earlier
    invocation finished it), else the seeded random init (a warning for the trainable session). Returns the
    explicit checkpoint still unused."""
    record = session_dir / "init.json"
    source = None
    if explicit is not None:
        source, explicit = explicit, None
        atomic_write_text(record, json.dumps({"checkpoint_path": str(source.resolve())}, indent=2))
    elif record.is_file():
        source = Path(json.loads(record.read_text())["checkpoint_path"])
    elif session == "trainable":
        source = _frozen_best(session_dir.parent, results)
        if source is None:
            log.warning(
                "session trainable starts from random weights: no finished frozen session in %s "
                "(run --session both, or --session trainable --resume true after --session frozen, "
                "or pass --checkpoint_path)",
                session_dir.parent,
            )
    if source is not None:
        checkpoint = read_checkpoint(source)
        check_compatible(module, checkpoint, source)
        module.load_state_dict(checkpoint["state_dict"])
        log.info("session %s starts from the weights of %s", session, source)
    return explicit


def _frozen_best(run_dir: Path, results: list[SessionResult]) -> Path | None:
    """Best checkpoint of the frozen session: from this invocation, else from ``frozen/result.json``
    of the run folder (``--session frozen`` then ``--session trainable --resume true``)."""
    frozen = next((r for r in results if r.session == "frozen"), None)
    done = run_dir / "frozen" / "result.json"
    if frozen is None and done.is_file():
        frozen = SessionResult(**json.loads(done.read_text()))
    return Path(frozen.best_checkpoint) if frozen is not None else None


def _interrupted(stop: SystemExit, session: str, trainer) -> TrainingInterrupted:
    ctrl_c = any(isinstance(c, GracefulInterrupt) and c.requested for c in trainer.callbacks)
    sigterm = isinstance(stop, SIGTERMException) and not ctrl_c  # a Ctrl-C stops through SIGTERM
    signal_name, code = ("SIGTERM", 143) if sigterm else ("Ctrl-C (SIGINT)", 130)
    saver = next((c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint)), None)
    saved = f"checkpoint saved: {saver.saved}" if saver is not None and saver.saved else "no checkpoint saved"
    return TrainingInterrupted(
        f"training stopped by {signal_name} in session {session} at epoch {trainer.current_epoch}, "
        f"global step {trainer.global_step}; {saved}; TensorBoard logs flushed",
        code,
    )


def resume_command(argv: list[str], checkpoint_in_config: bool = False) -> str:
    """The command that continues an interrupted ``train.py`` run: the same arguments without
    ``--resume`` and ``--checkpoint_path`` (the run's own checkpoints are newer), plus ``--resume true``."""
    args, skip_value, dropped_checkpoint = [], False, False
    for arg in argv[1:]:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume", "--checkpoint_path"):
            skip_value = "=" not in arg
            dropped_checkpoint |= name == "--checkpoint_path"
            continue
        args.append(arg)
    if checkpoint_in_config and not dropped_checkpoint:
        args += ["--checkpoint_path", ""]
    return shlex.join(["python", argv[0], *args, "--resume", "true"])


def _where(checkpoint: dict) -> str:
    """Where in its epoch a checkpoint was saved, for the resume message."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loops.get("epoch_progress", {}).get("current", {})
    if epochs.get("started", 0) > epochs.get("processed", 0):  # inside an epoch (interrupted.ckpt)
        done = loops["epoch_loop.batch_progress"]["current"]["processed"]
        return f"; stopped after batch {done} of epoch {checkpoint['epoch']}"
    return f"; after {epochs.get('processed', 0)} finished epochs"


def _finish_session(session, trainer, module, datamodule) -> SessionResult:
    """Validate the best checkpoint once more to report what it reached."""
    best_cb, last_cb = (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint))
    best = best_cb.best_model_path or last_cb.best_model_path
    # Without the loggers: the curves already hold every epoch's values, and a validate() with them
    # would log the hyper-parameters' placeholder hp_metric at step 0 a second time.
    loggers, trainer.loggers = trainer.loggers, []
    try:
        metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    finally:
        trainer.loggers = loggers
    if trainer.logger is not None:  # the HPARAMS tab of TensorBoard: hyper-parameters vs best PSNR
        trainer.logger.log_metrics({"hp_metric": float(metrics["valid/psnr"])}, step=trainer.global_step)
        trainer.logger.finalize("success")
    return SessionResult(
        session=session,
        best_checkpoint=best,
        last_checkpoint=last_cb.best_model_path or str(Path(last_cb.dirpath) / f"{LAST}.ckpt"),
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

    from model.model import load_checkpoint

    if not is_rank_zero():
        return ""
    # fp32 whatever the training precision: the closing table is the one bench.py (fp32 default) gives
    engine = LightningEngine.from_hparams(hp, devices=1, num_nodes=1, strategy="auto", precision="32-true")
    module = load_checkpoint(checkpoint)
    lines = []
    if Path(hp.bench_data_path).is_dir():
        settings = BenchSettings(
            bench_data_path=hp.bench_data_path,
            checkpoint_path=checkpoint,
            metrics=hp.bench_metrics,
            strict=False,
            tiles=TileHparams(),
            save_images=True,
            cache_gb=hp.cache_gb,
        )
        writer = SummaryWriter(str(run_dir / "bench"))
        try:
            result = run_bench(engine.enhancer(module), settings, run_dir / "bench", logger=writer)
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
        summary = run_infer(
            engine.enhancer(module),
            inputs=collect_inputs(hp.infer_data_path, None),
            out_dir=run_dir / "inference",
            tiles=TileHparams(),
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
