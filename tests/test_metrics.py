"""Metric values against independent references (scikit-image, pyiqa's calibration table) and the
protocol's edge cases: identical images, out-of-range outputs, GT-mean, tiny images, no network."""

from __future__ import annotations

import logging
import math
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pyiqa
import pytest
import torch
import torchvision
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from utils import metrics
from utils.metrics import (
    PSNR_IDENTICAL_DB,
    BenchScorer,
    MetricUnavailableError,
    gt_mean_rescale,
    psnr,
    quantize_8bit,
    ssim,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"  # CI puts shared/ beside the clone
LOL = SHARED / "datasets" / "LOLv1-eval15-partial"
CALIBRATION = Path(pyiqa.__file__).resolve().parents[1] / "ResultsCalibra" / "dist_dir"  # in pyiqa's wheel

# pyiqa 0.1.16's calibration table for its five TID2013 images, and its test tolerances (atol, rtol).
CALIBRATION_TABLE = {
    "NIQE": ([15.6538, 3.6549, 3.2342, 3.1922, 9.0722], (1e-2, 6e-2)),
    "BRISQUE": ([94.6443, -0.1068, 1.0732, 5.1447, 66.8415], (1e-2, 8e-2)),
}
CALIBRATION_IMAGES = ["I03", "I04", "I06", "I08", "I19"]

# pyiqa's ssimc and skimage's Gaussian SSIM (Wang et al. settings) differ only where pyiqa clips a
# negative contrast-structure term to 0, and in its float32 window: measured <= 6e-5 on the LOL pair.
SSIM_ATOL = 5e-4
# PSNR: float32 MSE plus pyiqa's eps=1e-8; measured <= 3e-6 dB on the LOL pair.
PSNR_ATOL_DB = 1e-3


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0


def smooth_image(height: int, width: int, seed: int = 0) -> Tensor:
    """A natural-looking (1, 3, H, W) test image: upsampled noise, quantized to 8 bits."""
    coarse = torch.rand(
        1, 3, max(height // 8, 2), max(width // 8, 2), generator=torch.Generator().manual_seed(seed)
    )
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return quantize_8bit(image)


@pytest.fixture(scope="module", params=["LOLv1-778", "synthetic"])
def lol_pair(request) -> tuple[np.ndarray, np.ndarray]:
    """LOLv1 pair 778 (skipped where ../shared is absent), and a synthetic dark/bright pair that is
    always there, as (H, W, 3) uint8 arrays (low, high)."""
    if request.param == "synthetic":
        high = (smooth_image(96, 128, seed=3)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        noise = np.random.default_rng(0).normal(0, 3, high.shape)
        return np.clip(np.round(high * 0.25 + noise), 0, 255).astype(np.uint8), high
    low_path, high_path = LOL / "low" / "778.png", LOL / "high" / "778.png"
    if not (low_path.is_file() and high_path.is_file()):
        pytest.skip(f"LOL pair not found under {LOL} (CI copies shared/ beside the clone)")
    return np.asarray(Image.open(low_path).convert("RGB")), np.asarray(Image.open(high_path).convert("RGB"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connection or pyiqa/torch download raises."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(pyiqa.utils.download_util, "load_file_from_url", refuse)
    monkeypatch.setattr(pyiqa.archs.niqe_arch, "load_file_from_url", refuse)
    monkeypatch.setattr(pyiqa.archs.brisque_arch, "load_file_from_url", refuse)


@pytest.fixture
def tmp_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub.get_dir() (through TORCH_HOME) points at an empty folder; downloads switched off."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(metrics.DOWNLOAD_ENV, "0")
    return tmp_path / "torch" / "hub"


@pytest.fixture
def empty_hub(tmp_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tmp_hub`, with torchmetrics' bundled copy of the LPIPS linear layers hidden too."""
    monkeypatch.setattr(metrics, "_TORCHMETRICS_LPIPS_ALEX", tmp_path / "absent.pth")
    return tmp_hub


def test_psnr_ssim_match_skimage(lol_pair: tuple[np.ndarray, np.ndarray]) -> None:
    low, high = lol_pair
    brightened = np.clip(np.round(low.astype(np.float64) * 2.0), 0, 255).astype(np.uint8)
    gamma = np.clip(np.round(255.0 * (low / 255.0) ** 0.4), 0, 255).astype(np.uint8)
    outputs = [low, brightened, gamma]
    pred = torch.cat([to_tensor(o) for o in outputs])  # (3, 3, H, W)
    target = to_tensor(high).expand_as(pred)
    ours_psnr, ours_ssim = psnr(pred, target), ssim(pred, target)  # (3,)
    for i, output in enumerate(outputs):
        ref_psnr = peak_signal_noise_ratio(high, output, data_range=255)
        ref_ssim = structural_similarity(
            high,
            output,
            channel_axis=-1,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(ours_psnr[i].item() - ref_psnr) < PSNR_ATOL_DB
        assert abs(ours_ssim[i].item() - ref_ssim) < SSIM_ATOL


@pytest.fixture(scope="module")
def nr_scorer() -> BenchScorer:
    return BenchScorer(["niqe", "brisque"], gt_mean=False)


@pytest.mark.parametrize("index", range(len(CALIBRATION_IMAGES)))
def test_niqe_brisque_calibration(nr_scorer: BenchScorer, index: int) -> None:
    path = CALIBRATION / f"{CALIBRATION_IMAGES[index]}.bmp"
    if not path.is_file():
        pytest.skip(f"pyiqa's calibration images are not installed at {CALIBRATION}")
    image = (
        torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None] / 255.0
    )
    scores = nr_scorer.score(image)
    for name, (table, (atol, rtol)) in CALIBRATION_TABLE.items():
        assert math.isclose(scores[name], table[index], abs_tol=atol, rel_tol=rtol), (name, scores[name])


def test_niqe_brisque_never_touch_network(no_network: None) -> None:
    scores = BenchScorer(["NIQE", "Brisque"]).score(smooth_image(128, 160))
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values()), scores


def test_identical_images_give_finite_documented_psnr() -> None:
    image = smooth_image(48, 40)
    other = smooth_image(48, 40, seed=1)
    values = psnr(torch.cat([image, image]), torch.cat([image, other]))  # (2,)
    assert values[0].item() == pytest.approx(PSNR_IDENTICAL_DB, abs=1e-3) == pytest.approx(80.0, abs=1e-3)
    assert torch.isfinite(values.mean())
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)


def test_out_of_range_output_is_clamped() -> None:
    target = smooth_image(112, 120)
    pred = target * 1.6 - 0.3  # (1, 3, H, W) in [-0.3, 1.3]
    clamped = pred.clamp(0, 1)
    assert psnr(pred, target).item() == psnr(clamped, target).item()
    assert ssim(pred, target).item() == ssim(clamped, target).item()
    scores = BenchScorer(["psnr", "ssim", "niqe", "brisque"]).score(pred, target)  # no pyiqa range assertion
    assert all(v is not None and math.isfinite(v) for v in scores.values()), scores


def test_quantize_8bit() -> None:
    x = torch.tensor([-0.2, 0.0, 0.3, 0.5 / 255 + 1e-4, 0.999, 1.0, 1.3])
    q = quantize_8bit(x)
    levels = q * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().tolist() == [0, 0, 76, 1, 255, 255, 255]
    assert torch.equal(quantize_8bit(q), q)


def test_saved_images_hold_the_levels_the_metrics_score() -> None:
    """infer/bench write ``to_uint8(pred)``; bench scores ``quantize_8bit(pred)``: the same 8-bit levels,
    out-of-range values and exact half levels (k + 0.5) / 255 included."""
    from engine.enhance import to_uint8

    halves = (torch.arange(256.0) + 0.5) / 255
    x = torch.cat([torch.rand(3 * 40 * 50) * 1.6 - 0.3, halves, torch.tensor([-1.0, 2.0])])
    x = x[: 3 * (x.numel() // 3)].reshape(1, 3, 1, -1)
    saved = to_uint8(x)
    assert saved.dtype == np.uint8 and saved.shape == (1, x.shape[-1], 3)
    expected = (quantize_8bit(x)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(saved, expected)


def test_gt_mean_rescale_and_separate_columns() -> None:
    target = smooth_image(96, 96)
    dark = quantize_8bit(target * 0.5)  # correct structure, half the brightness
    rescaled = gt_mean_rescale(torch.cat([dark, target * 0.25]), torch.cat([target, target]))
    assert torch.allclose(rescaled.mean(dim=(1, 2, 3)), target.mean().expand(2), atol=1e-3)  # per image
    scores = BenchScorer(["PSNR", "SSIM"]).score(dark, target)
    assert list(scores) == ["PSNR", "SSIM", "PSNR_GTmean", "SSIM_GTmean"]
    assert scores["PSNR"] < 15 < 40 < scores["PSNR_GTmean"]
    assert scores["PSNR"] == pytest.approx(psnr(dark, target).item())  # plain column is not rescaled
    assert gt_mean_rescale(torch.zeros(1, 3, 4, 4), target[..., :4, :4]).abs().max() == 0  # black stays black
    # The published protocol matches the grey (BT.601 luma) mean, not the RGB mean: a colour cast
    # makes them differ. Reference: the luma mean of the rescaled output equals the target's.
    reference = quantize_8bit(target * 0.5)  # dark enough that no rescaled channel clips
    tinted = quantize_8bit(reference * torch.tensor([0.5, 0.9, 1.4]).view(1, 3, 1, 1))
    luma = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean().item()  # noqa: E731
    assert luma(gt_mean_rescale(tinted, reference)) == pytest.approx(luma(reference), rel=1e-5)
    rgb = gt_mean_rescale(tinted, reference, luma=False)
    assert rgb.mean().item() == pytest.approx(reference.mean().item(), rel=1e-5)
    assert abs(luma(rgb) - luma(reference)) > 0.01  # the two definitions really differ here
    assert list(BenchScorer(["psnr"], gt_mean=False).score(dark, target)) == ["PSNR"]


def test_score_without_target() -> None:
    scores = BenchScorer(["psnr", "ssim", "niqe"]).score(smooth_image(100, 100))
    assert scores["PSNR"] is scores["SSIM"] is scores["PSNR_GTmean"] is scores["SSIM_GTmean"] is None
    assert isinstance(scores["NIQE"], float)


def test_tiny_images_score_none_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    scorer = BenchScorer(["psnr", "ssim", "niqe", "brisque"], gt_mean=False)
    with caplog.at_level(logging.WARNING, logger="illrecnet.utils.metrics"):
        tiny = {
            size: scorer.score(smooth_image(*size), smooth_image(*size, seed=2))
            for size in [(1, 1), (3, 5), (37, 53)]
        }
    assert all(isinstance(s["PSNR"], float) for s in tiny.values())
    assert tiny[(1, 1)]["SSIM"] is tiny[(3, 5)]["SSIM"] is None and isinstance(tiny[(37, 53)]["SSIM"], float)
    assert all(s["NIQE"] is None for s in tiny.values())
    assert tiny[(3, 5)]["BRISQUE"] is None and isinstance(tiny[(37, 53)]["BRISQUE"], float)
    assert sum("NIQE" in r.message for r in caplog.records) == 1  # once, not per image
    with pytest.raises(MetricUnavailableError, match="NIQE"):
        BenchScorer(["niqe"], strict=True).score(smooth_image(37, 53))
    with pytest.raises(ValueError, match="11x11"):
        ssim(smooth_image(3, 5), smooth_image(3, 5))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="FID"):
        BenchScorer(["psnr", "FID"])
    with pytest.raises(ValueError, match="shape"):
        psnr(smooth_image(8, 8), smooth_image(8, 9))
    with pytest.raises(ValueError, match="one image"):
        BenchScorer(["psnr"]).score(torch.zeros(2, 3, 8, 8))


def test_lpips_missing_weights(empty_hub: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="illrecnet.utils.metrics"):
        scorer = BenchScorer(["psnr", "lpips"])
        first = scorer.score(smooth_image(64, 64), smooth_image(64, 64, seed=1))
        scorer.score(smooth_image(64, 64), smooth_image(64, 64, seed=1))
    assert first["LPIPS"] is None and isinstance(first["PSNR"], float)
    (record,) = [r for r in caplog.records if "LPIPS" in r.message]
    assert metrics.ALEXNET_FILE in record.message and str(empty_hub / "checkpoints") in record.message
    assert metrics.LPIPS_LINEAR_FILE in record.message and str(empty_hub / "pyiqa") in record.message
    assert "\n" not in record.message
    with pytest.raises(MetricUnavailableError, match=metrics.ALEXNET_FILE):
        BenchScorer(["lpips"], strict=True)


def test_lpips_failed_download_is_quick_none(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(pyiqa.utils.download_util, "download_url_to_file", offline)
    monkeypatch.setenv(metrics.DOWNLOAD_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="illrecnet.utils.metrics"):
        scorer = BenchScorer(["lpips"])
    assert scorer.score(smooth_image(64, 64), smooth_image(64, 64))["LPIPS"] is None
    assert any("download failed" in r.message for r in caplog.records)


def test_lpips_uses_cached_weights_offline(tmp_hub: Path, no_network: None) -> None:
    """A stand-in AlexNet in the hub cache (random conv layers; its classifier, unused by LPIPS, as
    zero-stride zeros to keep the file small) plus torchmetrics' copy of the linear layers."""
    alexnet = torchvision.models.alexnet(weights=None).state_dict()
    stand_in = {k: v if k.startswith("features") else torch.zeros(1).expand_as(v) for k, v in alexnet.items()}
    (tmp_hub / "checkpoints").mkdir(parents=True)
    torch.save(stand_in, tmp_hub / "checkpoints" / metrics.ALEXNET_FILE)

    scorer = BenchScorer(["lpips"], strict=True)
    image, other = smooth_image(64, 72), smooth_image(64, 72, seed=1)
    assert scorer.score(image, image)["LPIPS"] == pytest.approx(0.0, abs=1e-6)
    assert scorer.score(image, other)["LPIPS"] > 0
    reference = torch.load(metrics._lpips_linear_weights(), map_location="cpu", weights_only=True)
    assert torch.equal(scorer._nets["LPIPS"].net.lin0.model[1].weight, reference["lin0.model.1.weight"])
    with pytest.raises(MetricUnavailableError, match="31px"):
        scorer.score(smooth_image(30, 40), smooth_image(30, 40))
    assert BenchScorer(["lpips"]).score(smooth_image(31, 31), smooth_image(31, 31, seed=3))["LPIPS"] > 0
