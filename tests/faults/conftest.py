"""Fixtures of the fault tests: a tiny data set and a finished run (each built once for all the fault
test files), and every test isolated from the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.run_dirs import RUN_DIR_ENV
from engine.runner import run_training
from tests.faults.helpers import (
    train_hparams,
    write_split,
)
from utils import utils as utils_module


@pytest.fixture(scope="package")
def data(tmp_path_factory) -> dict[str, Path]:
    """Train: 4 pairs of 32x40 (2 steps per epoch at batch 2). Valid: 1 pair of 32x48."""
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_split(root / "1_train", {f"t{i}.png": (32, 40) for i in range(4)}),
        "valid": write_split(root / "2_valid", {"v0.png": (32, 48)}, seed=1),
        "none": root / "none",
    }


@pytest.fixture(scope="package")
def finished_run(data, tmp_path_factory) -> Path:
    """A finished 2-epoch frozen session (log_dir); tests copy it before changing anything."""
    log_dir = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUN_DIR_ENV, "")
        deterministic = torch.are_deterministic_algorithms_enabled()
        run_training(train_hparams(data, log_dir, max_epochs=2))
        torch.use_deterministic_algorithms(deterministic)
    return log_dir


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
