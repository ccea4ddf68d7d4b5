"""``LightningEngine``: every Trainer of the project is built here, in one method.

A stage only chooses its callbacks and loop limits; logger, precision, accelerator, devices,
strategy and seeding come from the engine's runtime settings. The GPU is never chosen through
``CUDA_VISIBLE_DEVICES`` in code: ``devices`` and ``accelerator`` do that.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger

from engine.predict import Enhance, run_bench, run_infer
from utils.utils import log

MONITOR = "valid/3_total"


class EngineError(RuntimeError):
    """A runtime setting that cannot work on this machine (e.g. a GPU asked for and none present)."""


class LightningEngine:
    """Builds Trainers and runs the train / valid stages.

    Args:
        accelerator, devices, num_nodes, strategy, precision: passed to ``lightning.Trainer``.
        seed: ``seed_everything(seed, workers=True)`` is called before every stage.
        deterministic: ``torch.use_deterministic_algorithms`` through the Trainer.
    """

    def __init__(
        self,
        accelerator: str = "auto",
        devices: str | int = "auto",
        num_nodes: int = 1,
        strategy: str = "auto",
        precision: str = "32-true",
        seed: int = 42,
        deterministic: bool = False,
    ) -> None:
        self.accelerator = accelerator
        self.devices = devices
        self.num_nodes = num_nodes
        self.strategy = strategy
        self.precision = precision
        self.seed = seed
        self.deterministic = deterministic
        _check_accelerator(accelerator)

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
            enable_model_summary=False,
            **loop,
        )

    # ------------------------------------------------------------------------------------ stages
    def fit_trainer(self, session_dir: Path, patience: int, **loop: Any) -> L.Trainer:
        """Trainer for one training session: TensorBoard under ``session_dir``, best-by-``valid/3_total``
        and ``last.ckpt`` checkpoints, early stopping, LR monitor, checkpoint on interruption."""
        ckpt_dir = session_dir / "checkpoints"
        callbacks = [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=MONITOR,
                mode="min",
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            EarlyStopping(monitor=MONITOR, mode="min", patience=patience),
            LearningRateMonitor(logging_interval="step"),
            OnExceptionCheckpoint(dirpath=ckpt_dir, filename="interrupted"),
        ]
        logger = TensorBoardLogger(
            save_dir=str(session_dir.parent), name=session_dir.name, version="", default_hp_metric=False
        )
        return self.trainer(callbacks, logger=logger, **loop)

    def train(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        trainer: L.Trainer,
        ckpt_path: str | None = None,
    ) -> None:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    def valid(self, module: L.LightningModule, datamodule: L.LightningDataModule) -> list[dict[str, float]]:
        return self.trainer([], logger=False).validate(module, datamodule=datamodule, verbose=False)

    def bench(self, module: torch.nn.Module, self_ensemble: bool = False, **kwargs: Any):
        return run_bench(Enhance(module, self.device(), self_ensemble, self.precision), **kwargs)

    def infer(self, module: torch.nn.Module, self_ensemble: bool = False, **kwargs: Any):
        return run_infer(Enhance(module, self.device(), self_ensemble, self.precision), **kwargs)

    def device(self) -> torch.device:
        """The single device of bench/infer. They process each image exactly once in one process, so
        asking for several devices runs on the first one (with a message) instead of splitting work."""
        if self.devices not in ("auto", 1, "1") or self.num_nodes > 1:
            log.warning(
                "bench/infer run on one device; ignoring devices=%s num_nodes=%s",
                self.devices,
                self.num_nodes,
            )
        if self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available()):
            return torch.device("cuda", 0)
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
