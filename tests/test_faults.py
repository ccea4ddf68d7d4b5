"""Faults during training, bench and inference: interruptions, bad checkpoints, non-finite steps, full
disks, out of memory and bad input at the scripts' level.

Tests named ``test_fault_NN_*`` cover row NN of ../shared/FAULTS.md (rows 1-20, 24-26 and the data
side of 21-22 are in ``test_data.py``; metric values of 27-28 in ``test_metrics.py``; tiling in
``test_tiling.py``). Everything runs on CPU with an 8-channel model on 32-48 px images.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import bench
import infer
import train
import valid
from data import utils as data_utils
from data.dataloader import LowLightDataModule, PairedImageDataset
from data.utils import DataError
from engine import predict
from engine.engine import EngineError, LightningEngine, RngState
from engine.predict import BenchError, Enhance, run_bench, run_infer
from engine.runner import (
    RUN_DIR_ENV,
    TrainingInterrupted,
    discard_if_unused,
    new_run_dir,
    resolve_run_dir,
    resume_command,
    run_training,
)
from model.model import (
    CheckpointError,
    LowLightEnhancerLightning,
    NonFiniteError,
    load_checkpoint,
)
from utils import utils as utils_module
from utils.hparams import TileHparams
from utils.metrics import PSNR_IDENTICAL_DB
from utils.utils import run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 8, "num_heads": 1, "image_size": 32, "batch_size": 2, "num_workers": 0}
CPU = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "deterministic": True}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def write_split(
    split: Path, sizes: dict[str, tuple[int, int]], seed: int = 0, with_high: bool = True
) -> Path:
    """One sub-dataset ``Tiny`` with a pair per ``name: (H, W)``; high is a brighter copy of low."""
    rng = np.random.default_rng(seed)
    for name, (height, width) in sizes.items():
        high = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for side, image in (("low", high // 5), ("high", high)):
            if side == "high" and not with_high:
                continue
            (split / "Tiny" / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(split / "Tiny" / side / name)
    return split


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Train: 4 pairs of 32x40 (2 steps per epoch at batch 2). Valid: 1 pair of 32x48."""
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_split(root / "1_train", {f"t{i}.png": (32, 40) for i in range(4)}),
        "valid": write_split(root / "2_valid", {"v0.png": (32, 48)}, seed=1),
        "none": root / "none",
    }


def train_hparams(data: dict[str, Path], log_dir: Path, **overrides) -> train.TrainHparams:
    values = {
        **TINY,
        **CPU,
        "train_data_path": str(data["train"]),
        "valid_data_path": str(data["valid"]),
        "max_epochs": 1,
        "session": "frozen",
        "log_dir": str(log_dir),
        "experiment_name": "tiny",
        "log_every_n_steps": 1,
        "num_log_images": 1,
        "bench_data_path": str(data["none"]),
        "infer_data_path": str(data["none"]),
    }
    return train.TrainHparams(**{**values, **overrides})


def cli(hp: train.TrainHparams, **overrides) -> list[str]:
    """``train.py`` flags reproducing ``hp`` (the fields the tests change)."""
    keys = [*TINY, *CPU, "train_data_path", "valid_data_path", "max_epochs", "session", "log_dir"]
    keys += ["experiment_name", "log_every_n_steps", "num_log_images", "bench_data_path", "infer_data_path"]
    values = {k: getattr(hp, k) for k in keys} | overrides
    return [
        arg
        for k, v in values.items()
        for arg in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))
    ]


def script_env() -> dict[str, str]:
    """The environment of a fresh shell: no run folder or seed inherited from in-process runs, one
    thread per script (two scripts may run side by side on the two CI cores)."""
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV and not k.startswith("PL_")}
    return {**env, "ILLRECNET_IQA_DOWNLOAD": "0", "OMP_NUM_THREADS": "1"}


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=script_env(),
    )


