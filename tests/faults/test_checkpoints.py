"""Checkpoints to resume or start from: truncated, missing, of another architecture or model, a
full disk while saving, the RNG states they carry (FAULTS 31-34, 42)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch

import train
import valid
from engine.callbacks import RngState
from engine.run_dirs import RUN_DIR_ENV, resolve_run_dir
from engine.runner import run_training
from model.model import CheckpointError, LowLightEnhancerLightning, load_checkpoint
from tests.conftest import tiny_model
from tests.faults.helpers import (
    cli,
    crashed_copy,
    enospc,
    fresh_run,
    run_script,
    session_dir,
    state,
    train_hparams,
)
from utils.utils import run_main


@pytest.mark.slow
def test_fault_32_truncated_last_ckpt_fails_naming_it_and_the_others(data, finished_run, tmp_path) -> None:
    log_dir = crashed_copy(finished_run, tmp_path)
    last = session_dir(log_dir) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = sorted(p.name for p in session_dir(log_dir).rglob("*"))
    proc = run_script("train.py", *cli(train_hparams(data, log_dir, max_epochs=2)), "--resume", "true")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"cannot read checkpoint {last}" in proc.stderr and "best.ckpt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in session_dir(log_dir).rglob("*")) == before  # no silent fresh start


def test_fault_33_resume_without_checkpoint_warns_and_starts_fresh(
    data, tmp_path, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="illrecnet")
    run_dir, results = fresh_run(monkeypatch, train_hparams(data, tmp_path, resume=True))
    assert run_dir == tmp_path / "tiny" / "version_0" and results[0].global_step == 2
    assert "no earlier run" in caplog.text and "resuming from" not in caplog.text


def test_fault_33_resume_passes_over_newer_runs_without_checkpoints(finished_run, tmp_path, caplog) -> None:
    log_dir = crashed_copy(finished_run, tmp_path)
    (log_dir / "tiny" / "version_1" / "frozen").mkdir(parents=True)  # a later run that failed on bad data
    caplog.set_level(logging.INFO, logger="illrecnet")
    assert resolve_run_dir(log_dir / "tiny", resume=True) == log_dir / "tiny" / "version_0"
    assert "version_1 holds no checkpoint" in caplog.text


def test_trainable_session_run_later_starts_from_the_frozen_best(
    data, finished_run, tmp_path, caplog
) -> None:
    """``--session frozen`` then ``--session trainable --resume true``: the trainable session starts
    from the frozen session's best checkpoint, as with ``--session both`` (README)."""
    log_dir = tmp_path / "runs"
    shutil.copytree(finished_run, log_dir)
    best = json.loads((session_dir(log_dir) / "result.json").read_text())["best_checkpoint"]
    caplog.set_level(logging.INFO, logger="illrecnet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUN_DIR_ENV, "")
        run_dir, results = run_training(train_hparams(data, log_dir, session="trainable", resume=True))
    assert run_dir == log_dir / "tiny" / "version_0" and [r.session for r in results] == ["trainable"]
    assert f"session trainable starts from the weights of {best}" in caplog.text
    caplog.clear()  # a fresh run folder has no frozen session: random weights, and a warning says so
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUN_DIR_ENV, "")
        run_training(train_hparams(data, tmp_path / "fresh", session="trainable"))
    assert "session trainable starts from random weights" in caplog.text


