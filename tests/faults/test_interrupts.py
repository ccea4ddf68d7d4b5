"""Training stopped by SIGKILL, SIGINT or SIGTERM (FAULTS 29-30): what it saves, the resume
command it prints, and a resume that ends where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from data.dataloader import PairedImageDataset
from engine.runner import TrainingInterrupted, resume_command
from tests.faults.helpers import (
    cli,
    fresh_run,
    run_printed_resume,
    run_script,
    same_weights,
    scalar_tags,
    session_dir,
    start_script,
    state,
    train_hparams,
    wait_for_file,
)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_fault_29_sigkill_then_resume_matches_an_uninterrupted_run(
    data, tmp_path: Path, request, workers
) -> None:
    """With loader workers too: crops and flips come from (seed, epoch, sample), not worker state."""
    hp = train_hparams(data, tmp_path, max_epochs=4, session="both", num_workers=workers)
    # The uninterrupted run and the same run killed with SIGKILL once the second epoch's last.ckpt
    # exists, side by side.
    straight = start_script("train.py", *cli(hp, experiment_name="straight"), log=tmp_path / "straight.log")
    request.addfinalizer(straight.kill)
    args = cli(hp, experiment_name="killed")
    process = start_script("train.py", *args, log=tmp_path / "killed.log")
    last = session_dir(tmp_path, experiment="killed") / "checkpoints" / "last.ckpt"
    seen, saved = None, None
    try:
        while saved is None or saved["epoch"] < 1:
            assert process.poll() is None, "train.py finished before it could be killed"
            if last.is_file() and last.stat().st_mtime_ns != seen:
                seen = last.stat().st_mtime_ns
                saved = state(last)
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    assert not (last.parent.parent / "result.json").exists()
    saved = state(last)  # the checkpoint the resume starts from (the kill may land an epoch later)
    assert saved["global_step"] >= 4
    exp_avg = [s["exp_avg"] for s in saved["optimizer_states"][0]["state"].values()]
    assert exp_avg and any(t.abs().sum() > 0 for t in exp_avg)

    resumed = run_script("train.py", *args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    assert (
        f"resuming from {last} (epoch {saved['epoch']}, global step {saved['global_step']}; after "
        in resumed.stderr
    )
    assert not (tmp_path / "killed" / "version_1").exists()  # continued in place, no new run
    for session in ("frozen", "trainable"):
        a = state(session_dir(tmp_path, session, "straight") / "checkpoints" / "last.ckpt")
        b = state(session_dir(tmp_path, session, "killed") / "checkpoints" / "last.ckpt")
        assert a["global_step"] == b["global_step"] == 4 * 2 and a["epoch"] == b["epoch"] == 3
        assert a["loops"] == b["loops"], session
        assert same_weights(a["state_dict"], b["state_dict"]), session
        assert a["lr_schedulers"] == b["lr_schedulers"]
        assert a["optimizer_states"][0]["param_groups"] == b["optimizer_states"][0]["param_groups"]  # LR
        moments_a, moments_b = (c["optimizer_states"][0]["state"] for c in (a, b))
        assert moments_a.keys() == moments_b.keys()
        for key in moments_a:
            assert torch.equal(moments_a[key]["exp_avg"], moments_b[key]["exp_avg"])
            assert torch.equal(moments_a[key]["exp_avg_sq"], moments_b[key]["exp_avg_sq"])
        result = json.loads((session_dir(tmp_path, session, "killed") / "result.json").read_text())
        assert result["epochs"] == 4 and result["global_step"] == 8


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_fault_30_sigint_sigterm_save_flush_and_print_the_resume_command(
    data, tmp_path: Path, signum: int, code: int
) -> None:
    hp = train_hparams(data, tmp_path, max_epochs=3)
    process = start_script("train.py", *cli(hp), log=tmp_path / "train.log")
    ckpt_dir = session_dir(tmp_path) / "checkpoints"
    try:
        wait_for_file(process, ckpt_dir / "last.ckpt", tmp_path / "train.log")
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        process.kill()
    stderr = (tmp_path / "train.log").read_text()
    assert process.returncode == code, stderr[-3000:]
    interrupted = ckpt_dir / "interrupted.ckpt"
    assert f"checkpoint saved: {interrupted}" in stderr
    assert state(interrupted)["global_step"] >= 2
    assert {"train/3_total_step", "valid/3_total"} <= scalar_tags(ckpt_dir.parent)  # flushed on the way out
    assert not (ckpt_dir.parent / "result.json").exists()
    command, resumed = run_printed_resume(stderr)
    assert command.startswith("python ") and command.endswith("--resume true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "session frozen: resuming from" in resumed.stderr
    result = json.loads((ckpt_dir.parent / "result.json").read_text())
    assert result["epochs"] == 3 and result["global_step"] == 3 * 2
    assert not interrupted.exists()  # a finished session removes it


@pytest.mark.slow
def test_fault_30_sigterm_to_the_whole_process_group_with_loader_workers(data, tmp_path: Path) -> None:
    """``timeout``, SLURM's preemption and ``kill -TERM -<pgid>`` signal every process of the job, so
    the loader workers die with the trainer and their death can surface first (a RuntimeError from
    the loader). That is still a SIGTERM stop: exit code 143, the stop message and the resume command,
    and the resume finishes the session."""
    hp = train_hparams(data, tmp_path, max_epochs=3, num_workers=2)
    process = start_script("train.py", *cli(hp, num_workers=2), log=tmp_path / "train.log", new_group=True)
    ckpt_dir = session_dir(tmp_path) / "checkpoints"
    try:
        wait_for_file(process, ckpt_dir / "last.ckpt", tmp_path / "train.log")
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stderr = (tmp_path / "train.log").read_text()
    assert process.returncode == 143, stderr[-3000:]
    assert "training stopped by SIGTERM in session frozen" in stderr
    _, resumed = run_printed_resume(stderr)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((ckpt_dir.parent / "result.json").read_text())
    assert result["epochs"] == 3 and result["global_step"] == 3 * 2


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fault_30_stop_inside_an_epoch_resumes_the_rest_of_that_epoch(
    data, tmp_path: Path, monkeypatch, signum: int
) -> None:
    """A SIGTERM or Ctrl-C in the middle of an epoch: the resumed run trains on the batches that epoch
    had left, in order (not the first ones of the epoch again), and ends with the weights and optimizer
    moments of an uninterrupted run. (Ctrl-C stops after the batch's step but before Lightning counts
    it completed: resuming from the completed count trained that batch twice and skipped the last.)"""
    hp = dict(max_epochs=2, train_repeat=3)  # 12 samples, 6 steps of batch 2 per epoch
    served: list[tuple[int, int]] = []  # training samples in the order the loader asks for them
    kill_at = [None]
    original = PairedImageDataset.__getitem__

    def getitem(self, item):
        if isinstance(item, tuple):  # (index, seed) from the training sampler
            served.append(item)
            if len(served) == kill_at[0]:
                os.kill(os.getpid(), signum)
        return original(self, item)

    monkeypatch.setattr(PairedImageDataset, "__getitem__", getitem)
    fresh_run(monkeypatch, train_hparams(data, tmp_path / "straight", **hp))
    second_epoch = served[12:24]
    assert len(served) == 24

    served.clear()
    kill_at[0] = 12 + 6  # epoch 1, batch 3 (the loader is one batch ahead of training)
    stopped = train_hparams(data, tmp_path / "stopped", **hp)
    with pytest.raises(TrainingInterrupted, match="SIGTERM" if signum == signal.SIGTERM else "SIGINT"):
        fresh_run(monkeypatch, stopped)
    ckpt_dir = session_dir(tmp_path / "stopped") / "checkpoints"
    interrupted = state(ckpt_dir / "interrupted.ckpt")
    done = interrupted["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert interrupted["epoch"] == 1 and 1 <= done <= 4, (interrupted["epoch"], done)

    served.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh_run(monkeypatch, dataclasses.replace(stopped, resume=True))
    assert served == second_epoch[2 * done :]  # the rest of the epoch, in order, and nothing else
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]  # no false alarm
    a = state(session_dir(tmp_path / "straight") / "checkpoints" / "last.ckpt")
    b = state(ckpt_dir / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    assert same_weights(a["state_dict"], b["state_dict"])
    moments_a, moments_b = (c["optimizer_states"][0]["state"] for c in (a, b))
    for key in moments_a:
        assert torch.equal(moments_a[key]["exp_avg_sq"], moments_b[key]["exp_avg_sq"])


def test_resume_command_drops_resume_and_checkpoint_flags() -> None:
    argv = [
        "train.py",
        "--config",
        "my cfg.yaml",
        "--resume",
        "false",
        "--checkpoint_path=a.ckpt",
        "--lr",
        "1",
    ]
    assert resume_command(argv) == "python train.py --config 'my cfg.yaml' --lr 1 --resume true"
    assert resume_command(["train.py"], checkpoint_in_config=True).endswith(
        "--checkpoint_path '' --resume true"
    )