def start_script(script: str, *args: str, log: Path, new_group: bool = False) -> subprocess.Popen:
    """Start a script in the background, its stdout and stderr going to ``log`` (a pipe nobody reads
    while the test polls could fill up with progress bars and block the script); ``new_group``: in a
    process group of its own (its pid is the group id), for signals sent to the whole group."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / script), *args],
            cwd=ROOT,
            env=script_env(),
            stdout=out,
            stderr=out,
            start_new_session=new_group,
        )


def wait_for_file(process: subprocess.Popen, path: Path, log: Path) -> None:
    """Poll until ``path`` exists; fail with the end of ``log`` if the process ends first."""
    while not path.is_file():
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.02)


def run_printed_resume(stderr: str) -> tuple[str, subprocess.CompletedProcess]:
    """The resume command that an interrupted ``train.py`` printed, and the result of running it."""
    command = stderr.split("resume with:\n", 1)[1].strip().splitlines()[0]
    resumed = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=script_env(),
    )
    return command, resumed


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    """Each in-process run gets its own run folder (the runner shares it with DDP workers through an
    environment variable), the project logger propagates to caplog, and the global determinism switch
    that Lightning sets is restored."""
    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.setattr(utils_module, "setup_logging", lambda: None)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def fresh_run(monkeypatch, hp: train.TrainHparams):
    """``run_training`` as a new invocation of train.py would do it."""
    monkeypatch.setenv(RUN_DIR_ENV, "")
    return run_training(hp)


def session_dir(log_dir: Path, session: str = "frozen", experiment: str = "tiny", version: int = 0) -> Path:
    return log_dir / experiment / f"version_{version}" / session


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def scalar_tags(folder: Path) -> set[str]:
    tags: set[str] = set()
    for event_file in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


class Stub(torch.nn.Module):
    """A stand-in network for bench/infer: ``fn(x)``, recording the input sizes it saw."""

    def __init__(self, fn=lambda x: x) -> None:
        super().__init__()
        self.fn = fn
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.fn(x)


def local_conv(x: torch.Tensor) -> torch.Tensor:
    """Two 3x3 box filters (receptive-field radius 2), then brighten: a local stand-in network."""
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    y = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3
    )
    y = torch.nn.functional.conv2d(
        torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate"), kernel, groups=3
    )
    return 3 * y


def fake_checkpoint(path: Path, content: bytes = b"stub") -> str:
    """A file whose sha256 identifies 'the checkpoint' of a stub model in bench/infer manifests."""
    path.write_bytes(content)
    return str(path)


def infer_main(monkeypatch, tmp_path: Path, model: torch.nn.Module, folder: Path, **overrides) -> int:
    """``infer.py`` in-process with ``model`` standing in for the checkpoint's; returns the exit status."""
    monkeypatch.setattr("model.model.load_checkpoint", lambda path, map_location="cpu": model)
    hp = infer.InferHparams(
        checkpoint_path=fake_checkpoint(tmp_path / "stub.ckpt"),
        input=str(folder),
        accelerator="cpu",
        log_dir=str(tmp_path / "out"),
        experiment_name="x",
        **overrides,
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer.main, hp)
        raise SystemExit(0)
    return exit_info.value.code


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------------------------------
# Resume after a crash, signals, checkpoints (FAULTS 29-34, 42)
# --------------------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    """A finished 2-epoch frozen session (log_dir); tests copy it before changing anything."""
    log_dir = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUN_DIR_ENV, "")
        deterministic = torch.are_deterministic_algorithms_enabled()
        run_training(train_hparams(data, log_dir, max_epochs=2))
        torch.use_deterministic_algorithms(deterministic)
    return log_dir


def crashed_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that looks killed before the end (no result.json)."""
    log_dir = tmp_path / "runs"
    shutil.copytree(finished_run, log_dir)
    (session_dir(log_dir) / "result.json").unlink()
    return log_dir


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


def test_closing_bench_and_inference_run_in_fp32_whatever_the_training_precision(
    data, finished_run, tmp_path, monkeypatch
) -> None:
    """train.py's closing table must be the one bench.py (fp32 by default) prints for the checkpoint."""
    from engine import engine as engine_module
    from engine.runner import evaluate_run

    precisions = []

    class Recording(Enhance):
        def __init__(self, model, device, self_ensemble=False, precision="32-true") -> None:
            precisions.append(precision)
            super().__init__(model, device, self_ensemble, precision)

    monkeypatch.setattr(engine_module, "Enhance", Recording)
    best = json.loads((session_dir(finished_run) / "result.json").read_text())["best_checkpoint"]
    split = str(data["valid"])  # a split with ground truth serves as bench and infer split
    hp = train_hparams(data, tmp_path, precision="bf16-mixed", bench_data_path=split, infer_data_path=split)
    text = evaluate_run(hp, tmp_path / "run", best)
    assert "| images | PSNR |" in text and precisions == ["32-true", "32-true"]


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
    module = LowLightEnhancerLightning(embed_dim=8, num_heads=1)
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


# --------------------------------------------------------------------------------------------------
# Non-finite steps, seeds, train-side bad data (FAULTS 8, 35-37)
# --------------------------------------------------------------------------------------------------


