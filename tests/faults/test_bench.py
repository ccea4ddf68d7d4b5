"""The bench loop and bench.py: every size and name, identical pairs, out-of-range outputs, partial
metrics, fewer outputs than pairs, and train.py's closing bench (FAULTS 22-23, 25, 27-28, 43)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench
from data import utils as data_utils
from data.utils import DataError
from engine import bench as engine_bench
from engine.bench import BenchError, run_bench
from engine.enhance import Enhance
from engine.infer import run_infer
from model.model import LowLightEnhancerLightning
from tests.conftest import tiny_model
from tests.faults.helpers import (
    Stub,
    bench_settings,
    fake_checkpoint,
    infer_main,
    local_conv,
    session_dir,
    train_hparams,
    write_images,
    write_split,
)
from utils.hparams import TileHparams
from utils.metrics import PSNR_IDENTICAL_DB
from utils.utils import run_main


def test_fault_22_23_25_infer_and_bench_keep_every_size_and_name(tmp_path) -> None:
    sizes = {"one.png": (1, 1), "three by five.png": (3, 5), "ночь 01.png": (399, 601)}
    folder = write_images(tmp_path / "photos", sizes)
    module = LowLightEnhancerLightning(tiny_model())
    enhance = Enhance(module, torch.device("cpu"))
    summary = run_infer(
        enhance,
        [("photos", p) for p in sorted(folder.iterdir())],
        tmp_path / "out",
        TileHparams(),
        overwrite=False,
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
    )
    assert not summary.failed and len(summary.enhanced) == 3
    for name, (height, width) in sizes.items():
        with Image.open(tmp_path / "out" / "photos" / name) as image:
            assert image.size == (width, height) and image.mode == "RGB"
    split = write_split(tmp_path / "3_bench", {**sizes, "ночь 01.png": (39, 61)})  # smaller: faster
    result = run_bench(enhance, bench_settings(tmp_path, split), tmp_path / "bench")
    assert result.summary["datasets"]["Tiny"]["images"] == 3
    assert all(np.isfinite(r["PSNR"]) for r in result.rows)
    assert {r["image"] for r in result.rows} == set(sizes)


def bench_stub(tmp_path: Path, model: torch.nn.Module, split: Path, **overrides):
    """``model`` benched on ``split`` with comparison strips (:func:`bench_settings`' ``overrides``)."""
    settings = bench_settings(tmp_path, split, save_images=True, **overrides)
    return run_bench(Enhance(model, torch.device("cpu")), settings, tmp_path / "bench")


def test_bench_decodes_each_file_once_and_scores_the_same_from_disk(tmp_path, monkeypatch) -> None:
    """The arrays the start-up check decodes are the ones enhanced and scored (within cache_gb);
    with --cache_gb 0 every file is decoded again, to the same scores."""
    split = write_split(tmp_path / "3_bench", {"a.png": (20, 28), "b.png": (16, 12)})
    calls = []
    real = data_utils.decode_image_array
    monkeypatch.setattr(data_utils, "decode_image_array", lambda path: calls.append(Path(path)) or real(path))
    rows = {}
    for cache_gb in (4.0, 0.0):
        calls.clear()
        settings = bench_settings(tmp_path, split, cache_gb=cache_gb)
        result = run_bench(
            Enhance(Stub(local_conv), torch.device("cpu")), settings, tmp_path / f"bench{cache_gb}"
        )
        rows[cache_gb] = result.rows
        files = sorted(split.glob("Tiny/*/*.png"))
        assert sorted(calls) == sorted(files * (1 if cache_gb else 2)), cache_gb
    assert rows[4.0] == rows[0.0] and len(rows[0.0]) == 2
    with pytest.raises(ValueError, match="cache_gb must be >= 0"):
        bench.BenchHparams(checkpoint_path="m.ckpt", cache_gb=-1)


def test_fault_27_identical_pair_has_a_finite_mean_in_bench(tmp_path) -> None:
    split = tmp_path / "3_bench"
    write_split(split, {"same.png": (24, 24), "other.png": (24, 24)})
    shutil.copy(split / "Tiny/high/same.png", split / "Tiny/low/same.png")  # low == high
    result = bench_stub(tmp_path, Stub(), split)  # identity network: output == low
    same = next(r for r in result.rows if r["image"] == "same.png")
    assert same["PSNR"] == pytest.approx(PSNR_IDENTICAL_DB) and same["SSIM"] == pytest.approx(1.0)
    means = result.summary["datasets"]["Tiny"]["means"]
    assert np.isfinite(means["PSNR"]) and np.isfinite(means["SSIM"])
    assert "inf" not in result.tables and "nan" not in result.tables.lower()


def test_bench_table_says_when_a_metric_covers_fewer_images(tmp_path) -> None:
    split = write_split(tmp_path / "3_bench", {"tiny.png": (8, 8), "big.png": (24, 24)})
    result = bench_stub(tmp_path, Stub(), split)  # SSIM's 11x11 window does not fit 8x8: None there
    assert result.summary["datasets"]["Tiny"]["scored"] == {
        "PSNR": 2,
        "SSIM": 1,
        "PSNR_GTmean": 2,
        "SSIM_GTmean": 1,
    }
    row = result.tables.splitlines()[-1]  # | images | PSNR | SSIM | PSNR_GTmean | SSIM_GTmean |
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "2" and "images" not in cells[1] and cells[2].endswith("(1/2 images)")


def test_fault_28_out_of_range_output_is_clamped_for_metrics_and_files(tmp_path, monkeypatch) -> None:
    def out_of_range(x: torch.Tensor) -> torch.Tensor:
        y = torch.full_like(x, -0.2)
        y[..., x.shape[-1] // 2 :] = 1.3
        return y

    split = write_split(tmp_path / "3_bench", {"a.png": (24, 32)})
    result = bench_stub(tmp_path, Stub(out_of_range), split, metrics=["PSNR", "SSIM", "BRISQUE"])
    row = result.rows[0]  # no pyiqa range assertion; BRISQUE of a two-tone image is n/a, not an error
    assert all(np.isfinite(row[c]) for c in ("PSNR", "SSIM", "PSNR_GTmean", "SSIM_GTmean"))
    folder = write_images(tmp_path / "photos", {"a.png": (24, 32)})
    assert infer_main(monkeypatch, tmp_path, Stub(out_of_range), folder) == 0
    with Image.open(tmp_path / "out/x/inference/photos/a.png") as image:
        image.load()
        saved = np.asarray(image)
    assert saved.shape == (24, 32, 3) and (saved[:, :16] == 0).all() and (saved[:, 16:] == 255).all()


def test_fault_43_bench_with_fewer_outputs_than_pairs_is_an_error(tmp_path, monkeypatch) -> None:
    split = write_split(tmp_path / "3_bench", {"a.png": (16, 16), "b.png": (16, 16), "c.png": (16, 16)})
    real = engine_bench.load_image

    def lose_one(path):
        if Path(path).name == "b.png" and Path(path).parent.name == "low":
            raise DataError(f"{path}: truncated or corrupt image (changed since validation)")
        return real(path)

    monkeypatch.setattr(engine_bench, "load_image", lose_one)
    with pytest.raises(BenchError) as info:  # --cache_gb 0: the files are read again after the check
        bench_stub(tmp_path, Stub(), split, cache_gb=0)
    message = str(info.value)
    assert "'Tiny': (2, 3)" in message and "b.png" in message
    assert (
        not (tmp_path / "bench" / "bench.json").exists() and not (tmp_path / "bench" / "bench.csv").exists()
    )
    monkeypatch.setattr("model.model.load_checkpoint", lambda path, map_location="cpu": Stub())
    hp = bench.BenchHparams(
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
        bench_data_path=str(split),
        metrics=["PSNR"],
        accelerator="cpu",
        log_dir=str(tmp_path / "b"),
        cache_gb=0,
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main(bench.main, hp)
    assert exit_info.value.code == 2


def test_closing_bench_and_inference_run_in_fp32_whatever_the_training_precision(
    data, finished_run, tmp_path, monkeypatch
) -> None:
    """train.py's closing table must be the one bench.py (fp32 by default) prints for the checkpoint."""
    from engine import engine as engine_module
    from engine.runner import evaluate_run

    precisions = []

    class Recording(Enhance):
        def __init__(self, model, device, self_ensemble=False, precision="32-true") -> None:
            precisions.append(precision)
            super().__init__(model, device, self_ensemble, precision)

    monkeypatch.setattr(engine_module, "Enhance", Recording)
    best = json.loads((session_dir(finished_run) / "result.json").read_text())["best_checkpoint"]
    split = str(data["valid"])  # a split with ground truth serves as bench and infer split
    hp = train_hparams(data, tmp_path, precision="bf16-mixed", bench_data_path=split, infer_data_path=split)
    text = evaluate_run(hp, tmp_path / "run", best)
    assert "| images | PSNR |" in text and precisions == ["32-true", "32-true"]
