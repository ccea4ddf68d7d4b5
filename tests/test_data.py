"""Tests for data/utils.py and data/dataloader.py: discovery, decoding, pairing, validation, batches.

Tests named ``test_fault_NN_*`` cover row NN of ../shared/FAULTS.md.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from data import utils
from data.dataloader import (
    LowLightDataModule,
    PairedImageDataset,
    RandomRot90,
    SeededSampler,
    decode_in_memory,
    log_kept,
    train_transform,
)
from data.utils import (
    DataError,
    ImagePair,
    image_size,
    list_images,
    load_image,
    save_png_atomic,
    scan_split,
    validate_split,
)
from tests.conftest import ROOT, data_module, run_python

SAMPLE = ROOT / "sample"


# --------------------------------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------------------------------


def rand_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 noise image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_pairs(split: Path, sub: str = "X", names=("a.png", "b.png"), size=(24, 32), seed: int = 0) -> None:
    """Write pairs whose high is the pixelwise negative of low (``high = 255 - low``)."""
    for i, name in enumerate(names):
        low = rand_rgb(*size, seed=seed + i)
        save(split / sub / "low" / name, low)
        save(split / sub / "high" / name, 255 - low)


def as_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def raises_data_error(func, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# Pairing and split structure (FAULTS 1-8, 25, 26)
# --------------------------------------------------------------------------------------------------


def test_pairing_by_name_not_position(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    # high/ is written in the opposite order, with contents that identify each pair.
    save(split / "X" / "low" / "a.png", np.full((8, 8, 3), 10, np.uint8))
    save(split / "X" / "low" / "b.png", np.full((8, 8, 3), 20, np.uint8))
    save(split / "X" / "high" / "b.png", np.full((8, 8, 3), 200, np.uint8))
    save(split / "X" / "high" / "a.png", np.full((8, 8, 3), 100, np.uint8))
    pairs = validate_split(split, require_high=True)["X"]
    assert [p.name for p in pairs] == ["a.png", "b.png"]
    for pair, (low, high) in zip(pairs, [(10, 100), (20, 200)], strict=True):
        sample = PairedImageDataset([pair])[0]
        assert as_uint8(sample["low"]).max() == low and as_uint8(sample["high"]).max() == high


def test_fault_01_low_without_high(tmp_path: Path) -> None:
    split = tmp_path / "data" / "1_train"
    make_pairs(split, names=("b.png",))
    save(split / "X" / "low" / "a.png", rand_rgb(24, 32))
    msg = raises_data_error(validate_split, split, require_high=True, split_name="data/1_train")
    assert "data/1_train/X" in msg and "a.png" in msg
    assert "1 low image(s) without a high twin" in msg and "low/ has 2 images, high/ has 1" in msg


def test_fault_01_many_missing_listed_with_count(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    names = [f"{i:02d}.png" for i in range(15)]
    make_pairs(split, names=["keep.png"])
    for name in names:
        save(split / "X" / "low" / name, rand_rgb(4, 4))
    msg = raises_data_error(scan_split, split, require_high=True)
    assert "15 low image(s)" in msg and "(+5 more)" in msg
    assert "09.png" in msg and "10.png" not in msg  # first MAX_LISTED names only


def test_fault_02_extra_high_file(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, names=("a.png",))
    save(split / "X" / "high" / "extra.png", rand_rgb(24, 32))
    save(split / "X" / "low" / "lonely.png", rand_rgb(24, 32))
    msg = raises_data_error(validate_split, split, require_high=True)  # never a silent intersection
    assert "1 high image(s) without a low twin" in msg and "extra.png" in msg
    assert "1 low image(s) without a high twin" in msg and "lonely.png" in msg
    assert "low/ has 2 images, high/ has 2" in msg and str(split) in msg


def test_fault_03_same_stem_different_extension_pairs_on_stem(tmp_path: Path, caplog) -> None:
    split = tmp_path / "1_train"
    low = rand_rgb(16, 16)
    save(split / "X" / "low" / "a.jpg", low, quality=100)
    save(split / "X" / "high" / "a.png", low)
    with caplog.at_level(logging.INFO, logger="illrecnet.data.utils"):
        pairs = validate_split(split, require_high=True)["X"]
    assert [(p.low.name, p.high.name, p.name) for p in pairs] == [("a.jpg", "a.png", "a.jpg")]
    assert "matched on the stem with different extensions" in caplog.text


def test_fault_04_duplicate_stems_ambiguous(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, names=("a.png",))
    save(split / "X" / "low" / "a.jpg", rand_rgb(24, 32))
    msg = raises_data_error(scan_split, split, require_high=True)
    assert (
        "ambiguous pairing" in msg and "a.jpg" in msg and "a.png" in msg and str(split / "X" / "low") in msg
    )


def test_fault_05_junk_files_ignored(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split)
    for side in ("low", "high"):
        folder = split / "X" / side
        (folder / ".DS_Store").write_bytes(b"\0\1junk")
        (folder / "Thumbs.db").write_bytes(b"junk")
        (folder / "desktop.ini").write_text("[.ShellClassInfo]")
        (folder / "._a.png").write_bytes(b"AppleDouble")
        (folder / "notes.txt").write_text("hello")
        (folder / "nested").mkdir()
    (split / ".ipynb_checkpoints").mkdir()
    pairs = validate_split(split, require_high=True)
    assert list(pairs) == ["X"] and [p.name for p in pairs["X"]] == ["a.png", "b.png"]


def test_extensions_case_insensitive(tmp_path: Path) -> None:
    save(tmp_path / "A.PNG", rand_rgb(4, 4))
    save(tmp_path / "b.JpEg", rand_rgb(4, 4), format="JPEG")
    assert [p.name for p in list_images(tmp_path)] == ["A.PNG", "b.JpEg"]


def test_fault_06_empty_sub_dataset(tmp_path: Path) -> None:
    split = tmp_path / "data" / "1_train"
    make_pairs(split, sub="Good")
    (split / "X" / "low").mkdir(parents=True)
    (split / "X" / "high").mkdir(parents=True)
    msg = raises_data_error(validate_split, split, require_high=True, split_name="data/1_train")
    assert "no image pairs in data/1_train/X" in msg


def test_fault_06_split_without_sub_datasets(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    split.mkdir()
    assert "no sub-dataset folders" in raises_data_error(validate_split, split, require_high=True)
    make_pairs(tmp_path, sub="1_train")  # low/ and high/ directly under the split
    msg = raises_data_error(validate_split, split, require_high=True)
    assert "holds low/ or high/ directly" in msg


@pytest.mark.parametrize("missing", ["low", "high"])
def test_fault_07_missing_low_or_high_in_train(tmp_path: Path, missing: str) -> None:
    split = tmp_path / "1_train"
    make_pairs(split)
    for path in (split / "X" / missing).iterdir():
        path.unlink()
    (split / "X" / missing).rmdir()
    msg = raises_data_error(validate_split, split, require_high=True)
    assert f"missing folder {split / 'X' / missing}" in msg and "sub-dataset" in msg


def test_fault_07_infer_and_bench_accept_low_only(tmp_path: Path, caplog) -> None:
    for split in (tmp_path / "3_bench", tmp_path / "4_infer"):
        save(split / "X" / "low" / "a.png", rand_rgb(9, 7))
        make_pairs(split, sub="Y")
        with caplog.at_level(logging.INFO, logger="illrecnet.data.utils"):
            pairs = validate_split(split, require_high=False)
        assert [(p.name, p.high) for p in pairs["X"]] == [("a.png", None)]
        assert all(p.high is not None for p in pairs["Y"])
        assert "no high/ folder" in caplog.text
    # Where high/ exists it must still match: no silent intersection in bench/infer either.
    save(tmp_path / "4_infer" / "Y" / "high" / "extra.png", rand_rgb(9, 7))
    assert "extra.png" in raises_data_error(validate_split, tmp_path / "4_infer", require_high=False)


def test_fault_08_missing_valid_split_is_an_error_in_fit(tmp_path: Path) -> None:
    make_pairs(tmp_path / "1_train")
    dm = data_module(
        train_data_path=str(tmp_path / "1_train"), valid_data_path=str(tmp_path / "2_valid"), image_size=16
    )
    msg = raises_data_error(dm.setup, "fit")
    assert f"split folder not found: {tmp_path / '2_valid'}" in msg
    assert "split folder not found" in raises_data_error(dm.setup, "validate")


def test_fault_25_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    split = tmp_path / "4_infer"
    make_pairs(split, sub="ночь set", names=("ночь 01.png", "café 2.png"))
    pairs = validate_split(split, require_high=True)["ночь set"]
    assert sorted(p.name for p in pairs) == ["café 2.png", "ночь 01.png"]
    sample = PairedImageDataset(pairs)[1]
    assert sample["name"] == "ночь 01.png" and sample["dataset"] == "ночь set"
    assert sample["low_path"].endswith("ночь 01.png")


def test_unicode_nfd_names_pair_with_nfc(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    low = rand_rgb(8, 8)
    save(split / "X" / "low" / "cafe\u0301.png", low)  # decomposed (macOS style)
    save(split / "X" / "high" / "caf\u00e9.png", low)  # composed
    assert len(validate_split(split, require_high=True)["X"]) == 1


def test_fault_26_symlinked_sub_dataset_and_file(tmp_path: Path, caplog) -> None:
    outside = tmp_path / "elsewhere"
    make_pairs(outside, sub="Real")
    split = tmp_path / "1_train"
    make_pairs(split, sub="A", names=("a.png",))
    os.symlink(outside / "Real", split / "Linked")  # a sub-dataset living elsewhere: followed
    os.symlink(split / "A", split / "0_alias_of_A")  # a second name for A: listed once
    low, high = split / "A" / "low", split / "A" / "high"
    os.symlink(outside / "Real" / "low" / "a.png", low / "s.png")  # symlinked files: followed
    os.symlink(outside / "Real" / "high" / "a.png", high / "s.png")
    with caplog.at_level(logging.WARNING, logger="illrecnet.data.utils"):
        pairs = validate_split(split, require_high=True)
    assert list(pairs) == ["A", "Linked"]
    assert [p.name for p in pairs["A"]] == ["a.png", "s.png"]
    assert [p.name for p in pairs["Linked"]] == ["a.png", "b.png"]
    assert "listed once" in caplog.text


def test_broken_symlink_is_reported(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split)
    os.symlink(tmp_path / "gone.png", split / "X" / "low" / "c.png")
    os.symlink(tmp_path / "gone.png", split / "X" / "high" / "c.png")
    msg = raises_data_error(validate_split, split, require_high=True)
    assert "c.png" in msg and "broken symlink" in msg


# --------------------------------------------------------------------------------------------------
# Unreadable files (FAULTS 9-12, 21) and whole-split reporting
# --------------------------------------------------------------------------------------------------


def test_fault_09_zero_byte_image(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split)
    (split / "X" / "low" / "a.png").write_bytes(b"")
    msg = raises_data_error(validate_split, split, require_high=True)
    assert str(split / "X" / "low" / "a.png") in msg and "empty file (0 bytes)" in msg
    assert f"sub-dataset {split}/X" in msg


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fault_10_truncated_image(tmp_path: Path, fmt: str) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, names=("a.png",), size=(96, 128))
    path = split / "X" / "high" / ("a.png" if fmt == "PNG" else "a.jpg")
    if fmt == "JPEG":
        (split / "X" / "high" / "a.png").unlink()
        save(path, rand_rgb(96, 128), format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = raises_data_error(validate_split, split, require_high=True)
    assert str(path) in msg and "truncated or corrupt" in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never decoded as a grey-padded image


def test_fault_11_text_file_renamed_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    msg = raises_data_error(load_image, path)
    assert str(path) in msg and "not a recognised image" in msg


@pytest.mark.parametrize("split_name", ["1_train", "2_valid"])
def test_fault_12_pair_with_different_sizes(tmp_path: Path, split_name: str) -> None:
    root = tmp_path / "data"
    make_pairs(root / "1_train")
    make_pairs(root / "2_valid")
    bad = root / split_name / "X"
    save(bad / "low" / "odd.png", rand_rgb(400, 600))
    save(bad / "high" / "odd.png", rand_rgb(400, 601))
    dm = data_module(
        train_data_path=str(root / "1_train"), valid_data_path=str(root / "2_valid"), image_size=16
    )
    for stage in ("fit", "validate") if split_name == "2_valid" else ("fit",):
        msg = raises_data_error(dm.setup, stage)
        assert "size mismatch" in msg and f"{bad.parent}/X" in msg
        assert str(bad / "low" / "odd.png") in msg and "600x400" in msg
        assert str(bad / "high" / "odd.png") in msg and "601x400" in msg


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, sub="A", names=("a.png", "b.png", "c.png"))
    make_pairs(split, sub="B")
    (split / "A" / "low" / "a.png").write_bytes(b"")  # empty
    save(split / "A" / "high" / "b.png", rand_rgb(5, 5))  # size mismatch
    (split / "B" / "high" / "b.png").unlink()  # missing twin
    (split / "C" / "low").mkdir(parents=True)  # empty sub-dataset
    (split / "C" / "high").mkdir()
    msg = raises_data_error(validate_split, split, require_high=True)
    assert msg.startswith(f"{split}: 4 data problem(s)")
    assert "empty file" in msg and "size mismatch" in msg and "without a high twin" in msg
    assert f"no image pairs in {split}/C" in msg


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny (invalid) IDAT: a header-only bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_fault_21_oversized_image_rejected_before_decoding(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(50_000, 50_000))
    msg = raises_data_error(load_image, bomb)
    assert str(bomb) in msg and ("decompression bomb" in msg or "MP limit" in msg)
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(8000, 6000))  # 48 MP: over the default 40 MP limit
    assert "MAX_IMAGE_PIXELS" in raises_data_error(load_image, big)
    save(tmp_path / "ok.png", rand_rgb(20, 20))
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 399)  # the limit is configurable
    assert "over the 0.0 MP limit" in raises_data_error(load_image, tmp_path / "ok.png")


# --------------------------------------------------------------------------------------------------
# Decoding odd modes (FAULTS 14-20)
# --------------------------------------------------------------------------------------------------


def test_load_image_contract(tmp_path: Path) -> None:
    rgb = rand_rgb(5, 7)
    tensor = load_image(save(tmp_path / "a.png", rgb))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 5, 7)
    assert np.array_equal(as_uint8(tensor), rgb)


def test_fault_14_grayscale_l(tmp_path: Path) -> None:
    grey = rand_rgb(6, 9)[..., 0]
    tensor = load_image(save(tmp_path / "g.png", grey))
    assert tensor.shape == (3, 6, 9)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert np.array_equal(as_uint8(tensor)[..., 0], grey)
    split = tmp_path / "1_train"
    save(split / "X" / "low" / "a.png", grey)
    save(split / "X" / "high" / "a.png", rand_rgb(6, 9))
    assert len(validate_split(split, require_high=True)["X"]) == 1  # L vs RGB pair still valid


def test_fault_15_rgba_alpha_dropped_with_one_warning(tmp_path: Path, caplog) -> None:
    rgb = rand_rgb(6, 9)
    for name in ("a.png", "b.png"):
        alpha = np.random.default_rng(1).integers(0, 256, (6, 9, 1), dtype=np.uint8)
        save(tmp_path / "X" / "low" / name, np.concatenate([rgb, alpha], axis=2))
    with caplog.at_level(logging.WARNING, logger="illrecnet.data.utils"):
        tensors = [load_image(tmp_path / "X" / "low" / name) for name in ("a.png", "b.png")]
    assert all(t.shape == (3, 6, 9) and np.array_equal(as_uint8(t), rgb) for t in tensors)
    assert caplog.text.count("alpha is dropped") == 1


def test_fault_16_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.fromarray(rand_rgb(10, 12)).quantize(colors=16)
    original = np.asarray(palette_image.convert("RGB"))  # the RGB picture the palette encodes
    path = tmp_path / "p.png"
    palette_image.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    assert np.array_equal(as_uint8(load_image(path)), original)


def test_fault_16_palette_from_rgb_convert(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = (255, 0, 0)
    rgb[4:] = (0, 128, 255)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(
        tmp_path / "p.png", transparency=0
    )
    assert np.array_equal(as_uint8(load_image(tmp_path / "p.png")), rgb)


def test_fault_17_sixteen_bit_dark(tmp_path: Path) -> None:
    grey = np.random.default_rng(0).integers(0, 201, (6, 8)).astype(np.uint16)
    grey[0, 0] = 200
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    rgb = np.random.default_rng(1).integers(0, 201, (6, 8, 3)).astype(np.uint16)
    rgb[0, 0, 0] = 200
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    for name, expected in (("g16.png", np.repeat(grey[..., None], 3, 2)), ("rgb16.png", rgb)):
        tensor = load_image(tmp_path / name)
        assert tensor.max().item() == pytest.approx(200 / 65535)  # not 200/255, not clipped
        assert np.allclose(tensor.permute(1, 2, 0).numpy() * 65535, expected, atol=1e-2)


def test_fault_18_sixteen_bit_full_range(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 65536, (7, 5, 3)).astype(np.uint16)
    rgb[0, 0] = (0, 65535, 300)
    for name in ("full.png", "full.tif"):
        cv2.imwrite(str(tmp_path / name), rgb[..., ::-1])
        tensor = load_image(tmp_path / name)
        assert tensor.min().item() == 0.0 and tensor.max().item() == 1.0
        assert np.allclose(tensor.permute(1, 2, 0).numpy() * 65535, rgb, atol=1e-2)  # every level kept


def _png16(path: Path, samples: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written chunk by chunk (OpenCV and Pillow cannot write 16-bit grey + alpha)."""
    height, width = samples.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples.reshape(height, -1))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def test_sixteen_bit_pngs_with_alpha_keep_every_level(tmp_path: Path, caplog) -> None:
    """16-bit RGBA and grey + alpha: RGB (or the grey) as stored, alpha dropped with the warning."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 65536, (5, 7, 4)).astype(np.uint16)
    grey_alpha = rng.integers(0, 65536, (6, 4, 2)).astype(np.uint16)
    utils._warned_alpha.clear()
    with caplog.at_level(logging.WARNING, logger="illrecnet.data.utils"):
        for name, samples, colour_type, expected in (
            ("rgba16.png", rgba, 6, rgba[..., :3]),
            ("la16.png", grey_alpha, 4, np.repeat(grey_alpha[..., :1], 3, axis=2)),
        ):
            array = utils.decode_image_array(_png16(tmp_path / name, samples, colour_type))
            assert array.dtype == np.uint16 and np.array_equal(array, expected), name
    assert caplog.text.count("alpha is dropped") == 1  # one warning for the folder


def test_truncated_sixteen_bit_png_is_an_error_naming_the_file(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 65536, (40, 30, 3)).astype(np.uint16)
    data = _png16(tmp_path / "whole.png", rgb, colour_type=2).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    msg = raises_data_error(load_image, tmp_path / "cut.png")
    assert "cut.png" in msg and ("truncated" in msg or "corrupt" in msg)


def test_floating_point_tiffs_are_refused_by_name_not_misread(tmp_path: Path) -> None:
    """A float TIFF has no fixed white level: a grey one was read as if 1.0 were 255 (all near black)."""
    values = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    Image.fromarray(values[..., 0], mode="F").save(tmp_path / "grey.tif")
    cv2.imwrite(str(tmp_path / "rgb.tif"), values)
    with pytest.raises(
        DataError, match=r"grey\.tif: float32 TIFF samples are not supported; save it as 8/16-bit"
    ):
        load_image(tmp_path / "grey.tif")
    with pytest.raises(DataError, match=r"rgb\.tif: not a recognised .*floating-point colour samples"):
        load_image(tmp_path / "rgb.tif")


def test_fault_19_exif_orientation_applied(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:40, 0:60]
    upright = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=2).astype(np.uint8)  # (40, 60, 3) smooth
    split = tmp_path / "1_train"
    save(split / "X" / "high" / "a.png", upright)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": store the picture rotated 90 CCW
    save(split / "X" / "low" / "a.jpg", np.rot90(upright, k=1).copy(), format="JPEG", quality=95, exif=exif)
    assert image_size(split / "X" / "low" / "a.jpg") == (60, 40)
    pair = validate_split(split, require_high=True)["X"][0]  # shapes match once orientation is applied
    low, high = load_image(pair.low), load_image(pair.high)
    assert low.shape == high.shape == (3, 40, 60)
    assert (low - high).abs().mean() < 0.02


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    rgb = rand_rgb(5, 8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "o.png", rgb, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.array_equal(utils._apply_orientation(rgb, orientation), expected)  # used for deep TIFFs
    assert np.array_equal(as_uint8(load_image(path)), expected)
    width, height = image_size(path)
    assert (height, width) == expected.shape[:2]


def test_sixteen_bit_png_exif_orientation(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 65536, (5, 8, 3)).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    exif = Image.Exif()
    exif[0x0112] = 6
    body = exif.tobytes()[6:]  # the eXIf chunk holds the TIFF structure without the "Exif\0\0" prefix
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    data = encoded.tobytes()
    path = tmp_path / "o16.png"
    path.write_bytes(data[:33] + chunk + data[33:])  # after the 8-byte signature and 25-byte IHDR
    tensor = load_image(path)
    assert tensor.shape == (3, 8, 5)
    assert np.allclose(tensor.permute(1, 2, 0).numpy() * 65535, np.rot90(rgb, k=-1), atol=1e-2)


@pytest.mark.parametrize("mode", ["CMYK", "1", "LA", "I;16"])
def test_fault_20_cmyk_one_bit_and_other_modes(tmp_path: Path, mode: str) -> None:
    rgb = rand_rgb(6, 10)
    image = Image.fromarray(rgb).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    image.save(path)
    assert Image.open(path).mode == mode
    tensor = load_image(path)
    assert tensor.shape == (3, 6, 10)
    got = tensor.permute(1, 2, 0).numpy()
    if mode == "I;16":  # 16-bit grey: divided by 65535, the same levels as the 8-bit grey it came from
        grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255
        assert np.allclose(got, np.repeat(grey[..., None], 3, axis=2), atol=1e-4)
    else:  # what Pillow's own RGB conversion gives (CMYK not inverted, 1-bit at 0 and 1, LA's grey)
        with Image.open(path) as reference:
            assert np.allclose(got, np.asarray(reference.convert("RGB")) / 255, atol=1e-6)
    if mode == "1":
        assert set(torch.unique(tensor).tolist()) == {0.0, 1.0}


def test_image_size_is_cheap_and_raises_data_error(tmp_path: Path, monkeypatch) -> None:
    from PIL import JpegImagePlugin, PngImagePlugin

    plain = save(tmp_path / "a.png", rand_rgb(3, 5))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_png = save(tmp_path / "r.png", rand_rgb(3, 5), exif=exif)
    rotated_jpg = save(tmp_path / "r.jpg", rand_rgb(3, 5), exif=exif)

    def no_decoding(self):
        raise AssertionError(f"{self.filename} was decoded to read its size")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", no_decoding)
    assert image_size(plain) == (5, 3)
    assert image_size(rotated_png) == image_size(rotated_jpg) == (3, 5)
    (tmp_path / "bad.png").write_text("nope")
    assert "bad.png" in raises_data_error(image_size, tmp_path / "bad.png")


def test_save_png_atomic_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.png"
    save_png_atomic(target, rand_rgb(4, 6))
    before = target.read_bytes()

    def failing_save(self, fp, *args, **kwargs) -> None:
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_png_atomic(target, rand_rgb(4, 6, seed=1))
    assert target.read_bytes() == before  # the old complete file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left behind


# --------------------------------------------------------------------------------------------------
# Datasets and augmentation (FAULTS 13, 22, 24)
# --------------------------------------------------------------------------------------------------


def test_augmentation_keeps_pairs_aligned(tmp_path: Path) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, names=("a.png",), size=(40, 56))
    dataset = PairedImageDataset(scan_split(split, require_high=True)["X"], crop_size=24, augment=True)
    full = load_image(split / "X" / "low" / "a.png")
    torch.manual_seed(0)
    crops = set()
    for _ in range(24):
        sample = dataset[0]
        low, high = sample["low"], sample["high"]
        assert low.shape == high.shape == (3, 24, 24) and type(low) is torch.Tensor
        assert torch.allclose(high, 1.0 - low, atol=1e-6)  # high = 255 - low holds pixel for pixel
        crops.add(low.numpy().tobytes())
    assert len(crops) > 12  # crops, flips and rotations really vary
    assert full.shape == (3, 40, 56)


def test_random_rot90_is_exact_and_shared() -> None:
    from torchvision import tv_tensors

    a = tv_tensors.Image(torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4))
    torch.manual_seed(3)
    for _ in range(8):
        x, y = RandomRot90()(a, tv_tensors.Image(a + 1))
        assert torch.equal(y, x + 1)
        assert any(torch.equal(x, torch.rot90(a, k, dims=(-2, -1))) for k in range(4))


def test_fault_13_small_train_image_is_edge_padded(tmp_path: Path, caplog) -> None:
    split = tmp_path / "1_train"
    make_pairs(split, names=("small.png",), size=(32, 32))
    make_pairs(split, names=("big.png",), size=(80, 80))
    with caplog.at_level(logging.INFO, logger="illrecnet.data.utils"):
        pairs = validate_split(split, require_high=True, min_size=64)["X"]
    assert "1 of 2 pairs are smaller than the 64 px crop and will be edge-padded" in caplog.text
    small = next(p for p in pairs if p.name == "small.png")
    original = load_image(small.low)
    torch.manual_seed(0)
    sample = PairedImageDataset([small], crop_size=64, augment=False)[0]
    assert sample["low"].shape == sample["high"].shape == (3, 64, 64)
    assert torch.allclose(sample["high"], 1.0 - sample["low"], atol=1e-6)
    # The whole image sits inside the crop; the border replicates its edge pixels (no black, no mirror).
    low = sample["low"]
    padded = torch.nn.functional.pad(original[None], (32, 32, 32, 32), mode="replicate")[0]
    windows = padded.unfold(1, 64, 1).unfold(2, 64, 1)  # (3, 33, 33, 64, 64)
    assert any(torch.equal(windows[:, i, j], low) for i in range(33) for j in range(33))


@pytest.mark.parametrize("size", [(1, 1), (3, 5)])
def test_fault_22_tiny_images(tmp_path: Path, size: tuple[int, int]) -> None:
    split = tmp_path / "3_bench"
    make_pairs(split, names=("t.png",), size=size)
    pairs = validate_split(split, require_high=False)["X"]
    whole = PairedImageDataset(pairs)[0]  # bench/infer: exact size, no padding
    assert whole["low"].shape == whole["high"].shape == (3, *size)
    cropped = PairedImageDataset(pairs, crop_size=8, augment=True)[0]  # train: replicate pad, no crash
    assert cropped["low"].shape == (3, 8, 8) and torch.allclose(
        cropped["high"], 1 - cropped["low"], atol=1e-6
    )


def _datamodule_tree(root: Path) -> LowLightDataModule:
    make_pairs(root / "1_train", sub="A", names=("a.png", "b.png", "c.png"), size=(20, 24))
    make_pairs(root / "1_train", sub="B", names=("d.png",), size=(30, 18))
    make_pairs(root / "2_valid", sub="A", names=("v1.png",), size=(20, 24))
    make_pairs(root / "2_valid", sub="B", names=("v2.png",), size=(17, 29))  # a different size
    return data_module(
        train_data_path=str(root / "1_train"),
        valid_data_path=str(root / "2_valid"),
        image_size=16,
        batch_size=3,
        train_repeat=2,
    )


def test_fault_24_variable_sizes_in_valid_use_batch_size_one(tmp_path: Path) -> None:
    dm = _datamodule_tree(tmp_path)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert dm.val_dataloader().batch_size == 1
    assert [b["low"].shape for b in batches] == [(1, 3, 20, 24), (1, 3, 17, 29)]
    assert [(b["dataset"], b["name"]) for b in batches] == [(["A"], ["v1.png"]), (["B"], ["v2.png"])]


def test_datamodule_stages(tmp_path: Path) -> None:
    dm = _datamodule_tree(tmp_path)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.train_pairs.items()} == {"A": 3, "B": 1}
    assert list(dm.valid_pairs) == ["A", "B"]
    train = dm.train_dataloader()
    assert len(train.dataset) == 8 and train.drop_last is False  # train_repeat=2
    assert train.pin_memory is torch.cuda.is_available()
    batch = next(iter(train))
    assert batch["low"].shape == batch["high"].shape == (3, 3, 16, 16) and batch["low"].dtype == torch.float32
    assert set(batch) == {"low", "high", "name", "dataset", "low_path"} and len(batch["name"]) == 3
    for stage in ("test", "predict"):  # bench.py and infer.py read their splits themselves
        with pytest.raises(ValueError, match="unknown stage"):
            dm.setup(stage)


def test_datamodule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        data_module(batch_size=0)
    with pytest.raises(ValueError, match="train_repeat"):
        data_module(train_repeat=0)
    with pytest.raises(ValueError, match="cache_gb"):
        data_module(cache_gb=-1)


# --------------------------------------------------------------------------------------------------
# Decoded training images kept in memory (cache_gb)
# --------------------------------------------------------------------------------------------------


def _mixed_train_split(root: Path) -> list[ImagePair]:
    """8-bit pairs (one smaller than the 24 px crop, so it is edge-padded) and one 16-bit pair."""
    make_pairs(root, names=("a.png", "b.png"), size=(40, 56))
    make_pairs(root, names=("small.png",), size=(16, 30), seed=5)
    deep = np.random.default_rng(9).integers(0, 65536, (33, 41, 3)).astype(np.uint16)
    for side, array in (("low", deep), ("high", 65535 - deep)):
        (root / "X" / side).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "X" / side / "deep.png"), array[..., ::-1])
    return scan_split(root, require_high=True)["X"]


def test_samples_from_memory_equal_samples_from_disk_and_the_float_first_path(tmp_path: Path) -> None:
    """Cropping and flipping 8-bit images before converting them gives exactly what converting the
    whole image first gave, and images kept in memory give exactly what decoding from disk gives."""
    pairs = _mixed_train_split(tmp_path / "1_train")
    files = [p for pair in pairs for p in (pair.low, pair.high)]
    decoded = decode_in_memory(files, limit_gb=1.0)
    assert set(decoded) == set(files)
    from_disk = PairedImageDataset(pairs, crop_size=24, augment=True)
    in_memory = PairedImageDataset(pairs, crop_size=24, augment=True, decoded=decoded)
    transform = train_transform(24, augment=True)
    from torchvision import tv_tensors

    for index, pair in enumerate(pairs):
        for seed in range(6):
            a, b = from_disk[(index, seed)], in_memory[(index, seed)]
            torch.manual_seed(seed)  # the float-first path, as the dataset did before
            low, high = transform(
                tv_tensors.Image(load_image(pair.low)), tv_tensors.Image(load_image(pair.high))
            )
            for key, reference in (("low", low), ("high", high)):
                assert a[key].dtype == torch.float32 and a[key].is_contiguous(), (pair.name, key)
                assert torch.equal(a[key], b[key]), (pair.name, seed, key)
                assert torch.equal(a[key], reference.as_subclass(torch.Tensor)), (pair.name, seed, key)


def test_decode_in_memory_decodes_each_file_once_within_its_limit(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    make_pairs(tmp_path, names=("a.png", "b.png"), size=(40, 56))
    files = [p for pair in scan_split(tmp_path, require_high=True)["X"] for p in (pair.low, pair.high)]
    calls = []
    real = utils.decode_image_array
    monkeypatch.setattr("data.dataloader.decode_image_array", lambda path: calls.append(path) or real(path))
    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        decoded = decode_in_memory(files * 3, limit_gb=1.0)  # train_repeat lists every file again
    assert sorted(calls) == sorted(files)
    assert all(np.array_equal(decoded[f], real(f)) for f in files)
    assert "kept 4 decoded training images in memory" in caplog.text

    caplog.clear()
    calls.clear()
    nbytes = 4 * 40 * 56 * 3
    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        assert decode_in_memory(files, limit_gb=(nbytes - 1) / 1e9) == {}
    assert calls == []  # refused from the image headers, before decoding anything
    assert "over cache_gb" in caplog.text and "raise --cache_gb" in caplog.text
    assert decode_in_memory(files, limit_gb=0) == {}


def _count_decodes(monkeypatch) -> list[Path]:
    """Record every file decoded from now on, by the split validation and by the dataset (the
    real decoder stays reachable as ``utils.decode_image_array.__wrapped__``)."""
    calls = []
    real = utils.decode_image_array

    @functools.wraps(real)
    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr("data.utils.decode_image_array", counting)  # split validation
    monkeypatch.setattr("data.dataloader.decode_image_array", counting)  # the dataset
    return calls


def test_datamodule_decodes_the_training_split_once_for_every_fit(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    """The split validation of setup("fit") decodes every file anyway; those arrays are what the
    training loader serves, so a training file is decoded once, not once to validate it and again
    to keep it, and not again by a later fit."""
    dm = _datamodule_tree(tmp_path)
    calls = _count_decodes(monkeypatch)
    real = utils.decode_image_array.__wrapped__
    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        dm.setup("fit")
    train_files = {p for group in dm.train_pairs.values() for pair in group for p in (pair.low, pair.high)}
    assert "kept 8 decoded training images in memory" in caplog.text
    assert set(dm.decoded) == train_files
    assert all(np.array_equal(dm.decoded[f], real(f)) and dm.decoded[f].flags.writeable for f in train_files)
    calls.clear()
    first = torch.cat([batch["low"] for batch in dm.train_dataloader()])
    second = torch.cat([batch["low"] for batch in dm.train_dataloader()])  # the next session's fit
    assert calls == [] and torch.equal(first, second)

    uncached = _datamodule_tree(tmp_path)
    uncached.hp.cache_gb = 0
    uncached.setup("fit")
    assert torch.equal(torch.cat([batch["low"] for batch in uncached.train_dataloader()]), first)
    assert uncached.decoded == {}

    # Kept from disk by the first train_dataloader when no setup("fit") filled the cache.
    manual = _datamodule_tree(tmp_path)
    manual.train_pairs = dm.train_pairs
    assert torch.equal(torch.cat([batch["low"] for batch in manual.train_dataloader()]), first)
    assert set(manual.decoded) == train_files


def test_evaluation_splits_are_decoded_once_within_what_the_training_images_leave(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    """The valid split that setup("fit") decodes to validate it is what every epoch's validation
    serves, within what the kept training images leave of cache_gb; past that, the loader decodes
    from disk and serves the same tensors."""
    dm = _datamodule_tree(tmp_path)
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        dm.setup("fit")
    files = lambda pairs: {p for g in pairs.values() for pair in g for p in (pair.low, pair.high) if p}  # noqa: E731
    assert set(dm.eval_decoded) == files(dm.valid_pairs)
    assert "kept 4 decoded validation images in memory" in caplog.text
    calls.clear()
    served = [batch["high"] for _ in range(2) for batch in dm.val_dataloader()]  # two epochs
    assert calls == []

    # The training images take all but 100 bytes of the cache: the valid split is not kept.
    tight = _datamodule_tree(tmp_path)
    train_bytes = sum(a.nbytes for a in dm.decoded.values())
    tight.hp.cache_gb = (train_bytes + 100) / 1e9
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        tight.setup("fit")
    assert set(tight.decoded) == set(dm.decoded) and tight.eval_decoded == {}
    assert "validation images not kept in memory" in caplog.text and "again by the loader" in caplog.text
    calls.clear()
    refetched = [batch["high"] for batch in tight.val_dataloader()]
    assert set(calls) == files(tight.valid_pairs)  # not kept: decoded from disk
    assert all(torch.equal(a, b) for a, b in zip(refetched, served[:2], strict=True))


def test_split_validation_keeps_decoded_images_only_within_the_limit(tmp_path: Path, caplog) -> None:
    make_pairs(tmp_path, names=("a.png", "b.png"), size=(40, 56))
    files = [p for pair in scan_split(tmp_path, require_high=True)["X"] for p in (pair.low, pair.high)]
    nbytes = 40 * 56 * 3

    keep = utils.DecodedImages(limit_gb=4 * nbytes / 1e9)  # exactly room for the four files
    validate_split(tmp_path, require_high=True, keep=keep)
    assert set(keep) == set(files) and not keep.overflowed and keep.nbytes == 4 * nbytes

    short = utils.DecodedImages(limit_gb=(4 * nbytes - 1) / 1e9)  # one byte short: none are kept
    assert len(validate_split(tmp_path, require_high=True, keep=short)["X"]) == 2  # still validated
    assert short == {} and short.overflowed and short.nbytes == 4 * nbytes
    tiny = utils.DecodedImages(limit_gb=nbytes / 1e9)  # full after the first: the rest not held
    validate_split(tmp_path, require_high=True, keep=tiny)
    assert tiny == {} and tiny.nbytes == 4 * nbytes  # but counted, so the log gives the real size

    with caplog.at_level(logging.INFO, logger="illrecnet.data.dataloader"):
        log_kept(short)
    assert "not kept in memory" in caplog.text and "over cache_gb" in caplog.text
    assert "raise --cache_gb" in caplog.text

    # Bad files are still all reported, whether or not images are being kept.
    (tmp_path / "X" / "low" / "b.png").write_bytes(b"not a png")
    msg = raises_data_error(validate_split, tmp_path, require_high=True, keep=utils.DecodedImages(1.0))
    assert "b.png" in msg and "not a recognised image" in msg


def test_decoding_a_read_only_array_does_not_warn(tmp_path: Path) -> None:
    """Pillow hands out read-only arrays; torch.from_numpy warns about those (once per process,
    so this runs in a fresh interpreter with warnings as errors)."""
    path = save(tmp_path / "a.png", rand_rgb(5, 7))
    code = (
        "import numpy as np, torch; from data.utils import load_image, to_unit_float; "
        f"t = load_image({str(path)!r}); "
        "a = np.zeros((2, 3, 3), np.uint8); a.flags.writeable = False; "
        "assert torch.equal(to_unit_float(a), torch.zeros(3, 2, 3)) and t.shape == (3, 5, 7)"
    )
    done = run_python("-W", "error", "-c", code, timeout=120, fresh=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_batches_depend_on_seed_and_epoch_not_on_workers(tmp_path: Path) -> None:
    """Crops, flips and order come from (seed, epoch, sample) only: persistent workers carried on
    with their own random state, so a run resumed at an epoch boundary (fresh workers) used to see
    other crops than the uninterrupted run; now both see the same, as does num_workers=0."""
    dm = _datamodule_tree(tmp_path)
    dm.setup("fit")

    def epochs(seed: int, workers: int, first: int, count: int) -> list[torch.Tensor]:
        dm.seed, dm.hp.num_workers = seed, workers
        loader = dm.train_dataloader()
        assert loader.persistent_workers is (workers > 0)
        out = []
        for epoch in range(first, first + count):
            loader.sampler.set_epoch(epoch)
            out.append(torch.cat([batch["low"] for batch in loader]))
        return out

    torch.manual_seed(0)
    uninterrupted = epochs(7, workers=2, first=0, count=2)  # the same two workers serve both epochs
    torch.manual_seed(1)  # the global random state does not matter
    assert torch.equal(epochs(7, workers=2, first=1, count=1)[0], uninterrupted[1])  # "resumed"
    assert torch.equal(epochs(7, workers=0, first=0, count=1)[0], uninterrupted[0])
    assert not torch.equal(uninterrupted[0], uninterrupted[1])
    assert not torch.equal(epochs(8, workers=0, first=0, count=1)[0], uninterrupted[0])


def test_datamodule_runs_under_a_trainer(tmp_path: Path) -> None:
    class Identity(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.seen: list[str] = []

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.l1_loss(self.conv(batch["low"]), batch["high"])

        def validation_step(self, batch, batch_idx):
            self.seen.append(batch["name"][0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _datamodule_tree(tmp_path)
    model = Identity()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 and model.seen == ["v1.png", "v2.png"]


def test_sample_dataset_is_valid_and_small() -> None:
    assert (SAMPLE / "README.md").is_file()
    counts = {}
    for split, require_high in (("1_train", True), ("2_valid", True), ("3_bench", False), ("4_infer", False)):
        pairs = scan_split(SAMPLE / split, require_high=require_high)
        counts[split] = sum(len(v) for v in pairs.values())
    assert 8 <= counts["1_train"] <= 12 and all(
        2 <= counts[s] <= 3 for s in ("2_valid", "3_bench", "4_infer")
    )
    validate_split(SAMPLE / "2_valid", require_high=True)
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total <= 5 * 1024 * 1024


def test_image_pair_is_a_plain_dataclass() -> None:
    pair = ImagePair(Path("l.png"), None, "X", "l.png")
    assert pickle.loads(pickle.dumps(pair)) == pair  # loader workers receive pairs pickled


def test_seeded_sampler_skip_leaves_out_the_start_of_one_epoch_only() -> None:
    """What a run resumed inside an epoch relies on: the rest of that epoch's order, same seeds, and
    the next epoch whole; under DDP each rank skips within its own shard."""
    dataset = list(range(10))
    full = {epoch: [] for epoch in (3, 4)}
    for epoch in full:
        sampler = SeededSampler(dataset, seed=7)
        sampler.set_epoch(epoch)
        full[epoch] = list(sampler)
    sampler = SeededSampler(dataset, seed=7)
    sampler.skip(3, 4)
    sampler.set_epoch(3)
    assert list(sampler) == full[3][4:] and len(sampler) == 10
    sampler.set_epoch(4)
    assert list(sampler) == full[4]
    ranks = [SeededSampler(dataset, seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    for rank in ranks:
        rank.set_epoch(3)
    whole = [list(rank) for rank in ranks]
    for rank, shard in zip(ranks, whole, strict=True):
        rank.skip(3, 2)
        assert list(rank) == shard[2:]
    with pytest.raises(ValueError, match="samples"):
        sampler.skip(0, -1)