@pytest.mark.slow
def test_fault_33_explicit_checkpoint_that_does_not_exist_is_an_error(data, tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "last.ckpt"
    hp = train_hparams(data, tmp_path)
    proc = run_script("train.py", *cli(hp), "--checkpoint_path", str(missing), "--resume", "true")
    assert proc.returncode == 2 and f"checkpoint not found: {missing}" in proc.stderr, proc.stderr[-2000:]
    with pytest.raises(SystemExit) as exit_info:  # without --resume (initialise from it): the same
        run_main(train.main, train_hparams(data, tmp_path, checkpoint_path=str(missing)))
    assert exit_info.value.code == 2 and f"checkpoint not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


def test_rng_state_round_trip_survives_a_weights_only_checkpoint(tmp_path) -> None:
    saver = RngState()
    torch.save({"rng": saver.state_dict()}, tmp_path / "rng.ckpt")
    first = (random.random(), np.random.rand(), torch.rand(2))
    RngState().load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_explicit_checkpoint_resumes_or_initialises(
    data, finished_run, tmp_path, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="illrecnet")
    best = session_dir(finished_run) / "checkpoints" / "best.ckpt"
    _, results = fresh_run(
        monkeypatch, train_hparams(data, tmp_path, max_epochs=3, checkpoint_path=str(best))
    )
    assert "starts from the weights of" in caplog.text and results[0].global_step == 3 * 2  # a new run
    assert json.loads((session_dir(tmp_path) / "init.json").read_text())["checkpoint_path"] == str(best)
    caplog.clear()
    last = session_dir(finished_run) / "checkpoints" / "last.ckpt"
    hp = train_hparams(
        data, tmp_path, max_epochs=3, checkpoint_path=str(last), resume=True, experiment_name="r"
    )
    _, results = fresh_run(monkeypatch, hp)
    assert f"resuming from {last} (epoch 1, global step 4; after 2 finished epochs)" in caplog.text
    assert results[0].global_step == 3 * 2  # continued: one more epoch


def test_fault_34_resume_with_another_architecture_lists_the_mismatch(
    data, finished_run, tmp_path, monkeypatch
):
    log_dir = crashed_copy(finished_run, tmp_path)
    with pytest.raises(CheckpointError) as info:
        fresh_run(monkeypatch, train_hparams(data, log_dir, max_epochs=2, resume=True, embed_dim=16))
    message = str(info.value)
    assert "last.ckpt" in message and "embed_dim: checkpoint 8 vs this run 16" in message
    assert "mismatched shapes [" in message and "model." in message
    assert "other checkpoints in" in message and "best.ckpt" in message


def test_fault_42_checkpoint_of_another_model_names_the_keys(tmp_path, monkeypatch, capsys) -> None:
    module = LowLightEnhancerLightning(tiny_model())
    weights = module.state_dict()
    renamed = {k.replace("model.", "net.", 1): v for k, v in list(weights.items())[:3]}
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": renamed, "hyper_parameters": dict(module.hparams)}, foreign)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(foreign)
    message = str(info.value)
    assert (
        str(foreign) in message and "missing keys [model." in message and "unexpected keys [net." in message
    )
    plain = tmp_path / "plain.pth"
    torch.save(weights, plain)  # a bare state dict: no hyper-parameters to rebuild the model from
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint of IllRecNet"):
        load_checkpoint(plain)
    # valid.py (bench.py and infer.py load the same way): one line, exit status 2.
    with pytest.raises(SystemExit) as exit_info:
        run_main(valid.main, valid.ValidHparams(checkpoint_path=str(foreign), accelerator="cpu"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unexpected keys [net." in err


def test_fault_31_full_disk_while_saving_a_checkpoint(
    data, finished_run, tmp_path, monkeypatch, capsys
) -> None:
    log_dir = crashed_copy(finished_run, tmp_path)
    ckpt_dir = session_dir(log_dir) / "checkpoints"
    before = {name: (ckpt_dir / name).read_bytes() for name in ("best.ckpt", "last.ckpt")}
    hp = train_hparams(data, log_dir, max_epochs=3, resume=True)
    for target, attribute in ((torch, "save"), (os, "fsync")):  # the serialiser, then the file write
        with monkeypatch.context() as patch:
            patch.setattr(target, attribute, enospc)
            patch.setenv(RUN_DIR_ENV, "")
            with pytest.raises(SystemExit) as exit_info:
                run_main(train.main, hp)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and f"cannot write {ckpt_dir}" in err, err
        assert {name: (ckpt_dir / name).read_bytes() for name in before} == before
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]  # no partial file
        assert not (ckpt_dir.parent / "result.json").exists()
    assert state(ckpt_dir / "last.ckpt")["global_step"] == 4  # intact and loadable
    load_checkpoint(ckpt_dir / "last.ckpt")