def nan_images(monkeypatch, names: tuple[str, ...] = ("t0.png", "t1.png", "t2.png", "t3.png")) -> None:
    """Training images ``names`` load as NaN (a fixture for a NaN input batch)."""
    from torchvision import tv_tensors

    from data.dataloader import PairedImageDataset

    real = PairedImageDataset._image

    def load(self, path):
        image = real(self, path)
        if Path(path).name in names:
            return tv_tensors.Image(torch.full(image.shape, float("nan")))
        return image

    monkeypatch.setattr(PairedImageDataset, "_image", load)


def nan_gradients(monkeypatch) -> None:
    """A hook that turns one parameter's gradient into NaN while the loss stays finite."""
    from engine import runner

    real = runner.build_module

    def build(hp, session):
        module = real(hp, session)
        next(p for p in module.parameters() if p.requires_grad).register_hook(
            lambda g: torch.full_like(g, torch.nan)
        )
        return module

    monkeypatch.setattr(runner, "build_module", build)


@pytest.mark.parametrize(
    ("poison", "what"), [(nan_images, "training loss"), (nan_gradients, "gradient norm")]
)
def test_fault_35_36_non_finite_step_stops_naming_step_and_files(
    data, finished_run, tmp_path, monkeypatch, poison, what
) -> None:
    log_dir = crashed_copy(finished_run, tmp_path)
    ckpt_dir = session_dir(log_dir) / "checkpoints"
    best, last = (ckpt_dir / "best.ckpt").read_bytes(), (ckpt_dir / "last.ckpt").read_bytes()
    poison(monkeypatch)
    with pytest.raises(NonFiniteError) as info:
        fresh_run(monkeypatch, train_hparams(data, log_dir, max_epochs=3, resume=True))
    message = str(info.value)
    assert (
        f"non-finite {what}" in message
        and "at global step 4," in message
        and "--skip_nonfinite true" in message
    )
    low = data["train"] / "Tiny" / "low"
    assert re.search(rf"batch files: \['{low}/t\d\.png', '{low}/t\d\.png'\]", message), message
    assert (ckpt_dir / "best.ckpt").read_bytes() == best and (ckpt_dir / "last.ckpt").read_bytes() == last


def test_non_finite_loss_on_another_rank_stops_this_one_too(monkeypatch) -> None:
    """Under DDP a rank that raised alone would leave the others blocked in the gradient all-reduce
    until the process group times out: the decision is reduced over ranks (any non-finite loss)."""
    from types import SimpleNamespace

    decisions = []

    def any_rank(decision: bool, all: bool = True) -> bool:  # noqa: A002 (Lightning's argument name)
        decisions.append((decision, all))
        return True  # another rank saw a non-finite loss

    module = LowLightEnhancerLightning(embed_dim=8, num_heads=1)
    strategy = SimpleNamespace(reduce_boolean_decision=any_rank)
    monkeypatch.setattr(module, "_trainer", SimpleNamespace(strategy=strategy, global_step=7), raising=False)
    batch = {"low": torch.rand(1, 3, 16, 16), "high": torch.rand(1, 3, 16, 16)}
    with pytest.raises(NonFiniteError, match="non-finite training loss on another rank at global step 7"):
        module.training_step(batch, 0)
    assert decisions == [(False, False)]  # this rank's loss was finite; "any", not "all"


def test_fault_36_skip_nonfinite_skips_nan_gradient_steps(data, finished_run, tmp_path, monkeypatch, caplog):
    log_dir = crashed_copy(finished_run, tmp_path)
    start = state(session_dir(log_dir) / "checkpoints" / "last.ckpt")["state_dict"]
    nan_gradients(monkeypatch)  # every step of the third epoch
    hp = train_hparams(data, log_dir, max_epochs=3, resume=True, skip_nonfinite=True)
    _, results = fresh_run(monkeypatch, hp)
    assert results[0].global_step == 6 and "skipped the step: non-finite gradient norm" in caplog.text
    end = state(session_dir(log_dir) / "checkpoints" / "last.ckpt")
    assert end["skipped_nonfinite"] == 2
    assert same_weights(start, end["state_dict"])  # skipped steps change no weight
    assert "train/skipped_nonfinite" in scalar_tags(session_dir(log_dir))


