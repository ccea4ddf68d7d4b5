"""``LightningEngine``: every Trainer of the project is built here, in one method, and bench/infer get
their device and model wrapper (:meth:`LightningEngine.enhancer`) here.

A stage only chooses its callbacks and loop limits; logger, precision, accelerator, devices,
strategy and seeding come from the engine's runtime settings. The GPU is never chosen through
``CUDA_VISIBLE_DEVICES`` in code: ``devices`` and ``accelerator`` do that. The fault-tolerance
callbacks of the training Trainer live in :mod:`engine.callbacks`.
"""

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger

from engine.callbacks import (
    INTERRUPTED,
    LAST,
    MONITOR,
    AtomicCheckpointIO,
    FlushLogsOnCheckpoint,
    GracefulInterrupt,
    InterruptCheckpoint,
    KeepNewerBest,
    RngState,
)
from engine.enhance import Enhance
from utils.hparams import RuntimeHparams, TrainLoopHparams, check_compile_mode, first_device_index
from utils.utils import log


class EngineError(RuntimeError):
    """A runtime setting that cannot work on this machine (e.g. a GPU asked for and none present)."""


class LightningEngine:
    """Builds Trainers, runs the train / valid stages, and wraps a module for bench/infer.

    Every default is the flag's (:class:`~utils.hparams.RuntimeHparams`, ``deterministic`` of
    :class:`~utils.hparams.TrainLoopHparams`).

    Args:
        accelerator, devices, num_nodes, strategy, precision: passed to ``lightning.Trainer``.
        seed: ``seed_everything(seed, workers=True)`` is called before every stage.
        deterministic: ``torch.use_deterministic_algorithms`` through the Trainer.
        compile: ``torch.compile`` the enhancer before every stage (:meth:`compiled`).
        compile_mode: ``torch.compile``'s mode (``reduce-overhead``: CUDA graphs on a GPU).
    """

    def __init__(
        self,
        accelerator: str = RuntimeHparams.accelerator,
        devices: str | int | list[int] = RuntimeHparams.devices,
        num_nodes: int = RuntimeHparams.num_nodes,
        strategy: str = RuntimeHparams.strategy,
        precision: str = RuntimeHparams.precision,
        seed: int = RuntimeHparams.seed,
        deterministic: bool = TrainLoopHparams.deterministic,
        compile: bool = RuntimeHparams.compile,
        compile_mode: str = RuntimeHparams.compile_mode,
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
        """The engine a script's hyper-parameters ask for: each constructor argument taken from the
        field of the same name where ``hp`` has one (its :class:`RuntimeHparams` fields, plus
        ``deterministic`` where present); ``overrides`` win."""
        names = list(inspect.signature(cls.__init__).parameters)[1:]
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

    def enhancer(self, module: torch.nn.Module, self_ensemble: bool = False) -> Enhance:
        """The :class:`~engine.enhance.Enhance` that bench/infer run ``module`` through: compiled with
        ``compile`` (:meth:`compiled`), on :meth:`device`, with autocast at the engine's precision."""
        return Enhance(self.compiled(module), self.device(), self_ensemble, self.precision)

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
