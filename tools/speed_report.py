"""Speed report: IllRecNet against the yardstick U-Net, measured in one run.

``python -m tools.speed_report`` (or ``--checkpoint_path C`` for a trained model; otherwise the
default configuration) prints a Markdown table and writes JSON (atomically) with:

- parameters, and GMACs at 256x256 and 600x400 (``FlopCounterMode``, MACs = FLOPs / 2, counted
  with gradients enabled as in the model budget);
- inference latency at 600x400 and 1920x1080 (``torch.no_grad``, eval mode, median after warm-up);
- one training step (batch 4, 128x128 crops, AdamW, L1 + L2 loss, forward + backward + step;
  the fused AdamW kernel by default: the per-parameter loop costs more for models with many small
  parameter tensors than for the yardstick's 36);
- peak memory of whole-image 1080p inference and of 3840x2160 inference the way ``infer.py`` runs it
  (tiled above ``--max_pixels``, attention shared from the whole image) (CPU: peak-RSS increase in a
  fresh subprocess per measurement; CUDA: ``torch.cuda.max_memory_allocated``);
- the data pipeline (``PairedImageDataset``, crop 128 + augmentation, ``num_workers=2``) in
  samples/s, against the samples/s that training consumes: as ``train.py`` runs it by default
  (decoded images kept in memory, ``cache_gb``; this row has the target) and decoding every
  sample from disk;
- model FLOP/s at 600x400 as a fraction of the machine's fp32 matmul peak (a large ``torch.mm``);
- the file I/O ``infer.py`` does around the model for one 1920x1080 image: decoding the input PNG
  and encoding + writing the output PNG (a training photo resized to that size).

Every timing of IllRecNet is interleaved with the same timing of the yardstick (A B A B ...), so
machine noise hits both, and a ratio is the median over rounds of ``IllRecNet / yardstick`` times
measured back to back. Sizes are written ``W x H``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tools import check_device, publish
from utils.hparams import (
    CompileMode,
    DataHparams,
    ModelHparams,
    TileHparams,
    check_compile_mode,
    field_values,
)
from utils.utils import parse_hparams

TARGETS = {
    "latency_600x400_ratio": 1.5,
    "train_step_ratio": 1.7,
    "flops_fraction_of_matmul_peak": 0.35,
    "peak_memory_1080p_gb": 2.5,
    "peak_memory_4k_tiled_gb": 3.0,
    "data_pipeline_ratio": 4.0,
    "data_pipeline_photos_ratio": 4.0,
    "params_m": 2.0,
    "gmacs_256x256": 8.0,
    "mac_scaling_4x_pixels": 4.5,
}
"""Bounds the report checks (keys named after the full-size measurements; ``--quick`` checks its
tiny sizes against the same numbers). Upper bounds except :data:`LOWER_BOUNDS`."""
LOWER_BOUNDS = frozenset(
    {"flops_fraction_of_matmul_peak", "data_pipeline_ratio", "data_pipeline_photos_ratio"}
)


@dataclass
class SpeedHparams:
    """Speed report of IllRecNet against the yardstick U-Net."""

    threads: int = 2
    """torch intra-op threads (also used by the memory subprocesses)."""
    repeats: int = 7
    """Timed repetitions of each measurement (the median is reported)."""
    warmup: int = 2
    """Untimed repetitions before timing."""
    checkpoint_path: str | None = None
    """Trained checkpoint to measure (default: the default model configuration, random weights)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device to measure on."""
    output: str = "runs/speed/speed_report.json"
    """JSON report (written atomically)."""
    fused_adamw: bool = True
    """Fused AdamW kernel in the training step (false: PyTorch's default per-parameter loop)."""
    train_data_path: str = "sample/1_train"
    """Split whose pairs feed the data-pipeline measurement."""
    quick: bool = False
    """Tiny sizes and one repetition: checks that the report runs, not how fast anything is."""
    compile: bool = False
    """torch.compile both models before timing (compilation happens in the warm-up rounds; MACs and
    the peak-memory subprocesses stay eager). Inference compiles with dynamo's automatic dynamic
    sizes, the training step with static ones, as valid/infer and train.py do."""
    compile_mode: CompileMode = "default"
    """torch.compile's mode with ``compile`` (reduce-overhead: CUDA graphs on a GPU; give it
    ``--warmup 3`` or more, since a graph is recorded on the second call of each size)."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.compile and self.warmup < 1:
            raise ValueError("compile needs warmup >= 1 (the first round compiles)")
        check_compile_mode(self.compile, self.compile_mode)
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        check_device(self.device)


@dataclass(frozen=True)
class Sizes:
    """Every size the report uses, ``(W, H)``; ``quick`` shrinks them all."""

    macs: tuple[tuple[int, int], ...]
    scaling: tuple[tuple[int, int], tuple[int, int]]
    latency: tuple[tuple[int, int], ...]
    memory: tuple[int, int]
    tiled: tuple[int, int]
    tiled_max_pixels: int
    crop: int
    batch: int
    matmul: int
    data_batches: int


# QUICK: tiny sizes, so the tests run every row in seconds.
# fmt: off
FULL = Sizes(macs=((256, 256), (600, 400)), scaling=((256, 256), (512, 512)),
             latency=((600, 400), (1920, 1080)), memory=(1920, 1080),
             tiled=(3840, 2160), tiled_max_pixels=TileHparams.max_pixels,
             crop=128, batch=4, matmul=2048, data_batches=60)
QUICK = Sizes(macs=((32, 32), (48, 40)), scaling=((32, 32), (64, 64)),
              latency=((48, 40), (72, 56)), memory=(72, 56),
              tiled=(320, 256), tiled_max_pixels=65536,
              crop=32, batch=2, matmul=256, data_batches=3)
# fmt: on


def wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------ models
def build_models(checkpoint_path: str | None) -> tuple[nn.Module, nn.Module, dict]:
    """IllRecNet's enhancer (from the checkpoint, else default config), the yardstick, the config."""
    from model.model import LowLightEnhancerLightning, load_checkpoint
    from tools.yardstick import YardstickUNet

    module = load_checkpoint(checkpoint_path) if checkpoint_path else LowLightEnhancerLightning()
    hp = module.hparams
    config = field_values(hp, ModelHparams) | {"trainable_separation": hp.trainable_separation}
    return module.model, YardstickUNet(), config


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


SDPA_CPU_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}
"""FlopCounterMode counts the CUDA SDPA kernels but not the CPU one; these formulas fill the gap."""


