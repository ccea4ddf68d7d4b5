"""Tests for data/synthesize.py (library and CLI) and data/make_sample.py."""

from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data import make_sample
from data.synthesize import (
    REGIMES,
    SynthesisParams,
    image_rng,
    inverse_smoothstep,
    jpeg_round_trip,
    linear_to_srgb,
    main,
    smoothstep,
    srgb_to_linear,
    synthesize_folder,
    synthesize_low,
)
from data.utils import decode_image_array, validate_split
from tests.conftest import ROOT, run_python


def photo(height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W, 3) float image in [0, 1] with smooth structure and mid-to-bright values."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    return np.clip(np.stack([0.3 + 0.6 * xx, 0.4 + 0.5 * yy, 0.8 - 0.4 * xx * yy], axis=2), 0, 1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "data.synthesize", *args, timeout=120, fresh=False)


def test_params_defaults_are_valid() -> None:
    params = SynthesisParams()
    assert 0 < params.exposure_min <= params.exposure_max <= 1 and params.gamma == "srgb"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exposure_min", 0.0),
        ("exposure_min", 1.5),
        ("exposure_max", 0.01),  # below exposure_min
        ("gamma", "log"),
        ("gamma_power", 0.5),
        ("photon_count_min", 1.0),
        ("photon_count_max", 10.0),  # below photon_count_min
        ("read_noise_min", -0.1),
        ("read_noise_max", 0.5),
        ("color_cast", 0.9),
        ("wb_red_min", 0.5),
        ("wb_red_max", 5.0),
        ("wb_blue_min", 0.9),
        ("noise_blur_min", -1.0),
        ("noise_blur_max", 4.0),
        ("tone_curve", "filmic"),
        ("jpeg_probability", 1.5),
        ("jpeg_quality_min", 5),
        ("jpeg_quality_max", 50),  # below jpeg_quality_min (60)
    ],
)
def test_params_range_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SynthesisParams(**{field: value})


def test_srgb_round_trip() -> None:
    x = np.linspace(0, 1, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-9)
    # IEC 61966-2-1 values, so a wrong curve used both ways cannot pass
    assert np.allclose(srgb_to_linear(np.array([0.5, 0.04045, 1.0])), [0.214041, 0.0031308, 1.0], atol=1e-6)
    assert np.allclose(linear_to_srgb(np.array([0.1, 0.0031308, 0.0])), [0.349190, 0.04045, 0.0], atol=1e-5)


def test_synthesize_low_is_dark_noisy_uint8() -> None:
    high = photo()
    low = synthesize_low(high, image_rng(0, "a.png"), SynthesisParams())
    assert low.shape == high.shape and low.dtype == np.uint8
    assert low.mean() / 255 < 0.5 * high.mean()  # darkened
    flat = synthesize_low(
        np.full((64, 64, 3), 0.5), image_rng(0, "flat.png"), SynthesisParams(color_cast=0.0)
    )
    assert flat.std() > 0  # sensor noise on a flat patch


@pytest.mark.parametrize("gamma", ["srgb", "power"])
def test_synthesize_low_deterministic_under_seed(gamma: str) -> None:
    params = SynthesisParams(gamma=gamma)
    first = synthesize_low(photo(), image_rng(0, "a.png"), params)
    assert np.array_equal(first, synthesize_low(photo(), image_rng(0, "a.png"), params))
    assert not np.array_equal(first, synthesize_low(photo(), image_rng(1, "a.png"), params))
    assert not np.array_equal(first, synthesize_low(photo(), image_rng(0, "b.png"), params))


def test_exposure_range_is_respected() -> None:
    white = np.ones((32, 32, 3))
    params = SynthesisParams(
        exposure_min=0.1,
        exposure_max=0.1,
        photon_count_min=1e6,
        photon_count_max=1e6,
        read_noise_min=0,
        read_noise_max=0,
        color_cast=0,
    )
    low = synthesize_low(white, image_rng(0, "w.png"), params)
    assert abs(low.mean() / 255 - 0.3492) < 0.01  # sRGB of linear 0.1


CLEAN = dict(photon_count_min=1e6, photon_count_max=1e6, read_noise_min=0, read_noise_max=0, color_cast=0)
"""Next to no noise and no cast: what is left is the deterministic part of the model."""


def test_every_camera_step_undone_and_redone_at_full_exposure_gives_the_photo_back() -> None:
    high = photo()
    for tone in ("none", "smoothstep"):
        params = SynthesisParams(
            exposure_min=1.0, exposure_max=1.0, wb_red_min=2.0, wb_red_max=2.0, tone_curve=tone, **CLEAN
        )
        low = synthesize_low(high, image_rng(0, "a.png"), params)
        assert np.abs(low / 255.0 - high).max() < 0.02, tone
    y = np.linspace(0, 1, 51)
    assert np.allclose(smoothstep(inverse_smoothstep(y)), y, atol=1e-9)
    assert smoothstep(np.array([0.25]))[0] == pytest.approx(0.15625)  # 3/16 - 2/64


