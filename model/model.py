"""``LowLightEnhancerLightning``: the Enhancer wrapped for training and validation with Lightning.

Loss MAE + MSE (logged as ``train/1_mae``, ``train/2_mse``, ``train/3_total`` and the ``valid/``
twins), validation PSNR/SSIM on 8-bit RGB outputs, AdamW with linear warm-up then cosine decay
stepped every iteration, and TensorBoard image grids ``low | enhanced | high | illumination |
reflectance`` for a fixed set of validation images at every validation.

A NaN or infinite loss or gradient norm raises :class:`NonFiniteError` (step number and batch files
in the message) before the optimizer step, so no bad weights are ever saved; with
``skip_nonfinite=True`` such a step is skipped instead (no update, a warning, and the running count
logged as ``train/skipped_nonfinite``).
"""

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torchmetrics import MeanMetric
from torchvision.utils import make_grid

from model.blocks.enhancer import Enhancer
from model.loss import MaeMseLoss
from utils.hparams import (
    LEGACY_DEFAULTS,
    ModelHparams,
    OptimHparams,
    TrainLoopHparams,
    field_names,
    field_values,
)
from utils.metrics import psnr, quantize_8bit, ssim
from utils.utils import sha256_of

VALID_KEYS = ("1_mae", "2_mse", "3_total", "psnr", "ssim")
"""Validation values, logged as ``valid/<key>``: the mean over the whole split."""
TRAIN_KEYS = ("mae", "mse", "total")
"""Training losses, logged as ``train/<i>_<key>_step`` and ``train/<i>_<key>_epoch``."""

log = logging.getLogger("illrecnet")

ARCHITECTURE = (
    "channels",
    "kernel_size",
    "embed_dim",
    "num_heads",
    "mlp_ratio",
    "num_resolution",
    "sqrt_input",
    "standardize_inputs",
    "full_res_dim",
    "full_res_block",
    "full_res_stem",
    "full_res_stem_blocks",
    "context_patch",
    "output_gain",
    "exposure_level",
    "exposure_exponent",
)
"""Hyper-parameters that define the network (its weights' layout, or what it computes with them, like the
input standardisation): a checkpoint only fits a model with the same values."""

LOOP_FIELDS = ("num_log_images", "skip_nonfinite")
"""The :class:`~utils.hparams.TrainLoopHparams` fields the module itself uses (and keeps in checkpoints)."""


def checkpoint_hparams(
    model: ModelHparams, optim: OptimHparams, loop: TrainLoopHparams, trainable_separation: bool
) -> dict[str, Any]:
    """What a checkpoint's ``hyper_parameters`` hold: the groups' plain values, flat (``betas`` as a
    list, so ``hparams.yaml`` stays plain YAML). A group may be a script's composite of several."""
    return {
        **field_values(model, ModelHparams),
        "trainable_separation": trainable_separation,
        **field_values(optim, OptimHparams),
        "betas": list(optim.betas),
        **{name: getattr(loop, name) for name in LOOP_FIELDS},
    }