def gmacs(model: nn.Module, size: tuple[int, int], device: torch.device) -> float:
    """Forward GMACs of one ``(1, 3, H, W)`` image, counted with gradients enabled (FLOPs / 2)."""
    x = torch.rand(1, 3, size[1], size[0], device=device)
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device):
    """Time each callable ``repeats`` times, alternating between them (A B A B ...).

    Returns ``{name: [seconds, ...]}`` with one entry per round, in round order.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def compare(times: dict[str, list[float]]) -> dict:
    """Medians of both models, the median over rounds of their paired ratio (the reported ratio), and
    the ratio of the two fastest times (``ratio_of_best``: closest to a quiet machine when other
    processes compete for the cores only part of the time)."""
    ill, yard = times["illrecnet"], times["yardstick"]
    return {
        "illrecnet_s": statistics.median(ill),
        "yardstick_s": statistics.median(yard),
        "ratio": statistics.median(a / b for a, b in zip(ill, yard, strict=True)),
        "ratio_of_best": min(ill) / min(yard),
        "illrecnet_all_s": ill,
        "yardstick_all_s": yard,
    }


def inference_fn(model: nn.Module, size: tuple[int, int], device: torch.device) -> Callable[[], object]:
    x = torch.rand(1, 3, size[1], size[0], device=device)

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def train_step_fn(
    model: nn.Module, crop: int, batch: int, device: torch.device, fused: bool
) -> Callable[[], object]:
    """One AdamW step on a fixed random batch with L1 + L2 loss (forward + backward + step)."""
    low = torch.rand(batch, 3, crop, crop, device=device)
    high = torch.rand(batch, 3, crop, crop, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused or None)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(low)
        (F.l1_loss(out, high) + F.mse_loss(out, high)).backward()
        optimizer.step()

    return run


def matmul_peak_gflops(n: int, repeats: int, device: torch.device) -> float:
    """fp32 ``torch.mm`` of two ``n x n`` matrices: the best GFLOP/s of ``repeats`` runs."""
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(max(3, repeats)):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------ memory
def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_worker(
    model_file: str, size: tuple[int, int], device: str, threads: int, max_pixels: int | None = None
) -> dict:
    """Peak memory increase of one no-grad inference (run in a fresh process): of the whole image, or
    with ``max_pixels`` as ``infer.py`` runs it (``engine.enhance.enhance_one``: tiled above
    ``max_pixels`` pixels, the attention shared from a shrunk copy of the whole image).

    CPU: peak RSS during the forward minus RSS just before it (VmHWM is reset first where the
    kernel allows; otherwise the baseline is the peak so far). CUDA: max_memory_allocated minus
    memory_allocated before the forward.
    """
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = torch.load(model_file, map_location=dev, weights_only=False).eval()  # our own file
    x = torch.rand(1, 3, size[1], size[0], device=dev)
    forward = model
    if max_pixels is not None:
        from engine.enhance import Enhance, enhance_one

        enhance = Enhance(model, dev)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return enhance_one(enhance, x, TileHparams(max_pixels=max_pixels))[0]

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        with torch.no_grad():
            forward(x)
        torch.cuda.synchronize(dev)
        return {"bytes": torch.cuda.max_memory_allocated(dev) - before, "method": "cuda max_memory_allocated"}
    reset = _reset_peak_rss()
    before = _status_bytes("VmRSS") if reset else _peak_rss_bytes()
    with torch.no_grad():
        forward(x)
    method = "VmHWM (reset first) minus VmRSS before" if reset else "peak RSS minus the peak before"
    return {"bytes": _peak_rss_bytes() - before, "method": method}


def peak_memory(
    model: nn.Module, size: tuple[int, int], device: str, threads: int, max_pixels: int | None = None
) -> dict:
    """Run :func:`memory_worker` in a fresh spawned interpreter so earlier allocations do not count.

    The model travels as a pickled module in a temporary file: the worker needs no checkpoint
    loading (and no Lightning import).
    """
    with tempfile.TemporaryDirectory() as folder:
        model_file = str(Path(folder) / "model.pt")
        torch.save(model, model_file)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(memory_worker, (model_file, size, device, threads, max_pixels))


# ------------------------------------------------------------------------------------ data pipeline
def data_pipeline(
    train_data_path: str, crop: int, batch: int, batches: int, cache_gb: float, photos: bool = False
) -> dict:
    """Samples/s the project's training pipeline delivers (2 workers), after the first batch;
    ``cache_gb`` as in ``train.py`` (0: every sample decoded from disk). With ``photos`` the split's
    references are served as a photo folder: every sample's low image synthesized on the fly (the
    ``camera`` regime, the costliest: white balance, correlated noise, JPEG)."""
    from dataclasses import replace

    from torch.utils.data import DataLoader

    from data.dataloader import PairedImageDataset, SeededSampler, decode_in_memory
    from data.synthesize import REGIMES
    from data.utils import scan_split

    pairs = [p for sub in scan_split(train_data_path, require_high=True).values() for p in sub]
    if photos:
        pairs = [replace(p, low=p.high, synthetic=True) for p in pairs]
    decoded = decode_in_memory([p for pair in pairs for p in (pair.low, pair.high)], cache_gb)
    repeat = -(-(batches + 2) * batch // len(pairs))
    dataset = PairedImageDataset(
        pairs * repeat, crop_size=crop, augment=True, decoded=decoded, synthesis=REGIMES["camera"]
    )
    sampler = SeededSampler(dataset, seed=0)  # training's sampler: a seed per sample for its crop and flips
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=2, persistent_workers=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        samples += next(iterator)["low"].shape[0]
    seconds = time.perf_counter() - start
    del iterator, loader
    return {
        "pairs": len(pairs),
        "in_memory": bool(decoded),
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }


def image_io(train_data_path: str, size: tuple[int, int], repeats: int) -> dict:
    """Median seconds to decode one ``size`` PNG (``load_image``) and to write one
    (``save_png_atomic``: encode, temporary file, fsync, rename), made from the first training photo."""
    import cv2

    from data.utils import PNG_COMPRESS_LEVEL, decode_image_array, load_image, save_png_atomic, scan_split

    first = next(iter(scan_split(train_data_path, require_high=True).values()))[0]
    image = cv2.resize(decode_image_array(first.high), size, interpolation=cv2.INTER_CUBIC)
    encode, decode = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.png"
        for _ in range(repeats):
            start = time.perf_counter()
            save_png_atomic(path, image)
            encode.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_image(path)
            decode.append(time.perf_counter() - start)
        nbytes = path.stat().st_size
    return {
        "size": wxh(size),
        "decode_s": statistics.median(decode),
        "encode_s": statistics.median(encode),
        "png_bytes": nbytes,
        "png_compress_level": PNG_COMPRESS_LEVEL,
    }


# ------------------------------------------------------------------------------------------ report
def _check(value: float, target: float, upper: bool) -> str:
    return "PASS" if (value <= target if upper else value >= target) else "FAIL"


def _done(what: str, times: dict) -> None:
    """One finished timing on stderr right away, so a run stopped later still shows it."""
    print(
        f"  {what}: IllRecNet {times['illrecnet_s']:.4f} s, yardstick {times['yardstick_s']:.4f} s, "
        f"ratio {times['ratio']:.2f}",
        file=sys.stderr,
    )


def compile_for_training(models: Iterable[nn.Module], mode: str = "default") -> None:
    """Recompile models that inference compiled, with static sizes for the training step.

    Two inference sizes make dynamo mark height and width dynamic, and inductor cannot compile
    this network's backward with symbolic sizes in torch 2.14.1 ("cannot determine truth value of
    Relational"). train.py compiles training with static shapes too (``LightningEngine.compiled``);
    here the inference graphs and dynamo's size history are forgotten first.
    """
    torch._dynamo.reset()
    for model in models:
        model.compile(dynamic=False, mode=mode)


def measure(hp: SpeedHparams) -> dict:
    """Run every measurement; returns the JSON-ready report."""
    torch.set_num_threads(hp.threads)
    torch.manual_seed(0)
    sizes = QUICK if hp.quick else FULL
    repeats, warmup = (1, int(hp.compile)) if hp.quick else (hp.repeats, hp.warmup)
    device = torch.device(hp.device)
    illrecnet, yardstick, config = build_models(hp.checkpoint_path)
    models = {"illrecnet": illrecnet.to(device), "yardstick": yardstick.to(device)}

    load_start = os.getloadavg()[0]
    report: dict = {
        "machine": {
            "device": hp.device,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "threads": hp.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            # PyTorch's defaults, which training uses too: cuDNN convolutions may take TF32
            "tf32": {
                "cudnn": torch.backends.cudnn.allow_tf32,
                "matmul": torch.backends.cuda.matmul.allow_tf32,
            },
        },
        "settings": {**asdict(hp), "repeats": repeats, "warmup": warmup},
        "model_config": config,
        "checkpoint_path": hp.checkpoint_path,
        "sizes_note": "sizes are W x H",
    }
    print("counting parameters and MACs ...", file=sys.stderr)
    for name, model in models.items():
        model.train()
        entry = {"params": count_params(model)}
        entry["gmacs"] = {wxh(s): gmacs(model, s, device) for s in sizes.macs}
        small, big = (gmacs(model, s, device) for s in sizes.scaling)
        entry["mac_scaling_4x_pixels"] = big / small
        report[name] = entry

    if hp.compile:
        for model in models.values():
            model.compile(mode=hp.compile_mode)
    print("timing inference (interleaved) ...", file=sys.stderr)
    for model in models.values():
        model.eval()
    report["latency"] = {}
    for size in sizes.latency:
        fns = {name: inference_fn(model, size, device) for name, model in models.items()}
        report["latency"][wxh(size)] = compare(interleaved(fns, repeats, warmup, device))
        _done(f"inference {wxh(size)}", report["latency"][wxh(size)])

    print("timing training steps (interleaved) ...", file=sys.stderr)
    for model in models.values():
        model.train()
    if hp.compile:
        compile_for_training(models.values(), hp.compile_mode)
    fns = {
        name: train_step_fn(model, sizes.crop, sizes.batch, device, hp.fused_adamw)
        for name, model in models.items()
    }
    train = compare(interleaved(fns, repeats, warmup, device))
    train.update(batch=sizes.batch, crop=sizes.crop, fused_adamw=hp.fused_adamw)
    train.update(illrecnet_steps_per_s=1 / train["illrecnet_s"])
    train["yardstick_steps_per_s"] = 1 / train["yardstick_s"]
    report["train_step"] = train
    _done("training step", train)

    print("measuring peak memory (fresh subprocesses) ...", file=sys.stderr)
    report["peak_memory"] = {
        "size": wxh(sizes.memory),
        **{name: peak_memory(m, sizes.memory, hp.device, hp.threads) for name, m in models.items()},
    }
    report["peak_memory_tiled"] = {
        "size": wxh(sizes.tiled),
        "max_pixels": sizes.tiled_max_pixels,
        **{
            name: peak_memory(m, sizes.tiled, hp.device, hp.threads, sizes.tiled_max_pixels)
            for name, m in models.items()
        },
    }
    for key in ("peak_memory", "peak_memory_tiled"):
        mem = report[key]
        print(
            f"  peak memory {mem['size']}: "
            + ", ".join(f"{name} {mem[name]['bytes'] / 1e9:.2f} GB" for name in models),
            file=sys.stderr,
        )

    print("measuring the matmul peak and the data pipeline ...", file=sys.stderr)
    peak = matmul_peak_gflops(sizes.matmul, repeats, device)
    first = wxh(sizes.latency[0])
    model_gflops = 2 * report["illrecnet"]["gmacs"][first] / report["latency"][first]["illrecnet_s"]
    yard_gflops = 2 * report["yardstick"]["gmacs"][first] / report["latency"][first]["yardstick_s"]
    report["flops"] = {
        "matmul_n": sizes.matmul,
        "matmul_peak_gflops": peak,
        "size": first,
        "illrecnet_gflops": model_gflops,
        "illrecnet_fraction": model_gflops / peak,
        "yardstick_gflops": yard_gflops,
        "yardstick_fraction": yard_gflops / peak,
    }
    consumes = train["illrecnet_steps_per_s"] * sizes.batch
    cache = DataHparams().cache_gb
    for key, cache_gb, photos in (
        ("data_pipeline", cache, False),
        ("data_pipeline_from_disk", 0.0, False),
        ("data_pipeline_photos", cache, True),
    ):
        data = data_pipeline(
            hp.train_data_path, sizes.crop, sizes.batch, sizes.data_batches, cache_gb, photos
        )
        data["train_consumes_samples_per_s"] = consumes
        data["ratio"] = data["samples_per_s"] / consumes
        report[key] = data
    data = report["data_pipeline"]
    report["image_io"] = image_io(hp.train_data_path, sizes.memory, repeats)

    ill = report["illrecnet"]
    checks = {
        "params_m": ill["params"] / 1e6,
        "gmacs_256x256": ill["gmacs"][wxh(sizes.macs[0])],
        "mac_scaling_4x_pixels": ill["mac_scaling_4x_pixels"],
        "latency_600x400_ratio": report["latency"][first]["ratio"],
        "train_step_ratio": train["ratio"],
        "flops_fraction_of_matmul_peak": model_gflops / peak,
        "peak_memory_1080p_gb": report["peak_memory"]["illrecnet"]["bytes"] / 1e9,
        "peak_memory_4k_tiled_gb": report["peak_memory_tiled"]["illrecnet"]["bytes"] / 1e9,
        "data_pipeline_ratio": data["ratio"],
        "data_pipeline_photos_ratio": report["data_pipeline_photos"]["ratio"],
    }
    report["machine"]["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    report["targets"] = {
        key: {
            "value": value,
            "target": TARGETS[key],
            "bound": "min" if key in LOWER_BOUNDS else "max",
            "status": _check(value, TARGETS[key], upper=key not in LOWER_BOUNDS),
        }
        for key, value in checks.items()
    }
    return report


def markdown(report: dict) -> str:
    """The report as a Markdown table: IllRecNet | yardstick | ratio | target | status."""
    ill, yard, targets = report["illrecnet"], report["yardstick"], report["targets"]
    lat, train, mem, flops = report["latency"], report["train_step"], report["peak_memory"], report["flops"]
    data, machine, settings = report["data_pipeline"], report["machine"], report["settings"]
    rows = [
        "| measurement | IllRecNet | yardstick | IllRecNet / yardstick | target | status |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, a: str, b: str, ratio: str = "", key: str | None = None) -> None:
        bound = status = ""
        if key is not None:
            t = targets[key]
            bound, status = f"{'<=' if t['bound'] == 'max' else '>='} {t['target']:g}", t["status"]
        rows.append(f"| {label} | {a} | {b} | {ratio} | {bound} | {status} |")

    row("parameters (M)", f"{ill['params'] / 1e6:.3f}", f"{yard['params'] / 1e6:.3f}",
        f"{ill['params'] / yard['params']:.2f}", "params_m")  # fmt: skip
    for i, size in enumerate(ill["gmacs"]):
        a, b = ill["gmacs"][size], yard["gmacs"][size]
        row(f"GMACs {size}", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}", "gmacs_256x256" if i == 0 else None)
    row("MACs growth for 4x pixels", f"{ill['mac_scaling_4x_pixels']:.2f}x",
        f"{yard['mac_scaling_4x_pixels']:.2f}x", "", "mac_scaling_4x_pixels")  # fmt: skip
    for i, (size, t) in enumerate(lat.items()):
        row(f"inference {size} (s, median)", f"{t['illrecnet_s']:.3f}", f"{t['yardstick_s']:.3f}",
            f"{t['ratio']:.2f} (best {t['ratio_of_best']:.2f})",
            "latency_600x400_ratio" if i == 0 else None)  # fmt: skip
    row(f"training step, batch {train['batch']} x {train['crop']}^2 (s)",
        f"{train['illrecnet_s']:.3f} ({train['illrecnet_steps_per_s']:.2f} steps/s)",
        f"{train['yardstick_s']:.3f} ({train['yardstick_steps_per_s']:.2f} steps/s)",
        f"{train['ratio']:.2f} (best {train['ratio_of_best']:.2f})", "train_step_ratio")  # fmt: skip
    a, b = mem["illrecnet"]["bytes"], mem["yardstick"]["bytes"]
    row(f"peak memory, {mem['size']} inference (GB)", f"{a / 1e9:.2f}", f"{b / 1e9:.2f}",
        f"{a / max(1, b):.2f}", "peak_memory_1080p_gb")  # fmt: skip
    tiled = report["peak_memory_tiled"]
    a, b = tiled["illrecnet"]["bytes"], tiled["yardstick"]["bytes"]
    row(f"peak memory, {tiled['size']} inference as infer.py runs it (tiled above {tiled['max_pixels']:,} "
        "pixels) (GB)", f"{a / 1e9:.2f}", f"{b / 1e9:.2f}", f"{a / max(1, b):.2f}",
        "peak_memory_4k_tiled_gb")  # fmt: skip
    row(f"model GFLOP/s at {flops['size']} (fraction of the {flops['matmul_peak_gflops']:.0f} GFLOP/s "
        "matmul peak)", f"{flops['illrecnet_gflops']:.1f} ({flops['illrecnet_fraction']:.0%})",
        f"{flops['yardstick_gflops']:.1f} ({flops['yardstick_fraction']:.0%})", "",
        "flops_fraction_of_matmul_peak")  # fmt: skip
    where = "decoded images in memory, as train.py" if data.get("in_memory") else "decoded from disk"
    row(f"data pipeline, samples/s ({where}; ratio: to the {data['train_consumes_samples_per_s']:.1f}/s "
        "training consumes)", f"{data['samples_per_s']:.1f}", "", f"{data['ratio']:.1f}x",
        "data_pipeline_ratio")  # fmt: skip
    disk = report.get("data_pipeline_from_disk")
    if disk is not None:
        row("data pipeline, samples/s, every sample decoded from disk (`--cache_gb 0`)",
            f"{disk['samples_per_s']:.1f}", "", f"{disk['ratio']:.1f}x", None)  # fmt: skip
    photos = report.get("data_pipeline_photos")
    if photos is not None:
        row("data pipeline, samples/s, photo folders (low images synthesized on the fly, camera regime)",
            f"{photos['samples_per_s']:.1f}", "", f"{photos['ratio']:.1f}x",
            "data_pipeline_photos_ratio")  # fmt: skip
    file_io = report.get("image_io")
    if file_io is not None:
        row(f"infer.py's file I/O per {file_io['size']} image: PNG decode + encode and write (s)",
            f"{file_io['decode_s']:.3f} + {file_io['encode_s']:.3f}", "", "", None)  # fmt: skip
    tf32 = machine.get("tf32") if machine["device"] == "cuda" else None  # the switches mean nothing on a CPU
    on = lambda flag: "on" if flag else "off"  # noqa: E731
    head = (
        f"Speed report ({machine['device']}: {machine['name']}, fp32"
        + (
            f" (TF32 in cuDNN convolutions {on(tf32['cudnn'])}, in matrix products {on(tf32['matmul'])})"
            if tf32
            else ""
        )
        + (
            f", torch.compile mode {settings.get('compile_mode', 'default')} (MACs and peak memory eager)"
            if settings.get("compile")
            else ""
        )
        + f", {machine['threads']} threads; "
        f"{settings['repeats']} interleaved rounds after {settings['warmup']} warm-up; sizes W x H; "
        "a ratio is the median over rounds of IllRecNet / yardstick timed back to back; best: ratio of "
        "the fastest times)"
    )
    load = machine["load_average_1min"]
    busy = max(load.values()) > machine["threads"] + 0.5 and machine["device"] == "cpu"
    note = (
        f"\nMachine load (1-min average) {load['start']:.1f} at the start, {load['end']:.1f} at the end"
        + (
            f": above the {machine['threads']} threads measured, so other processes competed for the "
            "cores; absolute times are unreliable (the interleaved ratios less so).\n"
            if busy
            else ".\n"
        )
    )
    config = ", ".join(f"{k}={v}" for k, v in report["model_config"].items())
    return f"{head}\n\nIllRecNet: {config}\n\n" + "\n".join(rows) + "\n" + note


def get_hparams() -> SpeedHparams:
    return SpeedHparams()


def main(hp: SpeedHparams) -> dict:
    report = measure(hp)
    publish(report, markdown(report), hp.output)
    return report


if __name__ == "__main__":
    main(parse_hparams(type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:]))