def flat_noise(params: SynthesisParams, name: str = "flat.png") -> np.ndarray:
    """The dark image of a flat grey photo minus its mean per channel, as float (H, W, 3)."""
    low = synthesize_low(np.full((96, 96, 3), 0.6), image_rng(0, name), params).astype(np.float64)
    return low - low.mean(axis=(0, 1))


def test_white_balance_gains_amplify_the_noise_of_their_channels() -> None:
    common = dict(exposure_min=0.05, exposure_max=0.05, photon_count_min=2000, photon_count_max=2000)
    plain = flat_noise(SynthesisParams(**common, color_cast=0))
    balanced = flat_noise(SynthesisParams(**common, color_cast=0, wb_red_min=3.0, wb_red_max=3.0))
    red_over_green = lambda n: n[..., 0].std() / n[..., 1].std()  # noqa: E731
    assert red_over_green(plain) == pytest.approx(1.0, abs=0.1)
    assert red_over_green(balanced) > 1.4  # fewer red photons, the same gain back: sqrt(3) in theory


def test_noise_blur_correlates_neighbouring_pixels_at_the_same_strength() -> None:
    common = dict(exposure_min=0.05, exposure_max=0.05, photon_count_min=2000, photon_count_max=2000)

    def neighbour_correlation(noise: np.ndarray) -> float:
        return float(np.corrcoef(noise[:, :-1, 1].ravel(), noise[:, 1:, 1].ravel())[0, 1])

    per_pixel = flat_noise(SynthesisParams(**common, color_cast=0))
    spread = flat_noise(SynthesisParams(**common, color_cast=0, noise_blur_min=2.0, noise_blur_max=2.0))
    assert abs(neighbour_correlation(per_pixel)) < 0.1
    assert neighbour_correlation(spread) > 0.7
    assert spread.std() == pytest.approx(per_pixel.std(), rel=0.25)


def test_jpeg_is_applied_at_the_drawn_quality() -> None:
    plain = synthesize_low(photo(64, 64), image_rng(0, "a.png"), SynthesisParams())
    params = SynthesisParams(jpeg_probability=1.0, jpeg_quality_min=30, jpeg_quality_max=30)
    compressed = synthesize_low(photo(64, 64), image_rng(0, "a.png"), params)
    assert not np.array_equal(compressed, plain)
    assert np.array_equal(compressed, jpeg_round_trip(plain, 30))  # the same image, then JPEG at 30
    never = SynthesisParams(jpeg_probability=0.0, jpeg_quality_min=30, jpeg_quality_max=30)
    assert np.array_equal(synthesize_low(photo(64, 64), image_rng(0, "a.png"), never), plain)


def test_the_camera_regime_is_fixed_by_its_seed_and_darker_than_the_photo() -> None:
    first = synthesize_low(photo(), image_rng(3, "a.png"), REGIMES["camera"])
    assert np.array_equal(first, synthesize_low(photo(), image_rng(3, "a.png"), REGIMES["camera"]))
    assert not np.array_equal(first, synthesize_low(photo(), image_rng(4, "a.png"), REGIMES["camera"]))
    assert first.mean() / 255 < 0.6 * photo().mean()
    assert REGIMES["default"] == SynthesisParams()  # the old defaults stay reachable by name


def test_synthesize_low_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="H, W, 3"):
        synthesize_low(np.zeros((4, 4)), image_rng(0, "x"), SynthesisParams())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        synthesize_low(np.full((4, 4, 3), 2.0), image_rng(0, "x"), SynthesisParams())
    with pytest.raises(ValueError, match="seed"):
        image_rng(-1, "x")


def _write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((photo(60, 80) * 255).astype(np.uint8)).save(folder / "a.jpg", quality=95)
    cv2.imwrite(str(folder / "b 16bit.png"), (photo(30, 20)[..., ::-1] * 65535).astype(np.uint16))
    (folder / "notes.txt").write_text("ignored")


def test_cli_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ["--input", "--output", "--seed", "--max_size", "--config", "--print_config"]:
        assert flag in result.stdout
    for field in fields(SynthesisParams):
        assert f"--{field.name}" in result.stdout


