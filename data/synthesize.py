"""Synthesize low-light images from normal-light photographs with a simple camera noise model.

The idea (as in the unprocessing literature): undo the camera's tone curve and display gamma to get
back to linear light, undo the camera's white balance, cut the exposure, add the noise a sensor
produces at that photon count (Poisson shot noise plus Gaussian read noise), then do what a camera
does after the sensor: white balance (which scales each channel's noise differently), optionally
spread the noise over neighbouring pixels (demosaicing and in-camera denoising leave it spatially
correlated), tint with per-channel gains (a white-balance error), re-apply the gamma and the tone
curve, quantize to 8 bit and optionally JPEG-compress. Every step added after the first version
(white balance, correlated noise, tone curve, JPEG) is off by default, so the defaults draw exactly
the images they drew before; :data:`REGIMES` ``camera`` switches them on.

Command line (every :class:`SynthesisParams` field is a flag of the same name)::

    python -m data.synthesize --input photos/ --output data/1_train/Synth --seed 0

writes ``OUT/high/<stem>.png`` (the input as 8-bit sRGB) and ``OUT/low/<stem>.png``. Each image is
drawn from a generator seeded by ``(seed, file name)``, so a result does not depend on which other
files are in the folder or their order. Files are written atomically (temp file, then rename) and
existing outputs of the same name are replaced. Unreadable inputs are reported by name and
skipped; the exit status is then 1.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from jsonargparse import ArgumentParser, set_parsing_settings

from data.utils import DataError, list_images, load_image, save_png_atomic


@dataclass
class SynthesisParams:
    """Low-light synthesis parameters; every ``*_min``/``*_max`` pair is a range sampled per image."""

    exposure_min: float = 0.02
    """Smallest exposure factor on linear light (sampled log-uniformly), in (0, 1]."""
    exposure_max: float = 0.2
    """Largest exposure factor on linear light, in [exposure_min, 1]."""
    gamma: Literal["srgb", "power"] = "srgb"
    """Transfer curve to undo and re-apply: 'srgb' (IEC 61966-2-1) or 'power' (x ** gamma_power)."""
    gamma_power: float = 2.2
    """Exponent of the 'power' curve, in [1, 3]."""
    photon_count_min: float = 1000.0
    """Fewest photo-electrons a white pixel collects at full exposure (log-uniform; fewer = more shot
    noise), in [10, 1e6]."""
    photon_count_max: float = 10000.0
    """Most photo-electrons a white pixel collects at full exposure, in [photon_count_min, 1e6]."""
    read_noise_min: float = 0.0005
    """Smallest Gaussian read-noise sigma, as a fraction of full scale in linear light, in [0, 0.1]."""
    read_noise_max: float = 0.005
    """Largest Gaussian read-noise sigma, in [read_noise_min, 0.1]."""
    color_cast: float = 0.1
    """Per-channel gains are drawn from [1 - color_cast, 1 + color_cast]; 0 disables the cast; in [0, 0.5]."""
    wb_red_min: float = 1.0
    """Smallest white-balance gain of the red channel, in [1, 4]: the sensor's red is divided by it
    before the noise and multiplied after, so the red noise is amplified (daylight raw: about 1.9-2.4).
    1 with wb_red_max 1 (and the blue gains 1): no white-balance step."""
    wb_red_max: float = 1.0
    """Largest red white-balance gain, in [wb_red_min, 4]."""
    wb_blue_min: float = 1.0
    """Smallest white-balance gain of the blue channel, in [1, 4] (daylight raw: about 1.5-1.9)."""
    wb_blue_max: float = 1.0
    """Largest blue white-balance gain, in [wb_blue_min, 4]."""
    noise_blur_min: float = 0.0
    """Smallest sigma (pixels) of the Gaussian that spreads the noise over neighbours, in [0, 3]; the
    blurred noise is rescaled to its former standard deviation, so this changes the grain, not its
    strength. 0 with noise_blur_max 0: per-pixel noise."""
    noise_blur_max: float = 0.0
    """Largest noise-blur sigma, in [noise_blur_min, 3]."""
    tone_curve: Literal["none", "smoothstep"] = "none"
    """Camera tone curve on top of the gamma: 'smoothstep' (3x^2 - 2x^3, a global S-curve) is undone
    on the photo before everything else and applied to the dark image at the end."""
    jpeg_probability: float = 0.0
    """Chance that the dark image is JPEG-compressed, in [0, 1]."""
    jpeg_quality_min: int = 60
    """Lowest JPEG quality (uniform over integers), in [10, 100]."""
    jpeg_quality_max: int = 95
    """Highest JPEG quality, in [jpeg_quality_min, 100]."""

    def __post_init__(self) -> None:
        _check_range("exposure_min", self.exposure_min, 0.0, 1.0, low_open=True)
        _check_range("exposure_max", self.exposure_max, self.exposure_min, 1.0)
        if self.gamma not in ("srgb", "power"):
            raise ValueError(f"gamma must be 'srgb' or 'power', got {self.gamma!r}")
        _check_range("gamma_power", self.gamma_power, 1.0, 3.0)
        _check_range("photon_count_min", self.photon_count_min, 10.0, 1e6)
        _check_range("photon_count_max", self.photon_count_max, self.photon_count_min, 1e6)
        _check_range("read_noise_min", self.read_noise_min, 0.0, 0.1)
        _check_range("read_noise_max", self.read_noise_max, self.read_noise_min, 0.1)
        _check_range("color_cast", self.color_cast, 0.0, 0.5)
        _check_range("wb_red_min", self.wb_red_min, 1.0, 4.0)
        _check_range("wb_red_max", self.wb_red_max, self.wb_red_min, 4.0)
        _check_range("wb_blue_min", self.wb_blue_min, 1.0, 4.0)
        _check_range("wb_blue_max", self.wb_blue_max, self.wb_blue_min, 4.0)
        _check_range("noise_blur_min", self.noise_blur_min, 0.0, 3.0)
        _check_range("noise_blur_max", self.noise_blur_max, self.noise_blur_min, 3.0)
        if self.tone_curve not in ("none", "smoothstep"):
            raise ValueError(f"tone_curve must be 'none' or 'smoothstep', got {self.tone_curve!r}")
        _check_range("jpeg_probability", self.jpeg_probability, 0.0, 1.0)
        _check_range("jpeg_quality_min", self.jpeg_quality_min, 10, 100)
        _check_range("jpeg_quality_max", self.jpeg_quality_max, self.jpeg_quality_min, 100)


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Raise a ValueError naming the field unless ``low <= value <= high`` (``low < value`` if open)."""
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")


