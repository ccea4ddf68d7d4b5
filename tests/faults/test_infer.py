"""The inference loop and infer.py: oversized and bad images, tiles, a kill half-way, the I/O
threads, a full disk and out of memory (FAULTS 21, 23, 38, 40, 41)."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import utils as data_utils
from data.utils import DataError
from engine import infer as engine_infer
from engine.bench import run_bench
from engine.enhance import Enhance
from engine.infer import collect_inputs, run_infer
from tests.faults.helpers import (
    Stub,
    bench_settings,
    enospc,
    fake_checkpoint,
    infer_main,
    local_conv,
    no_temporary_files,
    write_images,
    write_split,
)
from utils.hparams import TileHparams


def test_fault_21_infer_reports_an_oversized_image_and_goes_on(tmp_path, monkeypatch, capsys) -> None:
    folder = write_images(tmp_path / "photos", {"big.png": (40, 40), "small.png": (8, 8)})
    monkeypatch.setattr(data_utils, "MAX_IMAGE_PIXELS", 1000)
    assert infer_main(monkeypatch, tmp_path, Stub(), folder) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and "big.png" in out and "MP limit" in out
    assert (tmp_path / "out/x/inference/photos/small.png").is_file()
    assert not (tmp_path / "out/x/inference/photos/big.png").exists()


def test_fault_23_tiled_inference_matches_whole_image(tmp_path) -> None:
    folder = write_images(tmp_path / "photos", {"odd.png": (399, 601)})
    outputs = {}
    for mode, tiles in (("whole", TileHparams()), ("tiled", TileHparams(tile=160, tile_overlap=16))):
        stub = Stub(local_conv)
        run_infer(
            Enhance(stub, torch.device("cpu")),
            [("photos", folder / "odd.png")],
            tmp_path / mode,
            tiles,
            overwrite=False,
            checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
        )
        outputs[mode] = np.asarray(Image.open(tmp_path / mode / "photos" / "odd.png"), dtype=np.int16)
        assert (max(max(s) for s in stub.sizes) <= 160) == (mode == "tiled")
    assert outputs["tiled"].shape == (399, 601, 3)
    assert np.abs(outputs["tiled"] - outputs["whole"]).max() <= 1  # equal up to 8-bit rounding


def test_fault_38_infer_killed_midway_leaves_no_partial_file_and_a_rerun_completes(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "photos", {f"{i}.png": (16, 16) for i in range(3)})
    out = tmp_path / "out" / "x" / "inference" / "photos"
    calls = {"n": 0}
    real_fsync = os.fsync

    def killed_on_second_image(fd):  # fsync #1: manifest, #2: first image, #3: killed
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", killed_on_second_image)
        with pytest.raises(KeyboardInterrupt):
            infer_main(monkeypatch, tmp_path, Stub(), folder)
    assert sorted(p.name for p in out.iterdir()) == ["0.png"] and no_temporary_files(tmp_path / "out")
    (out / ".2.png.crash.tmp").write_bytes(b"\x89PNG partial")  # what a SIGKILL could leave
    assert infer_main(monkeypatch, tmp_path, Stub(), folder) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png"]
    for name in ("0.png", "1.png", "2.png"):
        with Image.open(out / name) as image:
            image.load()


class Overlap:
    """Events that show infer's threads at work: image ``i`` decoded, forward ``i`` started."""

    def __init__(self, monkeypatch, names: list[str]) -> None:
        self.names = names
        self.decoded = [threading.Event() for _ in names]
        self.forward = [threading.Event() for _ in names]
        real_decode, real_write = engine_infer.decode_image_array, engine_infer.save_png_atomic

        def decode(path):
            image = real_decode(path)
            self.decoded[names.index(Path(path).name)].set()
            return image

        def write(dst, array):  # each output is written only once the model has moved on to the next
            i = names.index(Path(dst).name)
            assert i + 1 == len(names) or self.forward[i + 1].wait(10), f"{dst.name} not written behind"
            real_write(dst, array)

        monkeypatch.setattr(engine_infer, "decode_image_array", decode)
        monkeypatch.setattr(engine_infer, "save_png_atomic", write)

    def model(self, fn=lambda i, x: 1 - x) -> Stub:
        def forward(x: torch.Tensor) -> torch.Tensor:
            i = len(stub.sizes) - 1
            self.forward[i].set()
            assert i + 1 == len(self.names) or self.decoded[i + 1].wait(10), "next image not decoded ahead"
            return fn(i, x)

        stub = Stub(forward)
        return stub