def test_fault_35_skip_nonfinite_skips_nan_batches(data, tmp_path, monkeypatch, caplog) -> None:
    nan_images(monkeypatch, ("t0.png",))  # one batch per epoch; the other one still trains
    _, results = fresh_run(monkeypatch, train_hparams(data, tmp_path, max_epochs=2, skip_nonfinite=True))
    assert "skipped the step: non-finite training loss" in caplog.text and "t0.png" in caplog.text
    after = state(session_dir(tmp_path) / "checkpoints" / "last.ckpt")
    assert after["skipped_nonfinite"] == 2 and results[0].global_step == 4
    assert all(torch.isfinite(t).all() for t in after["state_dict"].values())
    assert np.isfinite(results[0].valid_psnr)


def test_fault_37_same_seed_same_weights_other_seed_differs(data, tmp_path, monkeypatch) -> None:
    data = {**data, "train": write_split(tmp_path / "train6", {f"s{i}.png": (32, 32) for i in range(6)})}
    weights, totals = [], []
    for i, seed in enumerate((7, 7, 8)):
        hp = train_hparams(data, tmp_path, seed=seed, experiment_name=f"seed{i}")
        _, results = fresh_run(monkeypatch, hp)
        assert results[0].global_step == 3  # 3 CPU steps
        weights.append(
            state(session_dir(tmp_path, experiment=f"seed{i}") / "checkpoints" / "last.ckpt")["state_dict"]
        )
        totals.append(results[0].valid_total)
    assert same_weights(weights[0], weights[1]) and totals[0] == totals[1]
    assert not same_weights(weights[0], weights[2])


@pytest.mark.slow
def test_fault_08_train_without_valid_split_fails_before_any_checkpoint(data, tmp_path) -> None:
    missing = tmp_path / "2_valid"
    proc = run_script("train.py", *cli(train_hparams(data, tmp_path, valid_data_path=str(missing))))
    assert proc.returncode == 2 and str(missing) in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_fault_44_gpu_on_a_cpu_box_is_an_error_auto_uses_the_cpu(data, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="no CUDA GPU is available"):
        LightningEngine(accelerator="gpu")
    with pytest.raises(SystemExit) as exit_info:
        run_main(train.main, train_hparams(data, tmp_path, accelerator="gpu", deterministic=False))
    assert exit_info.value.code == 2 and "--accelerator cpu" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()
    engine = LightningEngine(accelerator="auto")
    assert engine.device() == torch.device("cpu") or torch.backends.mps.is_available()
    assert type(engine.trainer([], logger=False).accelerator).__name__ in ("CPUAccelerator", "MPSAccelerator")


# --------------------------------------------------------------------------------------------------
# Bench and inference (FAULTS 21-23, 25, 27, 28, 38-41, 43)
# --------------------------------------------------------------------------------------------------