REGIMES: dict[str, SynthesisParams] = {
    "default": SynthesisParams(),
    "mild": SynthesisParams(
        exposure_min=0.1,
        exposure_max=0.3,
        photon_count_min=4000.0,
        photon_count_max=20000.0,
        read_noise_min=0.0005,
        read_noise_max=0.002,
        color_cast=0.05,
    ),
    "lol": SynthesisParams(
        exposure_min=0.015,
        exposure_max=0.06,
        photon_count_min=1500.0,
        photon_count_max=6000.0,
        read_noise_min=0.001,
        read_noise_max=0.004,
        color_cast=0.1,
    ),
    "camera": SynthesisParams(
        exposure_min=0.005,
        exposure_max=0.3,
        photon_count_min=1000.0,
        photon_count_max=20000.0,
        read_noise_min=0.0005,
        read_noise_max=0.006,
        color_cast=0.15,
        wb_red_min=1.9,
        wb_red_max=2.4,
        wb_blue_min=1.5,
        wb_blue_max=1.9,
        noise_blur_min=0.0,
        noise_blur_max=1.5,
        tone_curve="none",
        jpeg_probability=0.5,
        jpeg_quality_min=60,
        jpeg_quality_max=95,
    ),
    "extreme": SynthesisParams(
        exposure_min=0.003,
        exposure_max=0.012,
        photon_count_min=1000.0,
        photon_count_max=3000.0,
        read_noise_min=0.002,
        read_noise_max=0.006,
        color_cast=0.3,
    ),
}
"""Named degradation regimes (docs/measurements.md, "Degradation regimes", has the calibration).

- ``default``: the :class:`SynthesisParams` defaults, the one regime the model was first tuned on.
- ``mild``: moderately dark (exposure 0.1-0.3; the low images of 40 SunHays80 photos average 0.20 of
  full scale in sRGB, LIME's real ones 0.14) with light noise (400-6,000 electrons at white).
- ``lol``: LOL-v1-like: 0.08 of full scale on average (LOL-v1's low images: 0.05-0.1 against about
  0.45 for their references) with visible shot noise (20-360 electrons at white).
- ``camera``: for training a model for real dark photos (the starter model): exposures from mild to
  extreme, white-balance gains of daylight raw data (red 1.9-2.4, blue 1.5-1.9, the ranges of the
  unprocessing literature), noise spread over up to 1.5 px, and JPEG at quality 60-95 for half of
  the images (DICM is JPEG). Without the smoothstep tone curve: its toe crushes what is already dark
  (a grey of 0.5 at exposure 0.01 ends at a mean level of 0.007 with it, 0.035 without; LOL-v1's
  darkest are about 0.03).
- ``extreme``: very dark (0.03 of full scale, like LOL-v1's pair 778), shot noise comparable to the
  signal (3-36 electrons at white, read noise up to 0.6 % of full scale) and a strong colour cast
  (per-channel gains within +-30 %).
"""


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer curve (IEC 61966-2-1), elementwise on [0, 1]."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer curve (IEC 61966-2-1), elementwise on [0, 1]."""
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def synthesize_low(high: np.ndarray, rng: np.random.Generator, params: SynthesisParams) -> np.ndarray:
    """Turn a normal-light sRGB image into a dark, noisy one.

    Args:
        high: (H, W, 3) float sRGB image in [0, 1].
        rng: the generator all random draws come from (see :func:`image_rng`).
        params: ranges of the model's parameters.

    Returns:
        (H, W, 3) uint8 sRGB low-light image.
    """
    if high.ndim != 3 or high.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {high.shape}")
    if not np.isfinite(high).all() or high.min() < 0.0 or high.max() > 1.0:
        raise ValueError("expected finite values in [0, 1]")
    x = high.astype(np.float64)
    if params.tone_curve == "smoothstep":
        x = inverse_smoothstep(x)
    linear = srgb_to_linear(x) if params.gamma == "srgb" else x**params.gamma_power  # (H, W, 3)
    exposure = _log_uniform(rng, params.exposure_min, params.exposure_max)
    photons = _log_uniform(rng, params.photon_count_min, params.photon_count_max)  # at white, full exposure
    read_sigma = rng.uniform(params.read_noise_min, params.read_noise_max)
    balance = np.ones(3)  # the camera's white-balance gains, undone before the sensor, redone after
    if max(params.wb_red_max, params.wb_blue_max) > 1.0:
        balance = np.array(
            [
                rng.uniform(params.wb_red_min, params.wb_red_max),
                1.0,
                rng.uniform(params.wb_blue_min, params.wb_blue_max),
            ]
        )
    signal = linear * exposure / balance  # what reaches the sensor, (H, W, 3)
    electrons = rng.poisson(signal * photons)  # shot noise
    dark = electrons / photons + rng.normal(0.0, read_sigma, size=linear.shape)  # + read noise
    if params.noise_blur_max > 0.0:  # demosaicing / in-camera denoising: neighbouring pixels share noise
        dark = signal + correlate_noise(
            dark - signal, rng.uniform(params.noise_blur_min, params.noise_blur_max)
        )
    gains = rng.uniform(1.0 - params.color_cast, 1.0 + params.color_cast, size=3)  # (3,) white-balance error
    dark = np.clip(dark * balance * gains, 0.0, 1.0)
    out = linear_to_srgb(dark) if params.gamma == "srgb" else dark ** (1.0 / params.gamma_power)
    if params.tone_curve == "smoothstep":
        out = smoothstep(out)
    low = np.round(out * 255.0).astype(np.uint8)
    if params.jpeg_probability > 0.0 and rng.random() < params.jpeg_probability:
        low = jpeg_round_trip(low, int(rng.integers(params.jpeg_quality_min, params.jpeg_quality_max + 1)))
    return low


