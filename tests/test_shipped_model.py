"""The starter model committed in checkpoints/: small, intact, the documented architecture, and useful
on a dark photo it never saw (tests/test_starter.py covers the mechanics with a stand-in file)."""

from __future__ import annotations

import numpy as np
import torch

from model.model import ARCHITECTURE, STARTER_MODEL, load_checkpoint, read_checkpoint, resolve_checkpoint
from utils.hparams import ModelHparams
from utils.utils import sha256_of

MAX_BYTES = 10 * 2**20


def test_the_shipped_file_is_small_weights_only_and_matches_its_recorded_sha256() -> None:
    assert STARTER_MODEL.is_file(), f"{STARTER_MODEL} is not in the repository"
    assert STARTER_MODEL.stat().st_size <= MAX_BYTES
    recorded = STARTER_MODEL.with_suffix(".sha256").read_text().split()
    assert recorded == [sha256_of(STARTER_MODEL), STARTER_MODEL.name]
    checkpoint = torch.load(STARTER_MODEL, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "hyper_parameters", "epoch", "global_step"}


def test_the_shipped_model_is_the_default_architecture_the_readme_describes() -> None:
    saved = read_checkpoint(STARTER_MODEL)["hyper_parameters"]  # fields newer than the file: legacy values
    defaults = ModelHparams()
    assert {k: saved[k] for k in ARCHITECTURE} == {k: getattr(defaults, k) for k in ARCHITECTURE}


def test_no_checkpoint_path_loads_the_shipped_model_and_it_brightens_a_dark_photo() -> None:
    from skimage import data as skdata

    from data.synthesize import REGIMES, image_rng, synthesize_low

    path = resolve_checkpoint(None)
    assert path == STARTER_MODEL
    model = load_checkpoint(path)
    high = skdata.chelsea()[:128, :192] / 255.0
    low = synthesize_low(high, image_rng(0, "chelsea"), REGIMES["lol"]) / 255.0
    reference, dark = (torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] for x in (high, low))
    with torch.no_grad():
        out = model.model(dark).clamp(0, 1)
    assert out.shape == dark.shape and torch.isfinite(out).all()

    def psnr(x: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / ((x - reference) ** 2).mean()))

    # chelsea is in neither the starter's photo folders nor its validation photos
    assert psnr(out) > psnr(dark) + 5.0
    assert abs(float(out.mean()) - float(reference.mean())) < 0.15
