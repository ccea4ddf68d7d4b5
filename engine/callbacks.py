"""Training callbacks and the checkpoint writer that make a run survive faults.

Checkpoints are written atomically (:class:`AtomicCheckpointIO`) and carry the Python/NumPy/torch RNG
states that Lightning does not save (:class:`RngState`); a Ctrl-C stops at the next batch boundary
like Lightning's SIGTERM handling (:class:`GracefulInterrupt`); an interruption writes
``interrupted.ckpt`` (:class:`InterruptCheckpoint`); TensorBoard's events are on disk before any
checkpoint is (:class:`FlushLogsOnCheckpoint`); and a resume keeps the record of a ``best.ckpt``
newer than its starting point (:class:`KeepNewerBest`). :class:`~engine.engine.LightningEngine`
puts them into the training Trainer.
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
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from utils.utils import atomic_write_bytes, log

MONITOR = "valid/3_total"
"""The validation metric ``best.ckpt`` and early stopping go by (lower is better)."""
LAST = "last"
"""File stem of the checkpoint written after every finished training epoch."""
INTERRUPTED = "interrupted"
"""File stem of the checkpoint written when training stops on a signal or an error."""


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