def hparam_groups(values: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of :class:`LowLightEnhancerLightning` that flat ``values`` (a
    checkpoint's ``hyper_parameters``) describe: the inverse of :func:`checkpoint_hparams`. A key
    it leaves out keeps its group's default, or its :data:`~utils.hparams.LEGACY_DEFAULTS` value (an
    option the checkpoint predates); a key no group knows is a TypeError."""
    values = {**LEGACY_DEFAULTS, **values}
    groups = {"model": ModelHparams, "optim": OptimHparams, "loop": TrainLoopHparams}
    names = {"model": field_names(ModelHparams), "optim": field_names(OptimHparams), "loop": LOOP_FIELDS}
    unknown = sorted(set(values).difference(["trainable_separation"], *names.values()))
    if unknown:
        raise TypeError(f"unknown hyper-parameters {unknown}")
    args = {key: group(**{k: values[k] for k in names[key] if k in values}) for key, group in groups.items()}
    if "trainable_separation" in values:
        args["trainable_separation"] = values["trainable_separation"]
    return args


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN or infinite; training stops instead of going on silently."""


class LowLightEnhancerLightning(L.LightningModule):
    """IllRecNet for Lightning, built from the typed groups (each ``None``: that group's defaults)
    and the session's ``trainable_separation``. Its ``hparams``, which checkpoints keep, are their
    plain values, flat (:func:`checkpoint_hparams`), so :meth:`from_hparams` (what
    :func:`load_checkpoint` uses) rebuilds the exact architecture from a checkpoint alone."""

    def __init__(
        self,
        model: ModelHparams | None = None,
        optim: OptimHparams | None = None,
        loop: TrainLoopHparams | None = None,
        trainable_separation: bool = False,
    ) -> None:
        super().__init__()
        groups = (model or ModelHparams(), optim or OptimHparams(), loop or TrainLoopHparams())
        self.save_hyperparameters(checkpoint_hparams(*groups, trainable_separation))
        self._build()
        # Per-image means accumulated as (sum, count) and summed across ranks at the epoch end, so
        # DDP shards of unequal size still give the exact mean over the split.
        self.valid_means = nn.ModuleDict({key: MeanMetric(nan_strategy="disable") for key in VALID_KEYS})
        # Rank-local training means of the epoch, kept in checkpoints (see on_train_epoch_end)
        self.train_means = nn.ModuleDict(
            {key: MeanMetric(nan_strategy="disable", sync_on_compute=False) for key in TRAIN_KEYS}
        )
        self._log_images: list[tuple[str, Tensor]] = []
        self._batch_names: list[str] = []
        self._skip_step = False
        self.skipped_nonfinite = 0
        """Steps skipped by ``skip_nonfinite`` (saved in checkpoints, logged as train/skipped_nonfinite)."""

    @classmethod
    def from_hparams(cls, values: Mapping[str, Any]) -> "LowLightEnhancerLightning":
        """The module that flat hyper-parameters (a checkpoint's) describe; a TypeError names keys
        it does not know."""
        return cls(**hparam_groups(values))

    def _build(self) -> None:
        """The enhancer and the loss that :attr:`hparams` describe."""
        hp = self.hparams
        self.model = Enhancer(ModelHparams(**field_values(hp, ModelHparams)), hp.trainable_separation)
        self.loss = MaeMseLoss(hp.mae_weight, hp.mse_weight)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> enhanced ``(B, 3, H, W)`` (not clamped)."""
        return self.model(x)

    # ----------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._batch_names = list(batch.get("low_path", batch.get("name", [])))
        losses = self.loss(self(batch["low"]), batch["high"])
        local = not torch.isfinite(losses["total"])
        # Every rank decides alike (any rank's non-finite loss counts): a rank that raised alone would
        # leave the others waiting in the gradient all-reduce until the process group times out.
        self._skip_step = local
        if self._trainer is not None:
            self._skip_step = self._trainer.strategy.reduce_boolean_decision(local, all=False)
        if self._skip_step:
            # Raises unless skip_nonfinite. Skipping: backward still runs (in DDP every rank must take
            # part in the gradient all-reduce) and on_before_optimizer_step drops the gradients.
            self._non_finite(
                f"training loss ({losses['total'].item()})" if local else "training loss on another rank"
            )
        else:
            self._log_train_losses(losses, batch["low"].shape[0])
        return losses["total"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_step:
            self._drop_gradients()
            return
        if str(self.trainer.precision).startswith("16"):
            return  # fp16 GradScaler expects occasional inf gradients and skips those steps itself
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(norm):
            self._non_finite(f"gradient norm ({norm.item()})")  # raises unless skip_nonfinite
            self._drop_gradients()

    def _drop_gradients(self) -> None:
        """Skip this optimizer step: with no gradient, AdamW changes no weight and no moment."""
        for p in self.parameters():
            p.grad = None

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), on_step=True, on_epoch=False)

    def _non_finite(self, what: str) -> None:
        """Raise :class:`NonFiniteError`, or count and warn when ``skip_nonfinite`` is set."""
        where = f"non-finite {what} at global step {self.global_step}, batch files: {self._batch_names}"
        if not self.hparams.skip_nonfinite:
            raise NonFiniteError(
                f"{where}. Lower --lr, set --gradient_clip_val, check those images, or pass "
                "--skip_nonfinite true to skip such steps"
            )
        self.skipped_nonfinite += 1
        log.warning("skipped the step: %s (%d skipped so far)", where, self.skipped_nonfinite)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipped_nonfinite"] = self.skipped_nonfinite
        # the epoch's running means, so that a run stopped inside an epoch logs the same epoch means
        checkpoint["train_means"] = {
            key: {name: value.detach().cpu() for name, value in metric.metric_state.items()}
            for key, metric in self.train_means.items()
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_nonfinite = int(checkpoint.get("skipped_nonfinite", 0))
        for key, saved_state in checkpoint.get("train_means", {}).items():
            metric = self.train_means[key]
            for name, value in saved_state.items():
                setattr(metric, name, value.to(getattr(metric, name).device))
            metric._update_count = int(float(metric.weight) > 0)  # counts as updated: compute() works
        # Lightning's own load_from_checkpoint builds this module with the default groups (the flat
        # keys it stores are not constructor arguments) and no Trainer: take the checkpoint's values
        # and rebuild the enhancer as it was saved. Under a Trainer (a resume, the best checkpoint's
        # validation) this module stays as built: the runner has checked that the checkpoint fits.
        if self._trainer is not None:
            return
        saved = checkpoint_hparams(**hparam_groups(checkpoint.get("hyper_parameters", {})))
        if saved != dict(self.hparams):
            self.save_hyperparameters(saved)
            weight = next(self.model.parameters())
            self._build()
            self.model.to(device=weight.device, dtype=weight.dtype)

    def _log_train_losses(self, losses: dict[str, Tensor], batch_size: int) -> None:
        """Per step (``train/<i>_<key>_step``) and into the epoch means (:meth:`on_train_epoch_end`)."""
        for i, key in enumerate(TRAIN_KEYS, start=1):
            name = f"train/{i}_{key}_step"
            self.log(name, losses[key], on_step=True, on_epoch=False, prog_bar=key == "total")
            self.train_means[key].update(losses[key].detach().float(), weight=batch_size)

    def on_train_epoch_end(self) -> None:
        """Write ``train/<i>_<key>_epoch`` (rank 0's means) straight to the loggers, at the step where
        Lightning writes epoch-end values. ``self.log(on_epoch=True)`` would reach the loggers only
        after the epoch-end checkpoint is saved, so a run killed right after ``last.ckpt`` and resumed
        from it would miss that epoch's means."""
        means = {}
        for i, (key, metric) in enumerate(self.train_means.items(), start=1):
            if metric.update_called and float(metric.weight) > 0:
                means[f"train/{i}_{key}_epoch"] = float(metric.compute())
            metric.reset()
        if means and self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({**means, "epoch": self.current_epoch}, step=max(0, self.global_step - 1))

    # --------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        low, high = batch["low"], batch["high"]
        pred, illumination, reflectance = self.model(low, return_maps=True)
        losses = self.loss(pred, high)
        pred8 = quantize_8bit(pred.float())
        values = {
            "1_mae": losses["mae"],
            "2_mse": losses["mse"],
            "3_total": losses["total"],
            "psnr": psnr(pred8, high.float()).mean(),
            "ssim": ssim(pred8, high.float()).mean(),
        }
        for key, value in values.items():
            metric = self.valid_means[key]
            metric.update(value.detach().float(), weight=low.shape[0])
            bar = key in ("3_total", "psnr")
            self.log(f"valid/{key}", metric, on_step=False, on_epoch=True, prog_bar=bar)
        if batch_idx < self.hparams.num_log_images:
            name = batch["name"][0] if "name" in batch else str(batch_idx)
            tiles = [low[0], pred8[0], high[0], illumination[0], reflectance[0] / (1 + reflectance[0])]
            self._log_images.append((name, _display_grid(tiles)))

    def on_validation_epoch_end(self) -> None:
        images, self._log_images = self._log_images, []
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, grid in images:
                    logger.experiment.add_image(
                        f"valid_images/{name} (low | enhanced | high | illumination | reflectance)",
                        grid,
                        global_step=self.global_step,
                    )

    # ---------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, math.ceil(total * hp.warmup_ratio)) if hp.warmup_ratio > 0 else 0
        cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=hp.lr * hp.min_lr_ratio)
        if warmup > 0:
            ramp = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
            scheduler = SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        else:
            scheduler = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _display_grid(tiles: list[Tensor], max_side: int = 384) -> Tensor:
    """Side-by-side ``(3, h, n * w)`` grid in [0, 1], downscaled so the longer side is <= max_side."""
    stack = torch.stack([t.detach().float().clamp(0, 1) for t in tiles])  # (n, 3, H, W)
    scale = max_side / max(stack.shape[-2:])
    if scale < 1:
        stack = F.interpolate(stack, scale_factor=scale, mode="area")
    return make_grid(stack.cpu(), nrow=len(tiles), padding=2, pad_value=1.0)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not an IllRecNet checkpoint."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load`` (weights only) a Lightning checkpoint of IllRecNet, or raise
    :class:`CheckpointError` naming the file: missing, unreadable/truncated, or without IllRecNet's
    ``state_dict`` and ``hyper_parameters``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign formats
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a torch checkpoint): {error}"
        ) from error
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "hyper_parameters" not in checkpoint
    ):
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a Lightning checkpoint of IllRecNet (top-level keys: {keys})")
    for name, value in LEGACY_DEFAULTS.items():
        checkpoint["hyper_parameters"].setdefault(name, value)
    return checkpoint


