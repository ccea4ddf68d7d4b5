"""Run folders: ``<experiment>/version_<N>`` created race-free, removed when a failed run left
nothing in them, chosen once for every process of a distributed run (and found again by
``--resume``); :func:`is_rank_zero` names the process that owns them.

Every run gets a fresh ``version_<N>`` (created with an exclusive ``mkdir``), so two runs with the
same ``experiment_name`` never write into each other's folders.
"""

import os
import re
import shutil
import time
from pathlib import Path

from utils.utils import atomic_write_text, log

RUN_DIR_ENV = "ILLRECNET_RUN_DIR"  # shared with DDP worker processes that re-run the script


def new_run_dir(experiment_dir: Path) -> Path:
    """Create and return ``experiment_dir/version_<N>`` with the next free N (race-free)."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [
            int(m.group(1)) for p in experiment_dir.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
        ]
        candidate = experiment_dir / f"version_{max(taken, default=-1) + 1}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def discard_if_unused(run_dir: Path) -> bool:
    """Remove ``run_dir`` (and return True) when a run failed before writing anything but TensorBoard
    event files, so a failed ``bench.py`` leaves no empty ``version_<N>`` behind; a folder holding any
    other file or link (a partial table, saved images) is kept as it is."""
    files = [p for p in run_dir.rglob("*") if p.is_symlink() or not p.is_dir()]
    if any(not p.name.startswith("events.out.tfevents.") for p in files):
        return False
    shutil.rmtree(run_dir)  # event files and folders only: no link left to follow
    return True


def latest_run_dir(experiment_dir: Path) -> Path | None:
    """The newest ``version_<N>`` folder that holds a checkpoint or a finished session, or None.
    Newer folders without either (a run that failed before its first checkpoint, e.g. on bad data)
    are passed over with a note, so ``--resume`` never continues an empty run instead of a real one."""
    if not experiment_dir.is_dir():
        return None
    runs = sorted(
        (
            (int(m.group(1)), p)
            for p in experiment_dir.iterdir()
            if (m := re.fullmatch(r"version_(\d+)", p.name))
        ),
        reverse=True,
    )
    for _, run in runs:
        if any(run.glob("*/checkpoints/*.ckpt")) or any(run.glob("*/result.json")):
            return run
        log.info("--resume: %s holds no checkpoint; looking at older runs", run)
    return None


def is_rank_zero() -> bool:
    """True in the process that owns the run folder: global rank 0 under torchrun (``RANK``) or SLURM
    (``SLURM_PROCID``), else the first process of Lightning's own launcher."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def _external_launch_id() -> str | None:
    """An id shared by every process of one attempt of a torchrun / srun launch with several
    processes, else None. It includes the restart count (a requeued SLURM job keeps its job id, a
    torchrun restart its run id and port), so that the ranks of a restarted attempt never read the
    pointer of the attempt before it."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        step, restart = os.environ.get("SLURM_STEP_ID", "0"), os.environ.get("SLURM_RESTART_COUNT", "0")
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{step}-r{restart}"
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        address = f"{os.environ.get('MASTER_ADDR', '')}-{os.environ.get('MASTER_PORT', '')}"
        return f"torchrun-{run_id}-{address}-r{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


POINTER_WAIT_S = 600.0
POINTER_MAX_AGE_S = 300.0


def resolve_run_dir(experiment_dir: Path, resume: bool) -> Path:
    """The run folder of this invocation, one for all processes of a distributed run.

    Lightning's own launcher re-runs the script in worker processes: they inherit the folder through
    an environment variable. Under torchrun or SLURM every process starts on its own: global rank 0
    chooses the folder and writes a pointer file named after the launch id next to it (so
    ``log_dir`` must be on a file system all nodes share, as checkpoints must be); the other ranks
    wait for a fresh pointer and read it.
    """
    if shared := os.environ.get(RUN_DIR_ENV):
        return Path(shared)
    launch_id = _external_launch_id()
    pointer = experiment_dir / f".run-{launch_id}" if launch_id else None
    if pointer is not None and not is_rank_zero():
        run_dir = _wait_for_pointer(pointer)
    else:
        run_dir = _choose_run_dir(experiment_dir, resume)
        if pointer is not None:
            atomic_write_text(pointer, str(run_dir))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def _choose_run_dir(experiment_dir: Path, resume: bool) -> Path:
    run_dir = None
    if resume:
        run_dir = latest_run_dir(experiment_dir)
        if run_dir is None:
            log.warning(
                "--resume: no earlier run with a checkpoint under %s; starting a fresh run", experiment_dir
            )
        else:
            log.info("--resume: continuing %s", run_dir)
    return run_dir or new_run_dir(experiment_dir)


def _wait_for_pointer(pointer: Path) -> Path:
    """Rank > 0: the run folder rank 0 wrote into ``pointer`` (ignoring pointers older than a few
    minutes, left by an earlier launch with the same id)."""
    deadline = time.monotonic() + POINTER_WAIT_S
    while time.monotonic() < deadline:
        if pointer.is_file() and time.time() - pointer.stat().st_mtime < POINTER_MAX_AGE_S:
            return Path(pointer.read_text().strip())
        time.sleep(0.5)
    raise RuntimeError(f"rank 0 did not announce the run folder in {pointer} within {POINTER_WAIT_S:.0f} s")
