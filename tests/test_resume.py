"""``last.ckpt`` is the last finished epoch, and every way a training run can stop resumes to exactly
what an uninterrupted run leaves on disk: checkpoints (epoch, step, weights, optimizer), result.json,
summary.json and the TensorBoard scalars (each step once, none missing).

The run's validation pair is one that training makes worse (its target is an eighth of its input,
while training pairs brighten), so the best epoch is the first and the last epochs never improve:
``ModelCheckpoint(save_last=True)`` beside the best-by-``valid/3_total`` callback left ``last.ckpt`` at
that first epoch. Each scenario stops the run at an exact point through tests/fault_train.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.run_dirs import RUN_DIR_ENV
from tests.conftest import TINY_MODEL, cli_flags, run_python

EPOCHS, STEPS = 3, 4  # 4 training pairs x train_repeat 2, batch 2: 4 steps an epoch
SESSIONS = ("frozen", "trainable")


def write_pairs(folder: Path, count: int, seed: int, brighten: bool) -> None:
    rng = np.random.default_rng(seed)
    for side in ("low", "high"):
        (folder / "Tiny" / side).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        high = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        low = high // 5 if brighten else high
        target = high if brighten else high // 8
        Image.fromarray(low).save(folder / "Tiny" / "low" / f"{i}.png")
        Image.fromarray(target).save(folder / "Tiny" / "high" / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_pairs(root / "1_train", 4, seed=0, brighten=True)
    write_pairs(root / "2_valid", 1, seed=1, brighten=False)
    return root


def flags(data: Path, log_dir: Path) -> list[str]:
    values = {
        "train_data_path": data / "1_train",
        "valid_data_path": data / "2_valid",
        "bench_data_path": data / "none",
        "infer_data_path": data / "none",
        **TINY_MODEL,
        "image_size": 32,
        "batch_size": 2,
        "train_repeat": 2,
        "num_workers": 0,
        "lr": 0.0005,  # slow enough that the validation pair only gets worse, epoch after epoch
        "max_epochs": EPOCHS,
        "session": "both",
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "deterministic": "true",
        "log_dir": log_dir,
        "experiment_name": "run",
        "log_every_n_steps": 1,
        "num_log_images": 1,
    }
    return cli_flags(values)


def run(*args: str) -> subprocess.CompletedProcess:
    return run_python(*args)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar as TensorBoard shows it: (step, value) per tag, in order."""
    found: dict[str, list[tuple[int, float]]] = {}
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in accumulator.Tags()["scalars"]:
        found[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return found


def on_disk(log_dir: Path, sessions: tuple[str, ...] = SESSIONS) -> dict:
    """What a run left: per session, each checkpoint's epoch, step, loops, weights and optimizer state,
    result.json and the scalars; and summary.json (paths relative to the log folder)."""
    run_dir = log_dir / "run" / "version_0"
    state: dict = {"runs": sorted(p.name for p in (log_dir / "run").iterdir() if p.is_dir())}
    for session in sessions:
        folder = run_dir / session
        checkpoints = {}
        for path in sorted((folder / "checkpoints").iterdir()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            checkpoints[path.name] = {
                "epoch": ckpt["epoch"],
                "global_step": ckpt["global_step"],
                "loops": ckpt["loops"],
                "state_dict": ckpt["state_dict"],
                "optimizer": ckpt["optimizer_states"],
                "lr_schedulers": ckpt["lr_schedulers"],
            }
        result = (folder / "result.json").read_text().replace(str(log_dir), "LOG")
        result = json.loads(result)
        state[session] = {"checkpoints": checkpoints, "result": result, "scalars": scalars(folder)}
    state["summary"] = json.loads((run_dir / "summary.json").read_text().replace(str(log_dir), "LOG"))
    return state


def assert_same(a, b, where: str = "") -> None:
    """Deep equality, tensors exactly, naming the first place that differs."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("straight")
    done = run("train.py", *flags(data, log_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return on_disk(log_dir)


@pytest.mark.slow
def test_uninterrupted_run_keeps_the_last_epoch_in_last_ckpt_and_the_best_in_best_ckpt(straight) -> None:
    for session in SESSIONS:
        checkpoints = straight[session]["checkpoints"]
        assert sorted(checkpoints) == ["best.ckpt", "last.ckpt"]
        last, best = checkpoints["last.ckpt"], checkpoints["best.ckpt"]
        assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS * STEPS), session
        # the run this test needs: its last epochs did not improve valid/3_total
        assert best["epoch"] < EPOCHS - 1 and best["global_step"] == (best["epoch"] + 1) * STEPS, session
        totals = straight[session]["scalars"]["valid/3_total"]
        assert [step for step, _ in totals] == [3, 7, 11]  # one value an epoch, at its last step
        assert totals[best["epoch"]][1] == min(value for _, value in totals), totals
        assert straight[session]["result"]["valid_total"] == pytest.approx(totals[best["epoch"]][1])
        assert [step for step, _ in straight[session]["scalars"]["hp_metric"]] == [0, EPOCHS * STEPS]
        result = straight[session]["result"]
        assert result["epochs"] == EPOCHS and result["global_step"] == EPOCHS * STEPS
        assert result["best_checkpoint"].endswith("best.ckpt")
        assert result["last_checkpoint"].endswith("last.ckpt")
        steps = [step for step, _ in straight[session]["scalars"]["train/3_total_step"]]
        assert steps == list(range(EPOCHS * STEPS))  # each step once
        assert [s for s, _ in straight[session]["scalars"]["train/3_total_epoch"]] == [3, 7, 11]
    assert straight["frozen"]["checkpoints"]["best.ckpt"]["epoch"] == 0  # two epochs without improvement
    # the trainable session started from the frozen session's best, not its last epoch
    frozen_best = straight["frozen"]["checkpoints"]["best.ckpt"]["state_dict"]
    frozen_last = straight["frozen"]["checkpoints"]["last.ckpt"]["state_dict"]
    assert not all(torch.equal(frozen_best[k], frozen_last[k]) for k in frozen_best)


SCENARIOS = {
    "SIGKILL at the end of epoch 1": "after-last:1",
    "SIGKILL between best.ckpt and last.ckpt of epoch 0": "after-best:0",
    "SIGKILL inside epoch 1": f"at-sample:{2 * STEPS * 1 + 5}:SIGKILL",
    "SIGINT inside epoch 1": f"at-sample:{2 * STEPS * 1 + 5}:SIGINT",
    "SIGTERM inside epoch 2": f"at-sample:{2 * STEPS * 2 + 3}:SIGTERM",
    "SIGKILL inside the trainable session's first epoch": f"at-sample:{2 * STEPS * EPOCHS + 3}:SIGKILL",
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_way_of_stopping_resumes_to_what_an_uninterrupted_run_leaves(
    data, tmp_path, straight, fault
) -> None:
    args = flags(data, tmp_path)
    stopped = run("tests/fault_train.py", fault, *args)
    assert stopped.returncode == {"SIGINT": 130, "SIGTERM": 143}.get(fault.rsplit(":", 1)[-1], -9), (
        stopped.stderr[-3000:]
    )
    run_dir = tmp_path / "run" / "version_0"
    session = "trainable" if (run_dir / "frozen" / "result.json").exists() else "frozen"
    ckpt_dir = run_dir / session / "checkpoints"
    assert not (ckpt_dir.parent / "result.json").exists()
    interrupted = ckpt_dir / "interrupted.ckpt"
    if fault.endswith(("SIGINT", "SIGTERM")):
        last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
        newest = torch.load(interrupted, map_location="cpu", weights_only=True)
        assert newest["global_step"] > last["global_step"]
        message = (
            f"resuming from {interrupted} (epoch {newest['epoch']}, global step {newest['global_step']}; "
        )
        message += "stopped after batch"
    elif (ckpt_dir / "last.ckpt").exists():
        assert not interrupted.exists()
        newest = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
        message = f"resuming from {ckpt_dir / 'last.ckpt'} (epoch {newest['epoch']}, "
        message += f"global step {newest['global_step']}; after {newest['epoch'] + 1} finished epochs"
    else:  # stopped in the session's first epoch: at most the best.ckpt of that epoch is on disk
        assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) in ([], ["best.ckpt"])
        message = "it stopped before finishing its first epoch; starting it again"

    resumed = run("train.py", *args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"session {session}: {message}" in resumed.stderr, resumed.stderr[-3000:]
    assert_same(straight, on_disk(tmp_path))


@pytest.mark.slow
def test_a_photo_folder_run_killed_inside_an_epoch_resumes_the_same_synthesized_stream(tmp_path) -> None:
    """FAULTS 46: the low images of photo folders are synthesized from the sampler's seeds, so the
    resumed run trains on exactly the crops and noise the uninterrupted one did."""
    import skimage.data

    for split, names in (("1_train", ("astronaut", "chelsea", "coffee")), ("2_valid", ("rocket",))):
        (tmp_path / "data" / split / "Photos").mkdir(parents=True)
        for name in names:
            image = Image.fromarray(getattr(skimage.data, name)()[::8, ::8])
            image.save(tmp_path / "data" / split / "Photos" / f"{name}.png")
    args = flags(tmp_path / "data", tmp_path / "straight") + ["--session", "frozen", "--photo_repeat", "2"]
    assert (done := run("train.py", *args)).returncode == 0, done.stderr[-3000:]
    resumed_args = flags(tmp_path / "data", tmp_path / "resumed") + [
        "--session",
        "frozen",
        "--photo_repeat",
        "2",
    ]
    stopped = run("tests/fault_train.py", "at-sample:9:SIGKILL", *resumed_args)  # inside epoch 1 of 3
    assert stopped.returncode == -9, stopped.stderr[-3000:]
    assert (again := run("train.py", *resumed_args, "--resume", "true")).returncode == 0, again.stderr[-3000:]
    assert_same(on_disk(tmp_path / "straight", ("frozen",)), on_disk(tmp_path / "resumed", ("frozen",)))


def test_a_resume_keeps_a_best_ckpt_newer_than_its_starting_point(tmp_path) -> None:
    """A stop between an epoch's best.ckpt and last.ckpt resumes from the epoch before. On a GPU the
    repeated epoch can score worse than the file it wrote the first time: the best callback must then
    keep that file as the best, so that only a better epoch replaces it."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from engine.callbacks import MONITOR, KeepNewerBest

    def best_callback(score: float | None) -> ModelCheckpoint:
        callback = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor=MONITOR, mode="min")
        if score is not None:
            callback.best_model_score = callback.kth_value = torch.tensor(score)
            callback.best_model_path = callback.kth_best_model_path = str(tmp_path / "best.ckpt")
            callback.best_k_models = {callback.best_model_path: torch.tensor(score)}
        return callback

    on_disk_best = best_callback(0.3)  # what the stopped run recorded in best.ckpt at step 8
    ckpt = {"epoch": 1, "global_step": 8, "callbacks": {on_disk_best.state_key: on_disk_best.state_dict()}}
    torch.save(ckpt, tmp_path / "best.ckpt")

    restored = best_callback(0.5)  # the record in last.ckpt of the epoch before (step 4)
    KeepNewerBest().on_train_start(SimpleNamespace(checkpoint_callbacks=[restored], global_step=4), None)
    assert float(restored.best_model_score) == pytest.approx(0.3)
    one_process = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    worse_repeat = SimpleNamespace(global_step=8, strategy=one_process)
    assert not restored.check_monitor_top_k(worse_repeat, torch.tensor(0.4))  # 0.4: would replace 0.5
    assert restored.check_monitor_top_k(worse_repeat, torch.tensor(0.2))

    up_to_date = best_callback(0.5)  # resuming from a state as new as best.ckpt: nothing to take
    KeepNewerBest().on_train_start(SimpleNamespace(checkpoint_callbacks=[up_to_date], global_step=8), None)
    assert float(up_to_date.best_model_score) == pytest.approx(0.5)


def test_a_restarted_distributed_launch_never_reads_the_run_folder_of_the_attempt_before(
    tmp_path, monkeypatch
) -> None:
    """Under torchrun, rank 0 announces the run folder in a pointer file that the other ranks read. A
    torchrun restart keeps the run id and port: its ranks must wait for the new attempt's pointer, not
    follow the previous attempt's (which named another folder)."""
    from engine import run_dirs

    experiment = tmp_path / "exp"
    monkeypatch.setattr(run_dirs, "POINTER_WAIT_S", 1.0)
    launch = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "node", "MASTER_PORT": "29500"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)

    def rank(number: int, attempt: int) -> Path:
        monkeypatch.setenv(RUN_DIR_ENV, "")
        monkeypatch.setenv("RANK", str(number))
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
        return run_dirs.resolve_run_dir(experiment, resume=False)

    assert rank(0, 0) == rank(1, 0) == experiment / "version_0"
    with pytest.raises(RuntimeError, match="did not announce the run folder"):
        rank(1, 1)  # attempt 1, before its rank 0 chose: waits, never takes version_0
    assert rank(0, 1) == rank(1, 1) == experiment / "version_1"