STARTER_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "starter.ckpt"
"""The shipped starter model: weights and architecture only (``checkpoints/README.md`` is its card).
Its sha256 is in ``starter.sha256`` beside it, so a changed or truncated file is recognised."""

RESTORE_HINT = "restore it with `git checkout -- checkpoints/starter.ckpt checkpoints/starter.sha256`"


def resolve_checkpoint(path: str | Path | None, starter: Path | None = None) -> Path:
    """``path`` when given; otherwise the shipped starter model, checked against its recorded sha256
    (a :class:`CheckpointError` naming the file and how to restore it when it is missing, truncated
    or replaced), with one log line saying it is used."""
    if path:
        return Path(path)
    starter = starter or STARTER_MODEL
    recorded = starter.with_suffix(".sha256")
    if not starter.is_file() or not recorded.is_file():
        missing = starter if not starter.is_file() else recorded
        raise CheckpointError(
            f"no --checkpoint_path given and the shipped starter model's {missing} is missing; "
            f"{RESTORE_HINT} (or pass --checkpoint_path)"
        )
    expected = recorded.read_text().split()[0]
    actual = sha256_of(starter)
    if actual != expected:
        raise CheckpointError(
            f"{starter} is not the shipped starter model (sha256 {actual[:12]}..., recorded "
            f"{expected[:12]}...: changed or truncated); {RESTORE_HINT} (or pass --checkpoint_path)"
        )
    log.info("no --checkpoint_path: using the shipped starter model %s (checkpoints/README.md)", starter)
    return starter