def write_images(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (height, width) in sizes.items():
        Image.fromarray(rng.integers(0, 80, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_fault_21_infer_reports_an_oversized_image_and_goes_on(tmp_path, monkeypatch, capsys) -> None:
    folder = write_images(tmp_path / "photos", {"big.png": (40, 40), "small.png": (8, 8)})
    monkeypatch.setattr(data_utils, "MAX_IMAGE_PIXELS", 1000)
    assert infer_main(monkeypatch, tmp_path, Stub(), folder) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and "big.png" in out and "MP limit" in out
    assert (tmp_path / "out/x/inference/photos/small.png").is_file()
    assert not (tmp_path / "out/x/inference/photos/big.png").exists()


def test_fault_22_23_25_infer_and_bench_keep_every_size_and_name(tmp_path) -> None:
    sizes = {"one.png": (1, 1), "three by five.png": (3, 5), "ночь 01.png": (399, 601)}
    folder = write_images(tmp_path / "photos", sizes)
    module = LowLightEnhancerLightning(embed_dim=8, num_heads=1)
    enhance = Enhance(module, torch.device("cpu"))
    summary = run_infer(
        enhance,
        [("photos", p) for p in sorted(folder.iterdir())],
        tmp_path / "out",
        TileHparams(),
        overwrite=False,
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
    )
    assert not summary.failed and len(summary.enhanced) == 3
    for name, (height, width) in sizes.items():
        with Image.open(tmp_path / "out" / "photos" / name) as image:
            assert image.size == (width, height) and image.mode == "RGB"
    split = write_split(tmp_path / "3_bench", {**sizes, "ночь 01.png": (39, 61)})  # smaller: faster
    result = run_bench(
        enhance,
        str(split),
        tmp_path / "bench",
        ["PSNR", "SSIM"],
        strict=False,
        tiles=TileHparams(),
        save_images=False,
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
    )
    assert result.summary["datasets"]["Tiny"]["images"] == 3
    assert all(np.isfinite(r["PSNR"]) for r in result.rows)
    assert {r["image"] for r in result.rows} == set(sizes)


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


def bench_stub(tmp_path: Path, model: torch.nn.Module, split: Path, metrics=("PSNR", "SSIM"), cache_gb=4.0):
    return run_bench(
        Enhance(model, torch.device("cpu")),
        str(split),
        tmp_path / "bench",
        list(metrics),
        strict=False,
        tiles=TileHparams(),
        save_images=True,
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
        cache_gb=cache_gb,
    )


def test_bench_decodes_each_file_once_and_scores_the_same_from_disk(tmp_path, monkeypatch) -> None:
    """The arrays the start-up check decodes are the ones enhanced and scored (within cache_gb);
    with --cache_gb 0 every file is decoded again, to the same scores."""
    split = write_split(tmp_path / "3_bench", {"a.png": (20, 28), "b.png": (16, 12)})
    calls = []
    real = data_utils.decode_image_array
    monkeypatch.setattr(data_utils, "decode_image_array", lambda path: calls.append(Path(path)) or real(path))
    rows = {}
    for cache_gb in (4.0, 0.0):
        calls.clear()
        result = run_bench(
            Enhance(Stub(local_conv), torch.device("cpu")),
            str(split),
            tmp_path / f"bench{cache_gb}",
            ["PSNR", "SSIM"],
            strict=False,
            tiles=TileHparams(),
            save_images=False,
            checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
            cache_gb=cache_gb,
        )
        rows[cache_gb] = result.rows
        files = sorted(split.glob("Tiny/*/*.png"))
        assert sorted(calls) == sorted(files * (1 if cache_gb else 2)), cache_gb
    assert rows[4.0] == rows[0.0] and len(rows[0.0]) == 2
    with pytest.raises(ValueError, match="cache_gb must be >= 0"):
        bench.BenchHparams(checkpoint_path="m.ckpt", cache_gb=-1)


def test_fault_27_identical_pair_has_a_finite_mean_in_bench(tmp_path) -> None:
    split = tmp_path / "3_bench"
    write_split(split, {"same.png": (24, 24), "other.png": (24, 24)})
    shutil.copy(split / "Tiny/high/same.png", split / "Tiny/low/same.png")  # low == high
    result = bench_stub(tmp_path, Stub(), split)  # identity network: output == low
    same = next(r for r in result.rows if r["image"] == "same.png")
    assert same["PSNR"] == pytest.approx(PSNR_IDENTICAL_DB) and same["SSIM"] == pytest.approx(1.0)
    means = result.summary["datasets"]["Tiny"]["means"]
    assert np.isfinite(means["PSNR"]) and np.isfinite(means["SSIM"])
    assert "inf" not in result.tables and "nan" not in result.tables.lower()


def test_bench_table_says_when_a_metric_covers_fewer_images(tmp_path) -> None:
    split = write_split(tmp_path / "3_bench", {"tiny.png": (8, 8), "big.png": (24, 24)})
    result = bench_stub(tmp_path, Stub(), split)  # SSIM's 11x11 window does not fit 8x8: None there
    assert result.summary["datasets"]["Tiny"]["scored"] == {
        "PSNR": 2,
        "SSIM": 1,
        "PSNR_GTmean": 2,
        "SSIM_GTmean": 1,
    }
    row = result.tables.splitlines()[-1]  # | images | PSNR | SSIM | PSNR_GTmean | SSIM_GTmean |
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "2" and "images" not in cells[1] and cells[2].endswith("(1/2 images)")


def test_fault_28_out_of_range_output_is_clamped_for_metrics_and_files(tmp_path, monkeypatch) -> None:
    def out_of_range(x: torch.Tensor) -> torch.Tensor:
        y = torch.full_like(x, -0.2)
        y[..., x.shape[-1] // 2 :] = 1.3
        return y

    split = write_split(tmp_path / "3_bench", {"a.png": (24, 32)})
    result = bench_stub(tmp_path, Stub(out_of_range), split, metrics=("PSNR", "SSIM", "BRISQUE"))
    row = result.rows[0]  # no pyiqa range assertion; BRISQUE of a two-tone image is n/a, not an error
    assert all(np.isfinite(row[c]) for c in ("PSNR", "SSIM", "PSNR_GTmean", "SSIM_GTmean"))
    folder = write_images(tmp_path / "photos", {"a.png": (24, 32)})
    assert infer_main(monkeypatch, tmp_path, Stub(out_of_range), folder) == 0
    with Image.open(tmp_path / "out/x/inference/photos/a.png") as image:
        image.load()
        saved = np.asarray(image)
    assert saved.shape == (24, 32, 3) and (saved[:, :16] == 0).all() and (saved[:, 16:] == 255).all()


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
        real_decode, real_write = predict.decode_image_array, predict.save_png_atomic

        def decode(path):
            image = real_decode(path)
            self.decoded[names.index(Path(path).name)].set()
            return image

        def write(dst, array):  # each output is written only once the model has moved on to the next
            i = names.index(Path(dst).name)
            assert i + 1 == len(names) or self.forward[i + 1].wait(10), f"{dst.name} not written behind"
            real_write(dst, array)

        monkeypatch.setattr(predict, "decode_image_array", decode)
        monkeypatch.setattr(predict, "save_png_atomic", write)

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
            predict.collect_inputs("unused", str(tmp_path / name / "low")),
            out,
            TileHparams(),
            False,
            ckpt,
        )
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 50
    assert np.asarray(Image.open(out / "LIME/1.png"))[0, 0, 0] == 200
    # --input of a sub-dataset folder (it holds low/) enhances its low/ images
    assert predict.collect_inputs("unused", str(tmp_path / "DICM")) == [("DICM", tmp_path / "DICM/low/1.png")]
    # A later folder of the same name: refused (it would replace these outputs), replaced with --overwrite
    (tmp_path / "other/DICM").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "other/DICM/1.png")
    inputs = predict.collect_inputs("unused", str(tmp_path / "other/DICM"))
    with pytest.raises(
        DataError, match=r"made from other files of the same name: .*DICM/1\.png.*--overwrite"
    ):
        run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), False, ckpt)
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 50
    assert len(run_infer(Enhance(Stub(), cpu), inputs, out, TileHparams(), True, ckpt).enhanced) == 1
    assert np.asarray(Image.open(out / "DICM/1.png"))[0, 0, 0] == 99


