"""``LightningEngine``: every Trainer of the project is built here, in one method.

A stage only chooses its callbacks and loop limits; logger, precision, accelerator, devices,
strategy and seeding come from the engine's runtime settings. The GPU is never chosen through
``CUDA_VISIBLE_DEVICES`` in code: ``devices`` and ``accelerator`` do that.

Fault tolerance lives here too: checkpoints are written atomically (:class:`AtomicCheckpointIO`),
carry the Python/NumPy/torch RNG states that Lightning does not save (:class:`RngState`), a Ctrl-C
stops at the next batch boundary like Lightning's SIGTERM handling (:class:`GracefulInterrupt`),
an interruption writes ``interrupted.ckpt`` (:class:`InterruptCheckpoint`), and TensorBoard's
events are on disk before any checkpoint is (:class:`FlushLogsOnCheckpoint`), and a resume keeps
the record of a ``best.ckpt`` newer than its starting point (:class:`KeepNewerBest`).
"""

import io
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from engine.predict import Enhance, run_bench, run_infer
from utils.hparams import check_compile_mode, first_device_index
from utils.utils import atomic_write_bytes, log

MONITOR = "valid/3_total"
LAST = "last"
"""File stem of the checkpoint written after every finished training epoch."""
INTERRUPTED = "interrupted"
"""File stem of the checkpoint written when training stops on a signal or an error."""


class EngineError(RuntimeError):
    """A runtime setting that cannot work on this machine (e.g. a GPU asked for and none present)."""


