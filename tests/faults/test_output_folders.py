"""Output folders that already hold results (FAULTS 39): a new run folder per run, a failed run's
empty folder removed, and inference outputs never mixed across checkpoints or source files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from data.utils import DataError
from engine.enhance import Enhance
from engine.infer import collect_inputs, run_infer
from engine.run_dirs import discard_if_unused, new_run_dir
from tests.faults.helpers import (
    Stub,
    fake_checkpoint,
    write_images,
)
from utils.hparams import TileHparams


def test_failed_run_folder_removed_only_when_it_holds_nothing_but_events(tmp_path) -> None:
    empty = new_run_dir(tmp_path / "exp")
    (empty / "events.out.tfevents.1.host").write_bytes(b"x")
    assert discard_if_unused(empty) and not empty.exists()
    partial = new_run_dir(tmp_path / "exp")
    (partial / "events.out.tfevents.2.host").write_bytes(b"x")
    (partial / "images").mkdir()
    (partial / "images" / "a.png").write_bytes(b"png")
    assert not discard_if_unused(partial) and (partial / "images" / "a.png").read_bytes() == b"png"
    linked = new_run_dir(tmp_path / "exp")  # a link is kept, and never followed
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "events.out.tfevents.3.host").write_bytes(b"x")
    (linked / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert not discard_if_unused(linked) and (tmp_path / "outside" / "events.out.tfevents.3.host").exists()


def test_fault_39_runs_never_share_output_folders(tmp_path) -> None:
    experiment = tmp_path / "exp"
    first, second = new_run_dir(experiment), new_run_dir(experiment)
    (experiment / "version_7").mkdir()
    assert (first.name, second.name, new_run_dir(experiment).name) == ("version_0", "version_1", "version_8")
    folder = write_images(tmp_path / "photos", {"a.png": (8, 8)})
    inputs, out, cpu = [("photos", folder / "a.png")], tmp_path / "inference", torch.device("cpu")
    run_infer(
        Enhance(Stub(), cpu), inputs, out, TileHparams(), False, fake_checkpoint(tmp_path / "a.ckpt", b"A")
    )
    other = fake_checkpoint(tmp_path / "b.ckpt", b"B")
    with pytest.raises(DataError, match="holds outputs of another checkpoint.*--overwrite"):
        run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), False, other)
    summary = run_infer(Enhance(Stub(lambda x: 1 - x), cpu), inputs, out, TileHparams(), True, other)
    assert len(summary.enhanced) == 1
    assert json.loads((out / "manifest.json").read_text())["checkpoint_path"] == other


def test_fault_39_interrupted_overwrite_never_leaves_the_other_checkpoints_outputs(tmp_path) -> None:
    folder = write_images(tmp_path / "photos", {f"{i}.png": (8, 8) for i in range(3)})
    inputs, out, cpu = (
        [("photos", p) for p in sorted(folder.iterdir())],
        tmp_path / "inference",
        torch.device("cpu"),
    )
    a, b = fake_checkpoint(tmp_path / "a.ckpt", b"A"), fake_checkpoint(tmp_path / "b.ckpt", b"B")
    run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), False, a)

    def killed_after_one(x: torch.Tensor) -> torch.Tensor:
        if len(stub.sizes) == 2:
            raise KeyboardInterrupt
        return 1 - x

    stub = Stub(killed_after_one)
    with pytest.raises(KeyboardInterrupt):  # B with --overwrite, stopped after its first image
        run_infer(Enhance(stub, cpu), inputs, out, TileHparams(), True, b)
    summary = run_infer(Enhance(Stub(lambda x: 1 - x), cpu), inputs, out, TileHparams(), False, b)
    assert [p.name for p in summary.skipped] == ["0.png"]  # B's own finished output
    assert [p.name for p in summary.enhanced] == ["1.png", "2.png"]  # still A's: redone, not skipped
    for name in ("0.png", "1.png", "2.png"):
        low = np.asarray(Image.open(folder / name), dtype=np.int16)
        assert np.abs(np.asarray(Image.open(out / "photos" / name), dtype=np.int16) - (255 - low)).max() <= 1


def test_fault_39_same_named_input_folders_never_share_outputs(tmp_path) -> None:
    cpu, ckpt = torch.device("cpu"), fake_checkpoint(tmp_path / "m.ckpt")
    for name, value in (("DICM", 50), ("LIME", 200)):
        (tmp_path / name / "low").mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name / "low" / "1.png")
    out = tmp_path / "inference"
    for name in ("DICM", "LIME"):  # --input X/low names the outputs after X, not "low"
        run_infer(
            Enhance(Stub(), cpu),
            collect_inputs("unused", str(tmp_path / name / "low")),
            out,
            TileHparams(),
            False,
            ckpt,
        )
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 50
    assert np.asarray(Image.open(out / "LIME/1.png"))[0, 0, 0] == 200
    # --input of a sub-dataset folder (it holds low/) enhances its low/ images
    assert collect_inputs("unused", str(tmp_path / "DICM")) == [("DICM", tmp_path / "DICM/low/1.png")]
    # A later folder of the same name: refused (it would replace these outputs), replaced with --overwrite
    (tmp_path / "other/DICM").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "other/DICM/1.png")
    inputs = collect_inputs("unused", str(tmp_path / "other/DICM"))
    with pytest.raises(
        DataError, match=r"made from other files of the same name: .*DICM/1\.png.*--overwrite"
    ):
        run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), False, ckpt)
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 50
    assert len(run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), True, ckpt).enhanced) == 1
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 99


def test_atomic_writes_get_the_permissions_a_plain_write_gets(tmp_path) -> None:
    """Outputs and reports written atomically are as readable as any file the user's
    umask allows (a shared GPU box: colleagues read the results), not private like a temporary file."""
    import stat

    from data.utils import save_png_atomic
    from utils.utils import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "report.json", "{}")
    save_png_atomic(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8))
    for written in ("report.json", "out.png"):
        assert stat.S_IMODE((tmp_path / written).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