def smoothstep(x: np.ndarray) -> np.ndarray:
    """A global S-shaped tone curve, ``3x^2 - 2x^3`` on [0, 1]."""
    return x * x * (3.0 - 2.0 * x)


def inverse_smoothstep(y: np.ndarray) -> np.ndarray:
    """The inverse of :func:`smoothstep` on [0, 1]."""
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * np.clip(y, 0.0, 1.0)) / 3.0)


def correlate_noise(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``noise (H, W, 3)`` blurred by a Gaussian of ``sigma`` pixels per channel, then rescaled to the
    standard deviation it had, so neighbouring pixels share noise of the same strength."""
    if sigma <= 0.0:
        return noise
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    before, after = noise.std(axis=(0, 1)), blurred.std(axis=(0, 1))
    return blurred * (before / np.maximum(after, 1e-12))


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image (H, W, 3)`` uint8 RGB encoded as a JPEG of ``quality`` (4:2:0, as cameras write) and
    decoded again."""
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()


def image_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded from ``(seed, name)`` only, so results do not depend on file order."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def to_srgb8(image: np.ndarray, max_size: int | None = None) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> uint8, first shrinking (area filter) so the long side is <= max_size."""
    height, width = image.shape[:2]
    if max_size is not None and max(height, width) > max_size:
        scale = max_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (W, H)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def synthesize_folder(
    input_dir: Path, output_dir: Path, seed: int, params: SynthesisParams, max_size: int | None = None
) -> tuple[int, list[str]]:
    """Write a high/low pair for every image in ``input_dir``; return (pairs written, problems)."""
    files = list_images(input_dir)
    if not files:
        raise DataError(f"no images in {input_dir} (allowed: .png .jpg .jpeg .bmp .tif .tiff .webp)")
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    problems = [
        f"{input_dir}: {', '.join(p.name for p in paths)} share the stem {stem!r}; skipped"
        for stem, paths in by_stem.items()
        if len(paths) > 1
    ]
    (output_dir / "high").mkdir(parents=True, exist_ok=True)
    (output_dir / "low").mkdir(parents=True, exist_ok=True)
    written = 0
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            continue
        try:
            image = load_image(paths[0]).permute(1, 2, 0).numpy()  # (H, W, 3) float32
        except DataError as err:
            problems.append(f"{err}; skipped")
            continue
        high = to_srgb8(image, max_size)  # (H, W, 3) uint8
        low = synthesize_low(high / 255.0, image_rng(seed, paths[0].name), params)
        save_png_atomic(output_dir / "high" / f"{stem}.png", high)
        save_png_atomic(output_dir / "low" / f"{stem}.png", low)
        written += 1
    return written, problems


def get_parser() -> ArgumentParser:
    """The command-line parser: input/output/seed/max_size plus every SynthesisParams field."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="python -m data.synthesize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="config", help="YAML file with any of the flags below.")
    parser.add_argument(
        "--input", type=Path, required=True, help="Folder of normal-light images (top level)."
    )
    parser.add_argument("--output", type=Path, required=True, help="Folder that receives high/ and low/.")
    parser.add_argument("--seed", type=int, default=0, help="Base seed (>= 0); each image uses (seed, name).")
    parser.add_argument(
        "--max_size", type=int | None, default=None, help="Shrink so the long side is at most this (pixels)."
    )
    parser.add_class_arguments(SynthesisParams, nested_key=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (1 if any input was skipped)."""
    parser = get_parser()
    cfg = parser.parse_args(argv)
    try:
        params = SynthesisParams(**{f.name: cfg[f.name] for f in fields(SynthesisParams)})
    except ValueError as err:
        parser.error(str(err))
    if cfg.max_size is not None and cfg.max_size < 1:
        parser.error(f"max_size must be a positive integer, got {cfg.max_size}")
    if cfg.seed < 0:
        parser.error(f"seed must be >= 0, got {cfg.seed}")
    try:
        written, problems = synthesize_folder(cfg.input, cfg.output, cfg.seed, params, cfg.max_size)
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"wrote {written} pairs to {cfg.output} ({len(problems)} skipped)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
