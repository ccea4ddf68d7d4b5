"""Training steps that go wrong: non-finite losses and gradients, seeds, a missing validation
split, a GPU asked for on a CPU box (FAULTS 8, 35-37, 44)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from engine.engine import EngineError, LightningEngine
from model.model import LowLightEnhancerLightning, NonFiniteError
from tests.conftest import tiny_model
from tests.faults.helpers import (
    cli,
    crashed_copy,
    fresh_run,
    run_script,
    same_weights,
    scalar_tags,
    session_dir,
    state,
    train_hparams,
    write_split,
)
from utils.utils import run_main


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

    module = LowLightEnhancerLightning(tiny_model())
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
