"""Helpers of the fault tests: tiny splits and training settings, scripts run in the background,
stand-in networks for bench/infer, and what a run leaves on disk."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import infer
import train
from engine.run_dirs import RUN_DIR_ENV
from engine.runner import run_training
from tests.conftest import ROOT, TINY_MODEL, cli_flags, run_python, script_env
from utils.utils import run_main

TINY = {**TINY_MODEL, "image_size": 32, "batch_size": 2, "num_workers": 0}
CPU = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "deterministic": True}


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
    return cli_flags({k: getattr(hp, k) for k in keys} | overrides)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_python(ROOT / script, *args, timeout=300)


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
    return command, run_python(*shlex.split(command)[1:])


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


def bench_settings(tmp_path: Path, split: Path, **overrides):
    """A bench of ``split`` scoring PSNR and SSIM for a stand-in checkpoint, ``overrides`` changed."""
    from engine.bench import BenchSettings

    checkpoint = fake_checkpoint(tmp_path / "m.ckpt")
    values = {"bench_data_path": str(split), "checkpoint_path": checkpoint, "metrics": ["PSNR", "SSIM"]}
    return BenchSettings(**(values | overrides))


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


def crashed_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that looks killed before the end (no result.json)."""
    log_dir = tmp_path / "runs"
    shutil.copytree(finished_run, log_dir)
    (session_dir(log_dir) / "result.json").unlink()
    return log_dir


def write_images(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (height, width) in sizes.items():
        Image.fromarray(rng.integers(0, 80, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder
