"""Image-quality metrics for IllRecNet under one stated protocol.

Published low-light enhancement numbers are computed on saved 8-bit images, so every metric here first
clamps the enhanced output to [0, 1] and rounds it to 8 bits (`quantize_8bit`). PSNR and SSIM are taken
on RGB, through pyiqa's own implementations (`psnr`, and `ssimc`: its SSIM with `test_y_channel=False`;
pyiqa's plain `ssim` is luminance-only). The "GT-mean" protocol (`gt_mean_rescale`) only ever fills its
own labelled columns, `PSNR_GTmean` and `SSIM_GTmean`. `PROTOCOL` states all of it, for bench.json and
table headers.

`psnr` / `ssim` are batched torch functions for training-time validation. `BenchScorer` scores one image
at a time for benchmarks: PSNR, SSIM, LPIPS (full-reference) and NIQE, BRISQUE (no-reference). NIQE and
BRISQUE run offline from LIVE's parameter files shipped in `assets/iqa/`. LPIPS needs two weight files in
the torch hub cache (see `lpips_weight_files`); without them its value is `None` ("n/a"), never a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pyiqa
import torch
import torchmetrics
from pyiqa.archs import build_network
from pyiqa.default_model_configs import DEFAULT_CONFIGS
from torch import Tensor

log = logging.getLogger(f"illrecnet.{__name__}")  # shown by utils.utils.setup_logging

ASSETS_IQA = Path(__file__).resolve().parents[1] / "assets" / "iqa"
NIQE_PARAMS = ASSETS_IQA / "niqe_modelparameters.mat"
BRISQUE_PARAMS = ASSETS_IQA / "brisque_svm_weights.pth"

PSNR_EPS = 1e-8
"""Added to the MSE (images in [0, 1]) in PSNR (pyiqa's value): identical images score 80 dB."""
PSNR_IDENTICAL_DB = 10.0 * math.log10(1.0 / PSNR_EPS)

PYIQA_NAMES = {"PSNR": "psnr", "SSIM": "ssimc", "LPIPS": "lpips", "NIQE": "niqe", "BRISQUE": "brisque"}
"""pyiqa metric name behind each column."""
METRICS = tuple(PYIQA_NAMES)
FULL_REFERENCE = frozenset({"PSNR", "SSIM", "LPIPS"})
LOWER_IS_BETTER = frozenset({"LPIPS", "NIQE", "BRISQUE"})
GT_MEAN_COLUMNS = {"PSNR": "PSNR_GTmean", "SSIM": "SSIM_GTmean"}

MIN_SIDE = {"PSNR": 1, "SSIM": 11, "LPIPS": 31, "NIQE": 96, "BRISQUE": 14}
"""Smallest image side each metric is defined on; smaller images score `None`. SSIM: its 11x11 window
('valid' borders). LPIPS: AlexNet's layers up to relu5. NIQE: one 96x96 block (pyiqa's block size).
BRISQUE: its 7x7 window at both of its scales (full and half size)."""

LPIPS_LINEAR_FILE = "LPIPS_v0.1_alex-df73285e.pth"
"""pyiqa's LPIPS linear layers, looked up in `<torch hub dir>/pyiqa/`."""
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's ImageNet AlexNet, looked up in `<torch hub dir>/checkpoints/`."""
_TORCHMETRICS_LPIPS_ALEX = Path(torchmetrics.__file__).parent / "functional/image/lpips_models/alex.pth"
_LPIPS_LINEAR_SHA256 = "df73285e"  # sha256 prefix that pyiqa puts in the file name
DOWNLOAD_ENV = "ILLRECNET_IQA_DOWNLOAD"
"""Set to 0 to stop pyiqa/torchvision from trying to download missing LPIPS weights (default: try,
each socket operation bounded by ``DOWNLOAD_TIMEOUT_S``)."""
DOWNLOAD_TIMEOUT_S = 20.0
"""Bound on each socket operation of an allowed LPIPS download, so an offline machine never hangs."""

PROTOCOL: dict[str, str] = {
    "color": "RGB, all three channels (no Y/luma conversion) for PSNR, SSIM and LPIPS",
    "quantization": "the enhanced image is clamped to [0,1] and rounded to 8 bits, round(255*x)/255 "
    "(torch.round, half to even), before every metric; so is the target (a no-op for 8-bit files)",
    "PSNR": f"pyiqa 'psnr' (test_y_channel=False): 10*log10(1/(MSE+{PSNR_EPS:g})), MSE over RGB and "
    f"pixels with data range 1; identical images give {PSNR_IDENTICAL_DB:.1f} dB, never inf",
    "SSIM": "pyiqa 'ssimc' (SSIM with test_y_channel=False, downsample=False): 11x11 Gaussian window "
    "sigma 1.5, 'valid' borders, K1=0.01, K2=0.03, data range 255, float64, mean over the three RGB "
    "channels; the same as skimage structural_similarity(channel_axis=-1, data_range=255, "
    "gaussian_weights=True, sigma=1.5, use_sample_covariance=False) except that pyiqa clips negative "
    "contrast-structure terms to 0 (differences <= 6e-5 measured on LOLv1 pair 778)",
    "GT-mean": "PSNR_GTmean and SSIM_GTmean only: the quantized output is multiplied by "
    "mean(target)/mean(output), each the mean over the image's pixels of the BT.601 luma "
    "0.299R+0.587G+0.114B (OpenCV's RGB2GRAY, the grey mean of KinD-style GT-mean evaluation), then "
    "clamped to [0,1] and rounded to 8 bits again; PSNR and SSIM columns never use it",
    "LPIPS": "pyiqa 'lpips' (AlexNet, v0.1), inputs in [0,1]; n/a when its weights are not cached",
    "NIQE": "pyiqa 'niqe' (Y channel) with LIVE's niqe_modelparameters.mat, on the enhanced image",
    "BRISQUE": "pyiqa 'brisque' (Y channel) with LIVE's SVR (brisque_svm_weights.pth), on the enhanced image",
    "small images": "a metric scores n/a on images smaller than its minimum side: "
    + ", ".join(f"{k} {v}px" for k, v in MIN_SIDE.items() if v > 1),
}
PROTOCOL_SUMMARY = (
    f"RGB; output clamped to [0,1] and rounded to 8 bits; PSNR eps {PSNR_EPS:g} "
    f"(identical = {PSNR_IDENTICAL_DB:.0f} dB); SSIM = pyiqa ssimc (Gaussian 11/1.5, mean over RGB); "
    "*_GTmean columns scale the output by mean(GT)/mean(output) of the BT.601 luma first"
)
"""One line for table headers; `PROTOCOL` has the full text."""


def quantize_8bit(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the nearest k/255, as saving an 8-bit image does."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma of RGB (OpenCV's RGB2GRAY): the grey level whose mean the GT-mean protocol
matches in the evaluation scripts of KinD and the LLIE papers that follow it."""


def gt_mean_rescale(pred: Tensor, target: Tensor, luma: bool = True) -> Tensor:
    """GT-mean protocol: scale each image so its mean grey level matches the ground truth's.

    pred, target: (B, 3, H, W) (``luma=False``: any C). Both are clamped to [0, 1]; each prediction
    is multiplied by mean(target) / mean(pred), the means of the BT.601 luma over the image's pixels
    (as published GT-mean numbers are computed), or with ``luma=False`` over all channels and pixels
    (``tools.quality``'s brightness diagnostic), and the result is clamped to [0, 1] again. An
    all-black prediction stays black. Returns (B, C, H, W).
    """
    pred, target = pred.clamp(0.0, 1.0), target.clamp(0.0, 1.0)

    def mean(x: Tensor) -> Tensor:  # (B, 1, 1, 1)
        if not luma:
            return x.mean(dim=(1, 2, 3), keepdim=True)
        weights = x.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)

    return (pred * (mean(target) / mean(pred).clamp_min(1e-12))).clamp(0.0, 1.0)


def _pyiqa_arch(name: str, **overrides: object) -> torch.nn.Module:
    """The stateless pyiqa network behind metric `name`: pyiqa's options for that name, plus overrides."""
    return build_network({**DEFAULT_CONFIGS[name]["metric_opts"], **overrides})


_PSNR_NET = _pyiqa_arch(PYIQA_NAMES["PSNR"], eps=PSNR_EPS, data_range=1.0)
_SSIM_NET = _pyiqa_arch(PYIQA_NAMES["SSIM"])


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(
            f"metrics need two (B, C, H, W) tensors of one shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB of each image, on RGB after 8-bit quantization (see `PROTOCOL`).

    pred, target: (B, C, H, W), any range (clamped). Returns (B,) float32; identical images give
    `PSNR_IDENTICAL_DB` (80 dB), never inf.
    """
    _check_pair(pred, target)
    pred_q, target_q = quantize_8bit(pred), quantize_8bit(target.to(pred.device))
    return _PSNR_NET(pred_q, target_q).float()  # (B,)


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM of each image, pyiqa's `ssimc` on RGB after 8-bit quantization (see `PROTOCOL`).

    pred, target: (B, C, H, W), any range (clamped), both sides at least `MIN_SIDE["SSIM"]` (11).
    Returns (B,) float32.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < MIN_SIDE["SSIM"]:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; got {tuple(pred.shape[-2:])}")
    pred_q, target_q = quantize_8bit(pred), quantize_8bit(target.to(pred.device))
    return _SSIM_NET(pred_q, target_q).float()  # (B,)


def lpips_weight_files() -> dict[str, Path]:
    """Where pyiqa's LPIPS (AlexNet) finds its two weight files, under the current torch hub dir."""
    hub = Path(torch.hub.get_dir())
    return {
        LPIPS_LINEAR_FILE: hub / "pyiqa" / LPIPS_LINEAR_FILE,
        ALEXNET_FILE: hub / "checkpoints" / ALEXNET_FILE,
    }


def _lpips_linear_weights() -> Path | None:
    """pyiqa's cached LPIPS linear layers, else torchmetrics' bundled copy of that file (hash-checked)."""
    cached = lpips_weight_files()[LPIPS_LINEAR_FILE]
    if cached.is_file():
        return cached
    if _TORCHMETRICS_LPIPS_ALEX.is_file():
        digest = hashlib.sha256(_TORCHMETRICS_LPIPS_ALEX.read_bytes()).hexdigest()
        if digest.startswith(_LPIPS_LINEAR_SHA256):
            return _TORCHMETRICS_LPIPS_ALEX
    return None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation (urllib downloads have no timeout of their own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class MetricUnavailableError(RuntimeError):
    """A requested metric cannot produce a number (strict mode)."""


class BenchScorer:
    """Scores one enhanced image (and its ground truth, if any) with the requested metrics.

    The pyiqa metrics are built once, here. NIQE and BRISQUE load LIVE's parameters from `assets/iqa/`
    and never touch the network. LPIPS uses the weights in the torch hub cache (`lpips_weight_files`);
    when they are missing it logs one line saying which files go where and scores `None`, unless
    `allow_download` (default: yes, unless env `ILLRECNET_IQA_DOWNLOAD=0`) lets pyiqa fetch them, each socket
    operation bounded by `DOWNLOAD_TIMEOUT_S`. A metric that cannot score an image (too small for it, or
    a non-finite result) gives `None` with one warning per metric. With `strict=True` each of these
    cases raises `MetricUnavailableError` instead.
    """

    def __init__(
        self,
        metrics: list[str],
        device: str | torch.device = "cpu",
        strict: bool = False,
        gt_mean: bool = True,
        allow_download: bool | None = None,
    ) -> None:
        names = [m.upper() for m in metrics]
        unknown = sorted(set(names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
        self.metrics = [m for m in METRICS if m in names]
        self.device = torch.device(device)
        self.strict = strict
        self.gt_mean = gt_mean
        if allow_download is None:
            allow_download = os.environ.get(DOWNLOAD_ENV, "1").lower() not in {"0", "false", "no"}
        self.allow_download = allow_download
        self._warned: set[str] = set()
        self._nets: dict[str, torch.nn.Module | None] = {}
        if "NIQE" in self.metrics:
            self._nets["NIQE"] = pyiqa.create_metric(
                "niqe", device=self.device, pretrained_model_path=str(NIQE_PARAMS)
            )
        if "BRISQUE" in self.metrics:
            self._nets["BRISQUE"] = pyiqa.create_metric(
                "brisque", device=self.device, pretrained_model_path=str(BRISQUE_PARAMS)
            )
        if "LPIPS" in self.metrics:
            self._nets["LPIPS"] = self._build_lpips()

    @property
    def columns(self) -> list[str]:
        """Keys of every `score` result, in table order."""
        extra = [GT_MEAN_COLUMNS[m] for m in self.metrics if m in GT_MEAN_COLUMNS] if self.gt_mean else []
        return self.metrics + extra

    def _unavailable(self, key: str, message: str) -> None:
        """Strict: raise. Otherwise log `message` once per key; the caller reports `None`."""
        if self.strict:
            raise MetricUnavailableError(message)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _build_lpips(self) -> torch.nn.Module | None:
        files = lpips_weight_files()
        linear = _lpips_linear_weights()
        missing = [files[ALEXNET_FILE]] if not files[ALEXNET_FILE].is_file() else []
        if linear is None:
            missing.insert(0, files[LPIPS_LINEAR_FILE])
        options = {"pretrained_model_path": str(linear)} if linear is not None else {}
        if not missing:
            return pyiqa.create_metric("lpips", device=self.device, **options)
        where = "; ".join(f"{p.name} -> {p.parent}/" for p in missing)
        hint = f"online, pyiqa fetches them itself unless {DOWNLOAD_ENV}=0"
        if not self.allow_download:
            self._unavailable("LPIPS", f"LPIPS unavailable (n/a): missing weights, put {where} ({hint})")
            return None
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                return pyiqa.create_metric("lpips", device=self.device, **options)
        except OSError as err:  # URLError, DNS failure, timeout
            self._unavailable("LPIPS", f"LPIPS unavailable (n/a): download failed ({err}); put {where}")
            return None

    def _compute(self, name: str, pred: Tensor, target: Tensor | None) -> float | None:
        """One metric on quantized (1, 3, H, W) images; `None` when it cannot give a number."""
        if name in FULL_REFERENCE and target is None:
            return None
        if name in self._nets and self._nets[name] is None:
            return None  # LPIPS without weights, already reported
        height, width = pred.shape[-2:]
        if min(height, width) < MIN_SIDE[name]:
            self._unavailable(
                f"{name}-size",
                f"{name} n/a for images smaller than {MIN_SIDE[name]}px a side (got {height}x{width})",
            )
            return None
        if name == "PSNR":
            value = psnr(pred, target)
        elif name == "SSIM":
            value = ssim(pred, target)
        elif name == "LPIPS":
            value = self._nets[name](pred, target)
        else:
            value = self._nets[name](pred)
        number = float(value.reshape(-1)[0])
        if not math.isfinite(number):
            self._unavailable(f"{name}-finite", f"{name} gave {number} on a {height}x{width} image; n/a")
            return None
        return number

    @torch.no_grad()
    def score(self, pred: Tensor, target: Tensor | None = None) -> dict[str, float | None]:
        """Metrics of one enhanced image, keys as in `columns`.

        pred: (1, 3, H, W), any range; it is clamped and rounded to 8 bits first. target: (1, 3, H, W)
        in [0, 1], or None, which makes every full-reference value (and the GT-mean ones) `None`.
        """
        if pred.dim() != 4 or pred.shape[0] != 1:
            raise ValueError(f"score() takes one image of shape (1, C, H, W); got {tuple(pred.shape)}")
        pred_q = quantize_8bit(pred.to(self.device, torch.float32))  # (1, 3, H, W)
        target_q = None
        if target is not None:
            _check_pair(pred, target)
            target_q = quantize_8bit(target.to(self.device, torch.float32))
        result = {name: self._compute(name, pred_q, target_q) for name in self.metrics}
        if self.gt_mean:
            rescaled = quantize_8bit(gt_mean_rescale(pred_q, target_q)) if target_q is not None else None
            for name, column in GT_MEAN_COLUMNS.items():
                if name in self.metrics:
                    result[column] = self._compute(name, rescaled, target_q) if rescaled is not None else None
        return result