def test_cli_run_writes_pairs_and_is_deterministic(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    out = tmp_path / "split" / "Synth"
    result = run_cli("--input", str(tmp_path / "in"), "--output", str(out), "--max_size", "40")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "low").iterdir()) == ["a.png", "b 16bit.png"]  # no temp files left
    assert sorted(p.name for p in (out / "high").iterdir()) == ["a.png", "b 16bit.png"]
    assert (
        Image.open(out / "high" / "a.png").size == (40, 30)
        and Image.open(out / "high" / "a.png").mode == "RGB"
    )
    assert Image.open(out / "high" / "b 16bit.png").size == (20, 30)  # already small: not resized
    validate_split(tmp_path / "split", require_high=True)  # the output is a valid sub-dataset
    # In-process reruns: same seed -> identical bytes, another seed -> other low images, same high.
    assert (
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "again"), "--max_size", "40"]) == 0
    )
    assert (
        main(
            [
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "s1"),
                "--max_size",
                "40",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    for name in ("a.png", "b 16bit.png"):
        assert (out / "low" / name).read_bytes() == (tmp_path / "again" / "low" / name).read_bytes()
        assert (out / "low" / name).read_bytes() != (tmp_path / "s1" / "low" / name).read_bytes()
        assert (out / "high" / name).read_bytes() == (tmp_path / "s1" / "high" / name).read_bytes()


def test_cli_result_independent_of_other_files(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    (tmp_path / "solo").mkdir()
    (tmp_path / "in" / "a.jpg").rename(tmp_path / "solo" / "a.jpg")
    params = SynthesisParams()
    synthesize_folder(tmp_path / "solo", tmp_path / "out_solo", 0, params)
    (tmp_path / "solo" / "a.jpg").rename(tmp_path / "in" / "a.jpg")
    synthesize_folder(tmp_path / "in", tmp_path / "out_all", 0, params)
    assert (tmp_path / "out_solo/low/a.png").read_bytes() == (tmp_path / "out_all/low/a.png").read_bytes()


def test_cli_bad_files_reported_and_skipped(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_text("not an image")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    result = run_cli("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "empty.jpg" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "low").iterdir()) == ["a.png", "b 16bit.png"]


def test_cli_duplicate_stems_skipped(tmp_path: Path, capsys) -> None:
    _write_inputs(tmp_path / "in")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    assert "a.jpg, a.png share the stem 'a'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "low").iterdir()) == ["b 16bit.png"]


def test_cli_invalid_parameter_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--input", "x", "--output", "y", "--exposure_min", "2"])
    assert info.value.code == 2 and "exposure_min must be in (0, 1]" in capsys.readouterr().err


def test_cli_missing_input_folder(tmp_path: Path, capsys) -> None:
    assert main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 1
    assert "nope" in capsys.readouterr().err


def test_cli_print_config_and_config_round_trip(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--input", "in", "--output", "out", "--exposure_max", "0.1", "--print_config"])
    assert info.value.code == 0
    config = capsys.readouterr().out
    assert "exposure_max: 0.1" in config and "gamma: srgb" in config
    _write_inputs(tmp_path / "in")
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text(
        config.replace("input: in", f"input: {tmp_path / 'in'}").replace(
            "output: out", f"output: {tmp_path / 'o'}"
        )
    )
    assert main(["--config", str(yaml)]) == 0
    assert (tmp_path / "o" / "low" / "a.png").is_file()


def test_make_sample_reproduces_the_shipped_sample(tmp_path: Path) -> None:
    counts = make_sample.build_sample(tmp_path, seed=0, params=SynthesisParams())
    assert counts == {"1_train": 10, "2_valid": 2, "3_bench": 2, "4_infer": 2}
    shipped = sorted(p.relative_to(ROOT / "sample") for p in (ROOT / "sample").rglob("*") if p.is_file())
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == built
    for rel in built:  # images: the same pixels (their bytes depend on the PNG compression level)
        mine, theirs = tmp_path / rel, ROOT / "sample" / rel
        if rel.suffix == ".png":
            assert np.array_equal(decode_image_array(mine), decode_image_array(theirs)), rel
        else:
            assert mine.read_bytes() == theirs.read_bytes(), rel


def test_make_sample_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "1_train").mkdir()
    with pytest.raises(SystemExit, match="--overwrite"):
        make_sample.main(output=tmp_path)


def test_contact_sheet_pairs_each_real_crop_with_the_synthetic_crop_of_closest_level(tmp_path: Path) -> None:
    from tools.contact_sheet import ContactSheetHparams, matches
    from tools.contact_sheet import main as contact_sheet

    (tmp_path / "real" / "low").mkdir(parents=True)
    (tmp_path / "photos").mkdir()
    for level in (10, 60):  # a very dark and a moderately dark real photo
        Image.fromarray(np.full((50, 70, 3), level, np.uint8)).save(
            tmp_path / "real" / "low" / f"{level}.png"
        )
    Image.fromarray((photo(60, 80) * 255).astype(np.uint8)).save(tmp_path / "photos" / "p.png")
    hp = ContactSheetHparams(
        real=[str(tmp_path / "real" / "low")],
        photos=[str(tmp_path / "photos")],
        draws=12,
        crop=16,
        output=str(tmp_path / "sheet.jpg"),
    )
    rows = matches(hp)
    assert [name for name, *_ in rows] == ["real/10.png", "real/60.png"]
    means = [(real.mean(), synth.mean()) for _, real, _, synth in rows]
    assert means[0][1] < means[1][1]  # the darker real crop got the darker synthetic one
    assert all(synth.shape == (16, 16, 3) for *_, synth in rows)
    assert Image.open(contact_sheet(hp)).size == (2 * (2 * 16 + 18), 16 + 34)