def test_infer_decodes_the_next_image_and_writes_the_last_while_the_model_runs(tmp_path, monkeypatch):
    names = [f"{i}.png" for i in range(4)]
    folder = write_images(tmp_path / "photos", {name: (8, 8) for name in names})
    overlap = Overlap(monkeypatch, names)
    inputs, out = [("photos", folder / name) for name in names], tmp_path / "inference"
    ckpt = fake_checkpoint(tmp_path / "m.ckpt")
    summary = run_infer(
        Enhance(overlap.model(), torch.device("cpu")), inputs, out, TileHparams(), False, ckpt
    )
    assert [p.name for p in summary.enhanced] == names and not summary.failed
    assert sorted(json.loads((out / "manifest.json").read_text())["outputs"]) == [
        f"photos/{n}" for n in names
    ]
    for name in names:
        low = np.asarray(Image.open(folder / name), dtype=np.int16)
        assert np.abs(np.asarray(Image.open(out / "photos" / name), dtype=np.int16) - (255 - low)).max() <= 1


def test_infer_stopped_while_an_output_is_written_finishes_and_records_it(tmp_path, monkeypatch):
    """Ctrl-C in the model of image 1 while image 0's output is still being written: the write
    completes, is recorded, and the next run skips it and does the rest."""
    names = [f"{i}.png" for i in range(3)]
    folder = write_images(tmp_path / "photos", {name: (8, 8) for name in names})
    overlap = Overlap(monkeypatch, names)

    def stopped_at_image_1(i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 1:
            raise KeyboardInterrupt
        return 1 - x

    inputs, out = [("photos", folder / name) for name in names], tmp_path / "inference"
    ckpt, cpu = fake_checkpoint(tmp_path / "m.ckpt"), torch.device("cpu")
    with pytest.raises(KeyboardInterrupt):
        run_infer(Enhance(overlap.model(stopped_at_image_1), cpu), inputs, out, TileHparams(), False, ckpt)
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["0.png"] and no_temporary_files(out)
    assert list(json.loads((out / "manifest.json").read_text())["outputs"]) == ["photos/0.png"]
    monkeypatch.undo()
    summary = run_infer(Enhance(Stub(lambda x: 1 - x), cpu), inputs, out, TileHparams(), False, ckpt)
    assert [p.name for p in summary.skipped] == ["0.png"] and [p.name for p in summary.enhanced] == names[1:]


def test_infer_ignores_a_partial_high_folder(tmp_path) -> None:
    """high/ is unused by inference (README), so a partial one must not stop it: infer.py and the
    closing inference of train.py (both through collect_inputs) enhance every low image, while
    bench.py, which scores against high/, still pairs strictly."""
    split = write_split(tmp_path / "4_infer", {"a.png": (8, 8), "b.png": (8, 8)})
    (split / "Tiny/high/b.png").unlink()
    expected = [("Tiny", split / "Tiny/low/a.png"), ("Tiny", split / "Tiny/low/b.png")]
    assert collect_inputs(str(split), None) == expected
    with pytest.raises(DataError, match="1 low image"):
        run_bench(Enhance(Stub(), torch.device("cpu")), bench_settings(tmp_path, split), tmp_path / "bench")


def test_fault_40_disk_full_while_writing_outputs(tmp_path, monkeypatch, capsys) -> None:
    folder = write_images(tmp_path / "photos", {"a.png": (8, 8), "b.png": (8, 8)})
    real_write = data_utils.atomic_write_bytes  # what the PNG writer uses

    def full_disk_for_images(path, data):
        if Path(path).suffix != ".png":
            return real_write(path, data)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", enospc)  # the bytes are in the temporary file when the disk fills
            return real_write(path, data)

    monkeypatch.setattr(data_utils, "atomic_write_bytes", full_disk_for_images)
    assert infer_main(monkeypatch, tmp_path, Stub(), folder) == 1
    out = capsys.readouterr().out
    target = tmp_path / "out/x/inference/photos"
    assert "failed 2" in out and f"cannot write {target / 'a.png'}: No space left on device" in out
    assert sorted(p.name for p in target.parent.rglob("*") if p.is_file()) == ["manifest.json"]


def test_fault_41_out_of_memory_retries_smaller_tiles_then_fails_the_image(
    tmp_path, monkeypatch, capsys, caplog
):
    folder = write_images(tmp_path / "photos", {"big.png": (300, 300), "small.png": (8, 8)})

    def fragile(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] > 200 * 200:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return local_conv(x)

    caplog.set_level(logging.INFO)
    assert infer_main(monkeypatch, tmp_path, Stub(fragile), folder) == 0
    assert "retrying with 150px tiles" in caplog.text and "after running out of memory" in caplog.text
    with Image.open(tmp_path / "out/x/inference/photos/big.png") as image:
        assert image.size == (300, 300)

    def hopeless(x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return x

    capsys.readouterr()
    assert infer_main(monkeypatch, tmp_path, Stub(hopeless), folder, overwrite=True) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and "big.png" in out and "--tile" in out
    assert not (tmp_path / "out/x/inference/photos/big.png").exists()  # not even the first run's