class LightningEngine:
    """Builds Trainers and runs the train / valid stages.

    Args:
        accelerator, devices, num_nodes, strategy, precision: passed to ``lightning.Trainer``.
        seed: ``seed_everything(seed, workers=True)`` is called before every stage.
        deterministic: ``torch.use_deterministic_algorithms`` through the Trainer.
        compile: ``torch.compile`` the enhancer before every stage (:meth:`compiled`).
        compile_mode: ``torch.compile``'s mode (``reduce-overhead``: CUDA graphs on a GPU).
    """

    def __init__(
        self,
        accelerator: str = "auto",
        devices: str | int | list[int] = "auto",
        num_nodes: int = 1,
        strategy: str = "auto",
        precision: str = "32-true",
        seed: int = 42,
        deterministic: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
    ) -> None:
        self.accelerator = accelerator
        self.devices = devices
        self.num_nodes = num_nodes
        self.strategy = strategy
        self.precision = precision
        self.seed = seed
        self.deterministic = deterministic
        self.compile = compile
        self.compile_mode = compile_mode
        check_compile_mode(compile, compile_mode)
        _check_accelerator(accelerator)

    @classmethod
    def from_hparams(cls, hp: Any, **overrides: Any) -> "LightningEngine":
        """The engine a script's hyper-parameters ask for (the :class:`RuntimeHparams` fields it has,
        plus ``deterministic`` where present); ``overrides`` win."""
        names = (
            "accelerator",
            "devices",
            "num_nodes",
            "strategy",
            "precision",
            "seed",
            "deterministic",
            "compile",
            "compile_mode",
        )
        return cls(**{**{n: getattr(hp, n) for n in names if hasattr(hp, n)}, **overrides})

    def compiled(self, module: torch.nn.Module, training: bool = False) -> torch.nn.Module:
        """With ``compile``, wrap the module's enhancer (``module.model``, or the module itself) in
        ``torch.compile`` in place (``nn.Module.compile``: parameter names and checkpoints are
        unchanged).

        valid/bench/infer: the first size compiles a static graph, the next one recompiles with
        symbolic height and width (dynamo's automatic dynamic shapes), which later sizes reuse.
        Training (``training``) compiles static shapes: crops have one size, and in torch 2.14.1
        inductor fails on the backward of this network with symbolic sizes ("cannot determine truth
        value of Relational"). Validation during training then compiles one graph per image size, up
        to dynamo's cache limit (8), beyond which new sizes run eagerly.
        """
        target = getattr(module, "model", module)
        if self.compile and getattr(target, "_compiled_call_impl", None) is None:
            target.compile(dynamic=False if training else None, mode=self.compile_mode)
        return module

    def trainer(
        self, callbacks: list[Callback], logger: TensorBoardLogger | bool = False, **loop: Any
    ) -> L.Trainer:
        """The one Trainer factory. ``loop`` holds the stage's loop limits (``max_epochs``, ...)."""
        L.seed_everything(self.seed, workers=True, verbose=False)
        return L.Trainer(
            accelerator=self.accelerator,
            devices=self.devices,
            num_nodes=self.num_nodes,
            strategy=self.strategy,
            precision=self.precision,
            deterministic=self.deterministic,
            logger=logger,
            callbacks=[TQDMProgressBar(refresh_rate=1), *callbacks],
            plugins=[AtomicCheckpointIO()],
            enable_model_summary=False,
            **loop,
        )

    # ------------------------------------------------------------------------------------ stages
    def fit_trainer(
        self, session_dir: Path, patience: int, purge_step: int | None = None, **loop: Any
    ) -> L.Trainer:
        """Trainer for one training session: TensorBoard under ``session_dir``, ``best.ckpt`` (best by
        ``valid/3_total``) and ``last.ckpt`` (after every finished epoch) checkpoints, early stopping,
        LR monitor, RNG states in every checkpoint, graceful Ctrl-C and ``interrupted.ckpt`` on
        interruption.

        ``purge_step``: the global step the session continues from (0 for a session started again).
        TensorBoard then hides what the stopped run logged at that step or later
        (``SummaryWriter(purge_step=...)``), which the new run logs again; the placeholder ``hp_metric``
        of step 0 is written only when step 0 is logged anew.
        """
        ckpt_dir = session_dir / "checkpoints"
        callbacks = [
            # Two callbacks, as Lightning's documentation intends: save_last=True would write
            # last.ckpt only when a top-k checkpoint is saved, i.e. "the last improvement".
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=MONITOR,
                mode="min",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            # monitor=None: the newest epoch, at the end of every training epoch whatever was
            # monitored. Listed second, so at an epoch end best.ckpt is written first and last.ckpt
            # carries the best callback's updated state.
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename=LAST,
                monitor=None,
                save_top_k=1,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            ),
            KeepNewerBest(),
            EarlyStopping(monitor=MONITOR, mode="min", patience=patience),
            LearningRateMonitor(logging_interval="step"),
            RngState(),
            FlushLogsOnCheckpoint(),
            GracefulInterrupt(),
            InterruptCheckpoint(dirpath=ckpt_dir, filename=INTERRUPTED),
        ]
        purge = {} if purge_step is None else {"purge_step": purge_step}
        logger = TensorBoardLogger(
            save_dir=str(session_dir.parent),
            name=session_dir.name,
            version="",
            default_hp_metric=not purge_step,
            **purge,
        )
        return self.trainer(callbacks, logger=logger, **loop)

    def train(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        trainer: L.Trainer,
        ckpt_path: str | None = None,
    ) -> None:
        trainer.fit(self.compiled(module, training=True), datamodule=datamodule, ckpt_path=ckpt_path)

    def valid(self, module: L.LightningModule, datamodule: L.LightningDataModule) -> list[dict[str, float]]:
        return self.trainer([], logger=False).validate(
            self.compiled(module), datamodule=datamodule, verbose=False
        )

    def bench(self, module: torch.nn.Module, self_ensemble: bool = False, **kwargs: Any):
        return run_bench(
            Enhance(self.compiled(module), self.device(), self_ensemble, self.precision), **kwargs
        )

    def infer(self, module: torch.nn.Module, self_ensemble: bool = False, **kwargs: Any):
        return run_infer(
            Enhance(self.compiled(module), self.device(), self_ensemble, self.precision), **kwargs
        )

    def device(self) -> torch.device:
        """The single device of bench/infer. They process each image exactly once in one process, so
        asking for several devices runs on the first one (with a message) instead of splitting work;
        a list of indices (``[2, 3]``, ``'2,3'``) picks its first GPU."""
        several = not (
            self.devices in ("auto", 1, "1") or (isinstance(self.devices, list) and len(self.devices) == 1)
        )
        if several or self.num_nodes > 1:
            log.warning(
                "bench/infer run on one device; ignoring devices=%s num_nodes=%s",
                self.devices,
                self.num_nodes,
            )
        if self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available()):
            return torch.device("cuda", first_device_index(self.devices))
        if self.accelerator == "mps" or (self.accelerator == "auto" and torch.backends.mps.is_available()):
            return torch.device("mps")
        return torch.device("cpu")


