"""Suite-wide settings (CPU only, two threads, no metric downloads: CI is offline) and what every test
file shares: the repository root, the tiny model's settings and a way to run a script."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from utils.hparams import DataHparams, ModelHparams

os.environ.setdefault("ILLRECNET_IQA_DOWNLOAD", "0")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
"""The repository: scripts run from here."""

TINY_MODEL = {"embed_dim": 8, "num_heads": 1, "full_res_dim": 8}
"""The smallest IllRecNet of the default's architecture (8 channels, one attention head, an 8-channel
full-resolution stage): it trains in seconds on a CPU."""


def tiny_model(**fields) -> ModelHparams:
    """:data:`TINY_MODEL` as the model group, with ``fields`` changed (``tiny_model(full_res_dim=8)``)."""
    return ModelHparams(**(TINY_MODEL | fields))


def keeps_shape(model: torch.nn.Module, *shape: int) -> bool:
    """Whether ``model`` (in eval mode) maps a random image of ``shape`` to finite values of that shape."""
    x = torch.rand(*shape)
    with torch.no_grad():
        y = model.eval()(x)
    return y.shape == x.shape and bool(torch.isfinite(y).all())


def data_module(seed: int = 0, **fields):
    """A ``LowLightDataModule`` of ``DataHparams(**fields)``, loading in the test's own process
    unless ``num_workers`` is given."""
    from data.dataloader import LowLightDataModule

    return LowLightDataModule(DataHparams(**({"num_workers": 0} | fields)), seed)


def cli_flags(values: dict) -> list[str]:
    """``--name value`` per item (booleans as ``true``/``false``): a script's command line."""
    return [
        arg
        for k, v in values.items()
        for arg in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))
    ]


def script_env(fresh: bool = True) -> dict[str, str]:
    """The environment of a script under test, without metric downloads. ``fresh``: that of a new
    shell, with no run folder or Lightning variable inherited from in-process runs, and one thread
    per script (two scripts may run side by side on the two CI cores)."""
    if not fresh:
        return {**os.environ, "ILLRECNET_IQA_DOWNLOAD": "0"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "ILLRECNET_RUN"))}
    return {**env, "ILLRECNET_IQA_DOWNLOAD": "0", "OMP_NUM_THREADS": "1"}


def run_python(
    *args: str | Path,
    cwd: Path = ROOT,
    timeout: float = 600,
    fresh: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd``, its output captured as text; ``env`` is added to
    :func:`script_env`."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**script_env(fresh), **(env or {})},
    )