def test_infer_ignores_a_partial_high_folder(tmp_path) -> None:
    """high/ is unused by inference (README), so a partial one must not stop it: infer.py and the
    closing inference of train.py (the data module's predict stage) both enhance every low image."""
    split = write_split(tmp_path / "4_infer", {"a.png": (8, 8), "b.png": (8, 8)})
    (split / "Tiny/high/b.png").unlink()
    expected = [("Tiny", split / "Tiny/low/a.png"), ("Tiny", split / "Tiny/low/b.png")]
    assert predict.collect_inputs(str(split), None) == expected
    module = LowLightDataModule(infer_data_path=str(split), num_workers=0)
    module.setup("predict")
    assert [(p.low, p.high) for p in module.infer_pairs["Tiny"]] == [(path, None) for _, path in expected]
    with pytest.raises(DataError, match="1 low image"):  # the bench split still pairs strictly
        LowLightDataModule(bench_data_path=str(split), num_workers=0).setup("test")


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


def test_fault_43_bench_with_fewer_outputs_than_pairs_is_an_error(tmp_path, monkeypatch) -> None:
    split = write_split(tmp_path / "3_bench", {"a.png": (16, 16), "b.png": (16, 16), "c.png": (16, 16)})
    real = predict.load_image

    def lose_one(path):
        if Path(path).name == "b.png" and Path(path).parent.name == "low":
            raise DataError(f"{path}: truncated or corrupt image (changed since validation)")
        return real(path)

    monkeypatch.setattr(predict, "load_image", lose_one)
    with pytest.raises(BenchError) as info:  # --cache_gb 0: the files are read again after the check
        bench_stub(tmp_path, Stub(), split, cache_gb=0)
    message = str(info.value)
    assert "'Tiny': (2, 3)" in message and "b.png" in message
    assert (
        not (tmp_path / "bench" / "bench.json").exists() and not (tmp_path / "bench" / "bench.csv").exists()
    )
    monkeypatch.setattr("model.model.load_checkpoint", lambda path, map_location="cpu": Stub())
    hp = bench.BenchHparams(
        checkpoint_path=fake_checkpoint(tmp_path / "m.ckpt"),
        bench_data_path=str(split),
        metrics=["PSNR"],
        accelerator="cpu",
        log_dir=str(tmp_path / "b"),
        cache_gb=0,
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main(bench.main, hp)
    assert exit_info.value.code == 2
