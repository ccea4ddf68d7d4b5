"""Typed hyper-parameter groups shared by the scripts.

Each field's default lives here and only here; the one-line docstring under a field is its
``--help`` text. Every script composes the groups it needs into one flat dataclass, so each field
is a flag of the same name (``--image_size 128``) and a key of the same name in a YAML config.
Values are checked in ``__post_init__`` so a wrong value is a one-line message, not a traceback.
"""

import re
from dataclasses import dataclass, fields
from typing import Literal, get_args

from utils.tiling import MIN_TILE

FullResBlock = Literal["transformer", "conv"]
ContextPatch = Literal[2, 4]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""torch.compile's modes (``torch._inductor.list_mode_options``)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class HparamGroup:
    """Base of every group. Each group's ``__post_init__`` checks its own fields and calls
    ``super().__post_init__()``, so a script's dataclass that combines several groups runs all their
    checks; this one ends the chain."""

    def __post_init__(self) -> None:
        pass


@dataclass
class CacheHparams(HparamGroup):
    cache_gb: float = 4.0
    """Keep decoded images in memory when they take at most this many GB (3 bytes per pixel, 6 for
    16-bit files; LOL-v1's 485 pairs take 0.70 GB): the training split (what it leaves keeps the
    validation split), or the split valid.py validates, or the bench split the start-up check
    decodes; 0 decodes from disk every time. Forked loader workers share the memory; every DDP
    process holds its own copy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.cache_gb >= 0, f"cache_gb must be >= 0, got {self.cache_gb}")


@dataclass
class DataHparams(CacheHparams):
    train_data_path: str | list[str] = "data/1_train"
    """Training split: one folder per sub-dataset, each with low/ and high/, or a photo folder
    (normal-light photos, directly or in high/, no low/: their low-light twins are synthesized on the
    fly). A list joins the sub-datasets of several split folders."""
    valid_data_path: str = "data/2_valid"
    """Validation split (whole images, chooses the best checkpoint); photo folders get fixed
    synthesized pairs. Empty: validate on valid_holdout photos only."""
    image_size: int = 256
    """Side of the random paired training crop, in pixels."""
    batch_size: int = 8
    """Training batch size (validation always uses 1: whole images differ in size)."""
    num_workers: int = 4
    """DataLoader worker processes (0 loads in the main process)."""
    train_repeat: int = 1
    """Visit every real training pair this many times per epoch (for tiny datasets)."""
    photo_repeat: int = 1
    """Visit every photo of a photo folder this many times per epoch: with train_repeat, the ratio
    of real pairs to synthesized ones in a mixed split."""
    synthesis: str = "camera"
    """Degradation that darkens the photos of photo folders (a regime of data/synthesize.py: camera,
    mild, lol, extreme, default)."""
    valid_holdout: int = 0
    """Photos taken out of the training photo folders to validate on (fixed synthesized pairs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(self.train_repeat >= 1, f"train_repeat must be >= 1, got {self.train_repeat}")
        _check(self.photo_repeat >= 1, f"photo_repeat must be >= 1, got {self.photo_repeat}")
        _check(self.valid_holdout >= 0, f"valid_holdout must be >= 0, got {self.valid_holdout}")
        from data.synthesize import REGIMES

        _check(
            self.synthesis in REGIMES,
            f"synthesis must be one of {', '.join(REGIMES)}, got {self.synthesis!r}",
        )
        _check(
            bool(self.valid_data_path) or self.valid_holdout > 0,
            "give a valid_data_path or valid_holdout > 0: training always validates",
        )


MAX_OUTPUT_GAIN_INIT = 2.4
"""Largest ``output_gain_init``: the residual's starting bias (0.25) less the gain times a dark
input's mean (0.101) stays positive."""


@dataclass
class ModelHparams(HparamGroup):
    channels: int = 3
    """Colour channels of the images."""
    kernel_size: int = 15
    """Size of the separation block's Gaussian kernel (odd)."""
    sigma: float = 3.0
    """Initial standard deviation of the separation Gaussian, in pixels."""
    embed_dim: int = 44
    """Feature width at the first resolution; it doubles at every level (why 44: docs/measurements.md)."""
    num_heads: int = 2
    """Attention heads at the first resolution; they double at every level."""
    mlp_ratio: float = 2.0
    """Hidden width of the feed-forward layers relative to the block width."""
    num_resolution: int = 3
    """Levels of the decoder U-Net."""
    dropout_ratio: float = 0.0
    """Dropout after attention and feed-forward layers."""
    temperature_init: float = 1.0
    """Where every attention head's learned temperature starts (it scales the cosine similarities
    before the softmax, so it sets how sharp attention is). In a short training it barely moves:
    after the 1500 steps of ``tools.quality`` every head was within 2 % of 1.0. Starting at 4 changed
    nothing, at 12 the model scored worse (docs/model.md). A starting point, not architecture."""
    zero_init_residuals: bool = False
    """Every residual branch (each transformer block's attention and feed-forward, the
    full-resolution convolution pair) starts with its last layer at zero, so every block starts as
    the identity. It fitted worse in ``tools.quality``'s short training (docs/model.md). A starting
    point, not architecture."""
    sqrt_input: bool = True
    """The decoder's patch embedding also sees the square root of the image, a brightened copy that
    spreads the dark values (what it gains: docs/model.md). Checkpoints from before this option load
    with it off."""
    standardize_inputs: bool = False
    """Every patch embedding sees its input standardised with fixed constants (``INPUT_STATS`` in
    ``model/blocks/enhancer.py``). The model fits the training pairs better and gains GT-mean PSNR,
    but not yet significant plain PSNR (docs/measurements.md, quality experiments). Checkpoints
    from before this option load with it off."""

    full_res_dim: int = 32
    """Width of a full-resolution stage in the decoder (0: none; why 32 with ``conv`` blocks and
    ``context_patch`` 4: docs/measurements.md): the image embedded at full resolution, fused
    with the head's features and refined by ``full_res_block`` before the output convolution.
    Checkpoints from before this option load with it 0."""
    full_res_block: FullResBlock = "conv"
    """What refines the full-resolution stage (with ``full_res_dim`` > 0): one transformer block
    (channel attention, 1 head), or ``conv``: a residual pair of 3x3 convolutions, local like the
    noise it removes. Checkpoints from before this option load with ``transformer``."""
    full_res_stem: bool = False
    """With ``full_res_dim`` > 0: the U-Net's first level is embedded from the full-resolution
    features (the 3x3 embedding of the image, after a GELU and ``full_res_stem_blocks`` residual pairs
    of 3x3 convolutions) by a 2x2 convolution of stride 2, instead of from the image's pixels, and the
    full-resolution stage fuses the head's features with those same features: a full-resolution
    first level on both sides of the U-Net. Not the default: trained on one regime it fitted worse
    and lost PSNR, with or without residual pairs (docs/model.md). Checkpoints from before this option
    load with it off."""
    full_res_stem_blocks: int = 0
    """Residual pairs of 3x3 convolutions on the full-resolution features before the U-Net's first
    level (with ``full_res_stem``)."""

    context_patch: ContextPatch = 4
    """Patch size of the encoder's embeddings: the context map is at 1/2 (2) or 1/4 (4) of the
    image's resolution. At 4 the encoder's four transformer blocks cost a quarter as much; a learned
    2x2 transposed convolution brings the context to the decoder's first level. Checkpoints from
    before this option load with 2."""

    output_gain: bool = False
    """The output is ``image * (1 + gain) + residual``, with ``gain`` a per-pixel, per-channel map
    predicted beside the residual (a 3x3 convolution on the last features), as Retinexformer lights
    up its input; off: ``image + residual``. Not the default: started at zero the gain stayed unused,
    started higher the model fitted worse (docs/model.md). Checkpoints from before this option load
    with it off."""
    output_gain_init: float = 0.0
    """Where ``output_gain`` starts, everywhere (its convolution's bias; the weights start at zero).
    The residual's bias starts lower by this times the mean of a dark input (``INPUT_STATS``), so a
    fresh model brightens a typical dark image as much as without the gain; at most 2.4."""

    exposure_level: float = 0.0
    """With a value in (0, 1): the network sees the image through a global tone curve that brightens
    its shadows so its mean is about this level (learned from here; ``model/blocks/exposure.py``),
    and predicts the residual on the dark image from that. 0: the network sees the dark image itself.
    Checkpoints from before this option load with it 0."""
    exposure_exponent: float = 1.0
    """Exponent of the exposure curve's gain, ``(level / mean) ** exponent`` (fixed): 1 brings every
    dark image to the same brightness, less narrows the spread of brightness and keeps a darker
    input darker (``model/blocks/exposure.py``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.exposure_level < 1, f"exposure_level must be in [0, 1), got {self.exposure_level}")
        _check(
            0 < self.exposure_exponent <= 1,
            f"exposure_exponent must be in (0, 1], got {self.exposure_exponent}",
        )
        _check(
            self.context_patch in get_args(ContextPatch),
            f"context_patch must be one of {get_args(ContextPatch)}, got {self.context_patch!r}",
        )
        _check(
            0 <= self.output_gain_init <= MAX_OUTPUT_GAIN_INIT,
            f"output_gain_init must be in [0, {MAX_OUTPUT_GAIN_INIT}], got {self.output_gain_init}",
        )
        _check(
            self.output_gain or not self.output_gain_init,
            f"output_gain_init ({self.output_gain_init}) only applies with output_gain true",
        )
        _check(self.temperature_init > 0, f"temperature_init must be > 0, got {self.temperature_init}")
        _check(self.channels >= 1, f"channels must be >= 1, got {self.channels}")
        _check(self.full_res_dim >= 0, f"full_res_dim must be >= 0, got {self.full_res_dim}")
        _check(
            self.full_res_dim > 0 or not self.full_res_stem,
            "full_res_stem needs a full-resolution stage (full_res_dim > 0)",
        )
        _check(
            self.full_res_stem_blocks >= 0,
            f"full_res_stem_blocks must be >= 0, got {self.full_res_stem_blocks}",
        )
        _check(
            self.full_res_stem or not self.full_res_stem_blocks,
            f"full_res_stem_blocks ({self.full_res_stem_blocks}) only applies with full_res_stem true",
        )
        _check(
            self.full_res_block in get_args(FullResBlock),
            f"full_res_block must be one of {get_args(FullResBlock)}, got {self.full_res_block!r}",
        )
        _check(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            f"kernel_size must be a positive odd number, got {self.kernel_size}",
        )
        _check(self.sigma > 0, f"sigma must be > 0, got {self.sigma}")
        _check(
            self.embed_dim >= 1 and self.num_heads >= 1 and self.embed_dim % self.num_heads == 0,
            f"embed_dim ({self.embed_dim}) must be a positive multiple of num_heads ({self.num_heads})",
        )
        _check(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        _check(1 <= self.num_resolution <= 6, f"num_resolution must be in 1..6, got {self.num_resolution}")
        _check(0 <= self.dropout_ratio < 1, f"dropout_ratio must be in [0, 1), got {self.dropout_ratio}")


LEGACY_DEFAULTS = {
    "sqrt_input": False,
    "standardize_inputs": False,
    "full_res_dim": 0,
    "full_res_block": "transformer",
    "full_res_stem": False,
    "full_res_stem_blocks": 0,
    "exposure_level": 0.0,
    "exposure_exponent": 1.0,
    "context_patch": 2,
    "output_gain": False,
    "output_gain_init": 0.0,
    "temperature_init": 1.0,
    "zero_init_residuals": False,
}
"""Values of :class:`ModelHparams` fields added after a checkpoint (or a ``tools.quality`` result)
was written, as that model had them (the square-root input and the input standardisation came in
after the first checkpoints)."""


@dataclass
class OptimHparams(HparamGroup):
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    warmup_ratio: float = 0.02
    """Fraction of all training steps spent in the linear warm-up (then cosine decay)."""
    min_lr_ratio: float = 0.01
    """Final learning rate of the cosine decay, as a fraction of lr."""
    mae_weight: float = 1.0
    """Weight of the MAE (L1) loss."""
    mse_weight: float = 1.0
    """Weight of the MSE (L2) loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.betas = tuple(self.betas)
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        _check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(
            self.mae_weight >= 0 and self.mse_weight >= 0 and self.mae_weight + self.mse_weight > 0,
            "mae_weight and mse_weight must be >= 0 and not both 0",
        )


@dataclass
class RuntimeHparams(HparamGroup):
    accelerator: str = "auto"
    """cpu, gpu, cuda, mps or auto (a GPU when one is present)."""
    devices: int | list[int] | str = "auto"
    """Number of devices (-1: all), a list of device indices such as '[0, 1]' (or '0,1'), or auto."""
    num_nodes: int = 1
    """Machines taking part (multi-node DDP)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ddp_spawn, ..."""
    precision: str = "32-true"
    """32-true, bf16-mixed or 16-mixed."""
    log_dir: str = "runs/train"
    """Root folder of logs, checkpoints and outputs."""
    experiment_name: str = "illrecnet"
    """Sub-folder of log_dir for this experiment; every run gets its own version_N inside."""
    seed: int = 42
    """Seed for Python, NumPy, torch and the data-loader workers."""
    compile: bool = False
    """torch.compile the enhancer (inductor). valid/bench/infer: the first image size compiles, the
    second recompiles once with symbolic height and width, and later sizes reuse a few graphs.
    train: static shapes (the crop size; validation compiles one graph per image size, up to 8)."""
    compile_mode: CompileMode = "default"
    """torch.compile mode with ``compile``: default, reduce-overhead (CUDA graphs: on a GPU, removes
    the launch overhead that bounds this small model; records one graph per image size, so it suits
    training crops and same-size benchmarks), max-autotune or max-autotune-no-cudagraphs. On a CPU
    the CUDA-graph part of a mode does nothing."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            devices_ok(self.devices),
            f"devices must be a count (2; -1 for all), a list of indices ([0, 1] or '0,1') or auto, "
            f"got {self.devices!r}",
        )
        _check(self.num_nodes >= 1, f"num_nodes must be >= 1, got {self.num_nodes}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_compile_mode(self.compile, self.compile_mode)
        _check(
            bool(self.experiment_name.strip()) and "/" not in self.experiment_name,
            f"experiment_name must be a non-empty folder name, got {self.experiment_name!r}",
        )


def devices_ok(devices: object) -> bool:
    """A ``devices`` value Lightning's Trainer takes: a count >= 1 or -1, distinct indices >= 0 (a list
    or a comma-separated string), or "auto"."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, list):
        indices = [i for i in devices if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
        return bool(devices) and len(indices) == len(devices) == len(set(devices))
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return True
        if re.fullmatch(r"-1|\d+", text):  # a count, as a string
            return int(text) != 0
        return re.fullmatch(r"\d+(,\d+)*,?", text) is not None  # indices: '0,1' or '2,'
    return False


def first_device_index(devices: object) -> int:
    """The device bench/infer use: the first listed index (``[2, 3]``, ``'2,3'``), else 0."""
    if isinstance(devices, list) and devices:
        return int(devices[0])
    if isinstance(devices, str) and "," in devices:
        return int(devices.split(",")[0])
    return 0


COMPILE_MODES = get_args(CompileMode)


def check_compile_mode(compile: bool, mode: str) -> None:
    """A ValueError unless ``mode`` is one of :data:`COMPILE_MODES` and, when it is not the default,
    ``compile`` is on (a mode without compiling would be silently ignored)."""
    _check(mode in COMPILE_MODES, f"compile_mode must be one of {COMPILE_MODES}, got {mode!r}")
    _check(compile or mode == "default", f"compile_mode {mode!r} needs --compile true")


PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


@dataclass
class TrainLoopHparams(HparamGroup):
    max_epochs: int = 1000
    """Epochs per session."""
    patience: int = 100
    """Early stopping: validations without improvement of valid/3_total before a session stops."""
    gradient_clip_val: float = 0.0
    """Clip the gradient norm to this value (0 disables clipping)."""
    skip_nonfinite: bool = False
    """Skip steps with a NaN/inf loss or gradient (warn, log train/skipped_nonfinite) instead of stopping."""
    check_val_every_n_epoch: int = 1
    """Validate every N epochs."""
    log_every_n_steps: int = 10
    """Write training scalars every N steps."""
    num_log_images: int = 4
    """Validation images shown in TensorBoard at every validation."""
    session: Literal["both", "frozen", "trainable"] = "both"
    """Sessions to run: separation frozen, then trainable (initialised from the frozen best), or one."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower; bit-exact reruns on CPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        _check(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        _check(self.gradient_clip_val >= 0, f"gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        _check(self.check_val_every_n_epoch >= 1, "check_val_every_n_epoch must be >= 1")
        _check(self.log_every_n_steps >= 1, "log_every_n_steps must be >= 1")
        _check(self.num_log_images >= 0, "num_log_images must be >= 0")


@dataclass
class TileHparams(HparamGroup):
    """How bench.py and infer.py split large images (see :func:`utils.tiling.enhance_image`)."""

    tile: int | None = None
    """Enhance in tiles of this side (default: whole images, tiles only when too large for memory)."""
    tile_overlap: int = 32
    """Overlap between tiles, in pixels."""
    max_pixels: int = 2_100_000
    """Images with more pixels than this are enhanced in tiles of half as many pixels (memory bound);
    out-of-memory also tiles. A 1080p frame still runs whole; 4K is tiled in 1024 px tiles, which
    keeps a 3840x2160 image under 3 GB of peak memory on a CPU."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.tile is None or self.tile >= 16, f"--tile must be >= 16, got {self.tile}")
        _check(self.tile_overlap >= 0, f"--tile_overlap must be >= 0, got {self.tile_overlap}")
        _check(
            self.tile is None or self.tile_overlap < self.tile,
            f"--tile_overlap must be smaller than --tile, got {self.tile_overlap} with --tile {self.tile}",
        )
        _check(
            self.tile_overlap < MIN_TILE,
            f"--tile_overlap must be < {MIN_TILE} (the smallest tile out-of-memory retries use), "
            f"got {self.tile_overlap}",
        )
        _check(self.max_pixels >= 256 * 256, f"--max_pixels must be >= 65536, got {self.max_pixels}")


def field_names(group: type) -> tuple[str, ...]:
    """The fields of dataclass ``group`` (those it inherits included), in declaration order."""
    return tuple(f.name for f in fields(group))


def field_values(obj: object, group: type) -> dict:
    """The values of ``obj`` (a group, a script's composite of groups, or anything with those
    attributes) for the fields of dataclass ``group``: how a group's values reach a constructor."""
    return {name: getattr(obj, name) for name in field_names(group)}
