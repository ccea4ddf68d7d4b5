"""The shipped starter model: found by default, checked, loadable through torch.hub, and a start for
fine-tuning (``train.py --init_from``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import model as model_module
from model.model import CheckpointError, LowLightEnhancerLightning, resolve_checkpoint, save_weights
from tests.conftest import ROOT, TINY_MODEL, cli_flags, run_python, tiny_model
from utils.utils import sha256_of


def lightning_checkpoint(path: Path, **fields) -> Path:
    """A full Lightning-style checkpoint of a randomly initialised tiny model (with training state)."""
    torch.manual_seed(0)
    module = LowLightEnhancerLightning(tiny_model(**fields))
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "optimizer_states": [{"state": {}, "param_groups": []}],
        "epoch": 3,
        "global_step": 40,
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def starter(tmp_path, monkeypatch) -> Path:
    """A tiny starter model in place of checkpoints/starter.ckpt."""
    path = tmp_path / "checkpoints" / "starter.ckpt"
    path.parent.mkdir()
    save_weights(lightning_checkpoint(tmp_path / "full.ckpt"), path)
    monkeypatch.setattr(model_module, "STARTER_MODEL", path)
    return path


def test_save_weights_keeps_the_weights_and_architecture_only(starter, tmp_path) -> None:
    saved = torch.load(starter, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "hyper_parameters", "epoch", "global_step"}  # no optimizer
    assert saved["hyper_parameters"]["embed_dim"] == 8
    assert starter.with_suffix(".sha256").read_text().split()[0] == sha256_of(starter)
    full = torch.load(tmp_path / "full.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(full["state_dict"][k], v) for k, v in saved["state_dict"].items())


def test_no_checkpoint_path_means_the_starter_model_checked_against_its_sha256(starter, caplog) -> None:
    assert resolve_checkpoint("other.ckpt") == Path("other.ckpt")
    with caplog.at_level("INFO", logger="illrecnet"):
        assert resolve_checkpoint("") == starter
    assert "using the shipped starter model" in caplog.text
    whole = starter.read_bytes()
    starter.write_bytes(whole[: len(whole) // 2])  # truncated (FAULTS 47)
    with pytest.raises(CheckpointError, match="is not the shipped starter model") as error:
        resolve_checkpoint(None)
    assert str(starter) in str(error.value) and "git checkout -- checkpoints/starter.ckpt" in str(error.value)
    starter.unlink()  # missing
    with pytest.raises(CheckpointError, match="starter.ckpt is missing.*git checkout --"):
        resolve_checkpoint(None)


def test_a_replaced_starter_model_is_refused_even_when_it_is_a_valid_checkpoint(starter, tmp_path) -> None:
    lightning_checkpoint(starter, embed_dim=12)  # another model, saved under the starter's name
    with pytest.raises(CheckpointError, match="is not the shipped starter model"):
        resolve_checkpoint(None)


def test_infer_without_checkpoint_path_uses_the_starter_model(starter, tmp_path) -> None:
    import infer

    photo = tmp_path / "dark.png"
    Image.fromarray(np.full((20, 28, 3), 12, np.uint8)).save(photo)
    hp = infer.InferHparams(input=str(photo), log_dir=str(tmp_path / "runs"), accelerator="cpu")
    infer.main(hp)
    out = tmp_path / "runs" / "illrecnet" / "inference"
    assert [p.name for p in out.rglob("*.png")] == ["dark.png"]
    assert hp.checkpoint_path == str(starter)


def test_torch_hub_loads_the_starter_model_from_a_local_clone(starter) -> None:
    model = torch.hub.load(str(ROOT), "illrecnet", source="local", pretrained=True, trust_repo=True)
    assert not model.training
    expected = torch.load(starter, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[f"model.{k}"], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)
    fresh = torch.hub.load(
        str(ROOT), "illrecnet", source="local", pretrained=False, embed_dim=12, num_heads=2
    )
    assert fresh.encoder.fuse.out_channels == 12 and not fresh.training
    with pytest.raises(ValueError, match="own architecture"):
        torch.hub.load(str(ROOT), "illrecnet", source="local", pretrained=True, embed_dim=12)


def train(*args: str) -> subprocess.CompletedProcess:
    return run_python("train.py", *args)


@pytest.mark.slow
def test_init_from_starts_from_the_weights_with_a_fresh_optimizer(starter, tmp_path) -> None:
    common = [
        *cli_flags(TINY_MODEL),  # the architecture of the tiny starter written by the fixture
        *("--image_size", "32", "--batch_size", "2"),
        *("--num_workers", "0", "--accelerator", "cpu", "--session", "frozen", "--max_epochs", "1"),
        *(
            "--train_data_path",
            str(ROOT / "sample" / "1_train"),
            "--valid_data_path",
            str(ROOT / "sample" / "2_valid"),
        ),
        *("--bench_data_path", str(tmp_path / "none"), "--infer_data_path", str(tmp_path / "none")),
    ]
    done = train(*common, "--init_from", str(starter), "--log_dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"session frozen starts from the weights of {starter}" in done.stderr
    last = torch.load(
        tmp_path / "runs" / "illrecnet" / "version_0" / "frozen" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert last["epoch"] == 0 and last["global_step"] == 5  # its own steps: 10 pairs, batch 2
    assert all(s["step"] == 5 for s in last["optimizer_states"][0]["state"].values())  # fresh AdamW

    # FAULTS 52: another architecture or a corrupt file: an error naming it, no run folder left
    other = lightning_checkpoint(tmp_path / "wide.ckpt", embed_dim=12)
    refused = train(*common, "--init_from", str(other), "--log_dir", str(tmp_path / "r1"))
    assert refused.returncode == 2 and f"{other} does not fit this model" in refused.stderr
    assert (
        "embed_dim: checkpoint 12 vs this run 8" in refused.stderr and "mismatched shapes" in refused.stderr
    )
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    refused = train(*common, "--init_from", str(corrupt), "--log_dir", str(tmp_path / "r2"))
    assert refused.returncode == 2 and f"cannot read checkpoint {corrupt}" in refused.stderr
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_model_card_scores_checkpoints_beside_the_dark_input_and_classical_enhancers(
    starter, tmp_path
) -> None:
    from tools.model_card import ModelCardHparams, clahe, gamma
    from tools.model_card import main as model_card

    grey = np.full((2, 2, 3), 64, np.uint8)
    assert gamma(grey)[0, 0, 0] == round(255 * (64 / 255) ** (1 / 2.2))  # 136
    ramp = np.repeat(np.linspace(20, 60, 128).astype(np.uint8)[None, :, None], 128, axis=0).repeat(3, axis=2)
    assert np.ptp(clahe(ramp)) > np.ptp(ramp)  # local contrast stretched on the luminance
    rng = np.random.default_rng(0)
    (tmp_path / "pair" / "low").mkdir(parents=True)
    (tmp_path / "pair" / "high").mkdir()
    high = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(high // 8).save(tmp_path / "pair" / "low" / "1.png")
    Image.fromarray(high).save(tmp_path / "pair" / "high" / "1.png")
    (tmp_path / "DICM" / "low").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 60, (100, 120, 3), dtype=np.uint8)).save(
            tmp_path / "DICM" / "low" / f"{i}.jpg"
        )
    hp = ModelCardHparams(
        models=[f"tiny={starter}"],
        regimes=["lol"],
        max_side=64,
        lol_dir=str(tmp_path / "pair"),
        unpaired=[str(tmp_path / "DICM" / "low"), str(tmp_path / "missing")],
        grid=str(tmp_path / "grid.jpg"),
        grid_photos=[str(tmp_path / "pair" / "low" / "1.png"), str(tmp_path / "none.png")],
        grid_width=30,
        output=str(tmp_path / "card.json"),
    )
    results = model_card(hp)
    methods = ["dark input", "gamma", "clahe", "tiny"]
    assert list(results["held_out"]) == list(results["real_pair"]) == list(results["unpaired"]) == methods
    assert len(results["held_out"]["tiny"]["per_image"]) == 4  # four held-out photos, one regime
    assert results["real_pair"]["gamma"]["psnr"] > results["real_pair"]["dark input"]["psnr"]
    niqe = results["unpaired"]["tiny"]["sets"]["DICM"]
    assert niqe["images"] == 2 and np.isfinite(niqe["NIQE"]) and np.isfinite(niqe["BRISQUE"])
    assert Image.open(tmp_path / "grid.jpg").size == (4 * 30, 20)  # one row: 40x60 shrunk to 20x30
    assert "| tiny |" in results["markdown"] and (tmp_path / "card.json").is_file()
    with pytest.raises(ValueError, match="distinct"):
        ModelCardHparams(models=["gamma=x.ckpt"])