def save_weights(checkpoint_path: str | Path, output: str | Path) -> str:
    """Write the weights and architecture of a checkpoint, without optimizer or loop state, to
    ``output`` (atomically) and its sha256 to ``output`` with the suffix ``.sha256``; returns the
    sha256. The result loads like any checkpoint (``--checkpoint_path``, ``--init_from``)."""
    import io

    from utils.utils import atomic_write_bytes, atomic_write_text

    module = load_checkpoint(checkpoint_path)  # checked: readable, IllRecNet, weights fit
    checkpoint = read_checkpoint(checkpoint_path)
    slim = {
        "state_dict": {k: v.contiguous() for k, v in module.state_dict().items()},
        "hyper_parameters": checkpoint["hyper_parameters"],
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    output = Path(output)
    atomic_write_bytes(output, buffer.getvalue())
    digest = sha256_of(output)
    atomic_write_text(output.with_suffix(".sha256"), f"{digest}  {output.name}\n")
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LowLightEnhancerLightning:
    """Rebuild the model from ``path`` alone (architecture from its saved hyper-parameters).

    Raises :class:`CheckpointError` naming the file: missing, unreadable/truncated, without
    IllRecNet hyper-parameters or with ones its groups do not accept, or with weights that do not
    match the saved architecture (the missing and unexpected keys are listed).
    """
    checkpoint = read_checkpoint(path, map_location)
    try:
        module = LowLightEnhancerLightning.from_hparams(checkpoint["hyper_parameters"])
    except (TypeError, ValueError) as error:  # keys no group knows, or values a group refuses
        raise CheckpointError(f"{path} holds hyper-parameters IllRecNet does not accept: {error}") from error
    check_state_dict(module, checkpoint["state_dict"], path)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()


def check_compatible(
    module: LowLightEnhancerLightning,
    checkpoint: dict,
    source: str | Path,
    fields: tuple[str, ...] = ARCHITECTURE,
) -> None:
    """Raise :class:`CheckpointError` when ``checkpoint`` (from :func:`read_checkpoint`) cannot be
    loaded into ``module``: the differing hyper-parameters among ``fields`` and the missing,
    unexpected and mis-shaped keys, all in one message."""
    saved = checkpoint["hyper_parameters"]
    changed = [
        f"{k}: checkpoint {saved[k]!r} vs this run {module.hparams[k]!r}"
        for k in fields
        if k in saved and saved[k] != module.hparams[k]
    ]
    problems = _state_dict_problems(module, checkpoint["state_dict"])
    if changed or problems:
        raise CheckpointError(
            f"{source} does not fit this model: hyper-parameters [{'; '.join(changed)}]"
            + (f"; weights: {problems}" if problems else "")
        )


def check_state_dict(module: torch.nn.Module, state_dict: dict, source: str | Path) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    problems = _state_dict_problems(module, state_dict)
    if problems:
        raise CheckpointError(f"weights in {source} do not match the architecture: {problems}")


def _state_dict_problems(module: torch.nn.Module, state_dict: dict) -> str:
    """``missing keys [...], unexpected keys [...], mismatched shapes [...]``, or "" when they fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return ""

    def short(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

    return (
        f"missing keys [{short(missing)}], unexpected keys [{short(unexpected)}], "
        f"mismatched shapes [{short(shapes)}]"
    )
