"""Training from folders of normal-light photos: low-light twins synthesized on the fly (data/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from data.dataloader import PairedImageDataset
from data.synthesize import REGIMES
from data.utils import DataError, validate_split
from tests.conftest import ROOT, TINY_MODEL, cli_flags, data_module, run_python


def write_photos(folder: Path, names=("astronaut", "chelsea", "coffee"), step: int = 6) -> list[Path]:
    """scikit-image photos (public domain / CC0), shrunk by ``step``, as PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()[::step, ::step]).save(path)
        paths.append(path)
    return paths


def write_pairs(sub: Path, count: int = 2) -> None:
    rng = np.random.default_rng(0)
    for side in ("low", "high"):
        (sub / side).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        high = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(high // 6).save(sub / "low" / f"{i}.png")
        Image.fromarray(high).save(sub / "high" / f"{i}.png")


def test_a_sub_dataset_without_low_is_a_photo_folder_in_either_layout(tmp_path) -> None:
    write_photos(tmp_path / "split" / "Plain")
    write_photos(tmp_path / "split" / "InHigh" / "high", names=("rocket",))
    pairs = validate_split(tmp_path / "split", require_high=True, photos=True)
    assert sorted(pairs) == ["InHigh", "Plain"]
    assert [p.name for p in pairs["Plain"]] == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert all(p.synthetic and p.low == p.high for group in pairs.values() for p in group)
    with pytest.raises(DataError, match="missing folder"):  # bench and older callers: still an error
        validate_split(tmp_path / "split", require_high=True)


def test_training_samples_follow_their_seed_and_validation_photos_are_fixed(tmp_path) -> None:
    pairs = validate_split(write_photos(tmp_path / "s" / "P")[0].parents[1], True, photos=True)["P"]
    train = PairedImageDataset(pairs, crop_size=24, augment=True, synthesis=REGIMES["lol"])
    first, again, other = train[(0, 5)], train[(0, 5)], train[(0, 6)]
    assert torch.equal(first["low"], again["low"]) and torch.equal(first["high"], again["high"])
    assert not torch.equal(first["low"], other["low"])  # another epoch: another crop and noise
    assert first["low"].shape == first["high"].shape == (3, 24, 24)
    assert first["low"].mean() < 0.5 * first["high"].mean()
    photo = torch.from_numpy(np.array(Image.open(pairs[0].high))).permute(2, 0, 1).float() / 255

    def valid(seed: int) -> dict:
        return PairedImageDataset(pairs, synthesis=REGIMES["lol"], synthesis_seed=seed)[0]

    assert torch.equal(valid(3)["high"], photo)  # the whole photo, as stored
    assert torch.equal(valid(3)["low"], valid(3)["low"])  # same pair in every epoch and run
    assert not torch.equal(valid(3)["low"], valid(4)["low"])


def test_photo_folders_mix_with_real_pairs_and_lend_photos_to_validation(tmp_path) -> None:
    write_photos(tmp_path / "photos" / "Photos", names=("astronaut", "chelsea", "coffee", "rocket"))
    write_pairs(tmp_path / "lol" / "LOL")
    dm = data_module(
        train_data_path=[str(tmp_path / "photos"), str(tmp_path / "lol")],
        valid_data_path="",
        image_size=16,
        batch_size=2,
        train_repeat=3,
        photo_repeat=2,
        valid_holdout=2,
        cache_gb=0,
    )
    dm.setup("fit")
    held = [p.name for p in dm.valid_pairs["Photos-holdout"]]
    assert held == ["astronaut.png", "rocket.png"]  # evenly spaced, first and last
    assert [p.name for p in dm.train_pairs["Photos"]] == ["chelsea.png", "coffee.png"]
    names = [p.name for p in dm.train_dataloader().dataset.pairs]
    assert names.count("0.png") == 3 and names.count("chelsea.png") == 2 and len(names) == 3 * 2 + 2 * 2
    assert next(iter(dm.val_dataloader()))["low"].shape[-2:] == (86, 86)  # the whole photo (512 / 6)
    with pytest.raises(ValueError, match="valid_data_path or valid_holdout"):
        data_module(valid_data_path="", valid_holdout=0)
    twice = data_module(
        train_data_path=[str(tmp_path / "photos"), str(tmp_path / "photos")],
        valid_data_path="",
        valid_holdout=1,
    )
    with pytest.raises(DataError, match="sub-dataset 'Photos' is also in another training folder"):
        twice.setup("fit")


def test_every_bad_photo_is_reported_at_once_and_small_ones_are_padded(tmp_path) -> None:
    """FAULTS 45: unreadable, truncated and empty files and an empty photo folder, all in one error."""
    photos = tmp_path / "train" / "Photos"
    write_photos(photos, names=("astronaut",))
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    whole = (photos / "astronaut.png").read_bytes()
    (photos / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "train" / "NoPhotos").mkdir()
    with pytest.raises(DataError) as error:
        validate_split(tmp_path / "train", require_high=True, photos=True, min_size=16)
    message = str(error.value)
    for bad in ("empty.jpg", "notes.png", "cut.png"):
        assert str(photos / bad) in message, message
    assert f"no images in photo folder {tmp_path / 'train' / 'NoPhotos'}" in message

    small = tmp_path / "ok" / "Small"
    write_photos(small, names=("coffee",), step=40)  # 10 x 15 px, under the 16 px crop
    pairs = validate_split(tmp_path / "ok", require_high=True, photos=True, min_size=16)["Small"]
    sample = PairedImageDataset(pairs, crop_size=16, augment=True)[(0, 1)]
    assert sample["low"].shape == sample["high"].shape == (3, 16, 16)


def train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_python("train.py", *args, cwd=cwd)


TINY = cli_flags(
    TINY_MODEL
    | {"image_size": 32, "batch_size": 2, "num_workers": 0, "accelerator": "cpu", "session": "frozen"}
    | {"log_every_n_steps": 1}
)


@pytest.mark.slow
def test_train_py_on_photo_folders_writes_checkpoints_and_refuses_bad_photos(tmp_path) -> None:
    write_photos(tmp_path / "photos" / "Photos", names=("astronaut", "chelsea", "coffee", "rocket"))
    write_pairs(tmp_path / "lol" / "LOL")
    none = str(tmp_path / "none")
    common = [*TINY, "--bench_data_path", none, "--infer_data_path", none, "--max_epochs", "2"]
    done = train(
        *common,
        "--train_data_path",
        f"[{tmp_path / 'photos'}, {tmp_path / 'lol'}]",
        "--valid_data_path",
        "",
        "--valid_holdout",
        "1",
        "--log_dir",
        str(tmp_path / "runs"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "illrecnet" / "version_0" / "frozen" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * 3)  # 3 photos + 2 pairs, batch 2: 3 steps
    assert "Photos has no low/ folder: 4 photos" in done.stderr
    assert "validating on 1 photos held out of the training photo folders" in done.stderr

    (tmp_path / "photos" / "Photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    refused = train(*common, "--train_data_path", str(tmp_path / "photos"), "--log_dir", str(tmp_path / "r2"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert str(tmp_path / "photos" / "Photos" / "broken.jpg") in refused.stderr
    assert not list((tmp_path / "r2").rglob("*.ckpt"))