def _check_accelerator(accelerator: str) -> None:
    """Fail early and clearly when a GPU is asked for on a machine without one; ``auto`` falls back
    to the CPU through Lightning."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise EngineError(
            f"accelerator={accelerator!r} was requested but no CUDA GPU is available on this machine; "
            "use --accelerator cpu, or auto to take a GPU only when one is present"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise EngineError("accelerator='mps' was requested but MPS is not available on this machine")


# ------------------------------------------------------------------------------- fault tolerance
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into memory, then :func:`~utils.utils.atomic_write_bytes` (temporary file in the
    same folder, fsync, ``os.replace``): a crash or a full disk leaves the previous checkpoint intact
    and no partial file under the checkpoint's name; the error names the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        buffer = io.BytesIO()
        try:
            torch.save(checkpoint, buffer)
        except OSError as error:
            raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
        atomic_write_bytes(Path(path), buffer.getvalue())


class RngState(Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) RNG states in every checkpoint and restore them
    on resume, which Lightning does not do; with ``num_workers=0`` and ``deterministic=True`` a run
    resumed from an epoch-end ``last.ckpt`` then draws the same crops and batch order as an
    uninterrupted one. (Loader workers re-seed from the restored torch state.)"""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class GracefulInterrupt(Callback):
    """The first Ctrl-C (SIGINT) during training stops the way Lightning stops on SIGTERM, by raising
    SIGTERM in this process: after the current training batch has stepped and logged its scalars
    (the point Lightning's mid-epoch resume expects), or at the end of the epoch. A second Ctrl-C
    stops at once. Lightning then runs the ``on_exception`` hooks (:class:`InterruptCheckpoint`) and
    closes the loggers; ``requested`` tells the runner that the stop was a Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after the current training batch (press Ctrl-C again to stop at once)")
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop at the next safe point

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if signal.getsignal(signal.SIGINT) == self._request:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.requested:  # during the last batch: stop before the closing validation and bench
            raise KeyboardInterrupt


class FlushLogsOnCheckpoint(Callback):
    """Flush TensorBoard's event queue whenever a checkpoint is written, before the file: every scalar
    logged up to a checkpoint is on disk when the checkpoint is, so a run killed outright (SIGKILL,
    out of memory) and resumed from it loses no step of its curves (the writer otherwise flushes every
    10 events or 120 s)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.flush()


class KeepNewerBest(Callback):
    """At an epoch end ``best.ckpt`` is written just before ``last.ckpt``. A run killed between the two
    resumes from the previous epoch (or starts again, after its first epoch) while ``best.ckpt`` holds
    the epoch after it. The restored best callback would then know only the older, worse score, and
    a later epoch better than that one but worse than the file would replace the better model.
    When training starts and ``best.ckpt`` has more steps than the state training continues from,
    the best callback takes the record saved inside ``best.ckpt`` (its own ``load_state_dict``), so
    the file is replaced only by a better epoch."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or callback.monitor != MONITOR:
                continue
            path = Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}"
            if not path.is_file():
                continue
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            record = saved.get("callbacks", {}).get(callback.state_key)
            if saved.get("global_step", 0) > trainer.global_step and record is not None:
                callback.load_state_dict(record)
                log.warning(
                    "%s (epoch %d, global step %d) is newer than the state training continues from "
                    "(global step %d): the run stopped between writing it and last.ckpt; keeping it as "
                    "the best so far (%s %.6g)",
                    path,
                    saved["epoch"],
                    saved["global_step"],
                    trainer.global_step,
                    MONITOR,
                    float(callback.best_model_score),
                )


class InterruptCheckpoint(Callback):
    """Save ``<dirpath>/interrupted.ckpt`` when training stops on an exception (Ctrl-C, SIGTERM, a
    non-finite step, a data error), like Lightning's ``OnExceptionCheckpoint``, but

    - only when the state is worth saving and resumable: at least one optimizer step (restored or
      taken; a data error during setup writes nothing) and not inside a validation pass or the
      sanity check (a resume from there fails in Lightning; ``last.ckpt`` of the previous epoch is
      the resume point then);
    - without hiding the original exception when the save itself fails (a full disk);
    - without Lightning's implicit ``ckpt_path="last"`` resume: the runner decides what to resume.

    A training run that finishes removes the file."""

    def __init__(self, dirpath: Path, filename: str = INTERRUPTED) -> None:
        self.ckpt_path = str(Path(dirpath) / f"{filename}.ckpt")
        self.saved: str | None = None
        """Path of the checkpoint written by the last ``on_exception``, if any."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: BaseException) -> None:
        self.saved = None
        if trainer.global_step == 0 or trainer.validating or trainer.sanity_checking:
            return
        try:
            trainer.save_checkpoint(self.ckpt_path)
            self.saved = self.ckpt_path
            log.warning("training stopped; checkpoint saved: %s", self.ckpt_path)
        except Exception as save_error:  # the exception that stopped training is the one to report
            log.error("could not save %s: %s", self.ckpt_path, save_error)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            trainer.strategy.remove_checkpoint(self.ckpt_path)
