"""End to end through the real scripts (subprocesses), on the shipped sample with a tiny model."""

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.enhance import Enhance
from tests.conftest import ROOT, TINY_MODEL, cli_flags, run_python

SAMPLE = ROOT / "sample"

pytestmark = pytest.mark.slow


def sample_run(log_dir: Path, experiment: str, **flags) -> list[str]:
    """train.py's arguments for a short run on the shipped sample: configs/sample.yaml and the tiny
    model on the CPU, 32 px crops, every training pair once an epoch, logged under
    ``log_dir/experiment``; ``flags`` add to those or change them."""
    cpu = {"accelerator": "cpu", "devices": 1, "num_workers": 0, "image_size": 32, "train_repeat": 1}
    values = TINY_MODEL | cpu | {"log_dir": log_dir, "experiment_name": experiment}
    return ["--config", str(ROOT / "configs" / "sample.yaml"), *cli_flags(values | flags)]


def no_closing(tmp_path: Path) -> dict:
    """No closing bench or inference: their splits do not exist."""
    return {"bench_data_path": tmp_path / "none", "infer_data_path": tmp_path / "none"}


def run(script: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = run_python(ROOT / script, *args, fresh=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One train.py run with both sessions, its closing bench and inference."""
    log_dir = tmp_path_factory.mktemp("runs")
    flags = sample_run(log_dir, "e2e", batch_size=4, max_epochs=2, bench_metrics="[PSNR, SSIM]")
    proc = run("train.py", *flags)
    run_dir = log_dir / "e2e" / "version_0"
    return {"proc": proc, "run_dir": run_dir, "log_dir": log_dir}


def scalars_and_images(session_dir: Path) -> tuple[set[str], set[str]]:
    tags_scalars, tags_images = set(), set()
    for event_file in session_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags_scalars |= set(acc.Tags()["scalars"])
        tags_images |= set(acc.Tags()["images"])
    return tags_scalars, tags_images


def test_train_writes_checkpoints_logs_and_summary_for_both_sessions(trained):
    run_dir, out = trained["run_dir"], trained["proc"].stdout
    for session in ("frozen", "trainable"):
        session_dir = run_dir / session
        assert (session_dir / "checkpoints" / "best.ckpt").is_file()
        assert (session_dir / "checkpoints" / "last.ckpt").is_file()
        hparams = yaml.safe_load((session_dir / "hparams.yaml").read_text())
        assert hparams["embed_dim"] == 8 and hparams["trainable_separation"] == (session == "trainable")
        scalars, images = scalars_and_images(session_dir)
        for tag in (
            "train/1_mae",
            "train/2_mse",
            "train/3_total",
            "valid/1_mae",
            "valid/2_mse",
            "valid/3_total",
            "valid/psnr",
            "valid/ssim",
        ):
            assert any(t.startswith(tag) for t in scalars), (session, tag, scalars)
        assert any(t.startswith("lr-AdamW") for t in scalars), scalars
        assert "hp_metric" in scalars  # the HPARAMS tab: hyper-parameters against the best valid PSNR
        assert len(images) == 2, images  # num_log_images in configs/sample.yaml
        result = json.loads((session_dir / "result.json").read_text())
        assert result["epochs"] == 2 and np.isfinite(result["valid_psnr"])
        assert f"{result['valid_psnr']:.2f} dB" in out
    assert f"tensorboard --logdir {run_dir.parent}" in out
    # The console: the project's lines, the device and the progress bars, without the third-party
    # noise that no user can act on (a logging-service tip, torch's LeafSpec deprecation inside
    # Lightning, Lightning's TPU line and checkpoint bookkeeping in every session)
    err = trained["proc"].stderr
    assert "INFO session trainable starts from the weights of" in err and "GPU available: False" in err
    assert "Tip: For seamless cloud logging" not in err and "LeafSpec" not in err
    for noise in ("TPU available", "Loading `train_dataloader`", "Restoring states", "Loaded model weights"):
        assert noise not in err, noise
    assert "`Trainer.fit` stopped" not in err
    # Frozen separation kept its sigma; the trainable session learned it.
    frozen = torch.load(run_dir / "frozen/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    trainable = torch.load(run_dir / "trainable/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    key = "model.separation.log_sigma"
    assert torch.allclose(frozen[key], torch.full((3,), np.log(3.0)))
    assert not torch.equal(frozen[key], trainable[key])


def test_train_closes_with_bench_table_and_inference(trained):
    run_dir, out = trained["run_dir"], trained["proc"].stdout
    assert "| images | PSNR | SSIM | PSNR_GTmean | SSIM_GTmean |" in out
    rows = list(csv.DictReader((run_dir / "bench" / "bench.csv").open()))
    assert len(rows) == len(list((SAMPLE / "3_bench" / "SkimageSynth" / "low").iterdir()))
    outputs = sorted((run_dir / "inference" / "SkimageSynth").glob("*.png"))
    assert [p.stem for p in outputs] == sorted(
        p.stem for p in (SAMPLE / "4_infer/SkimageSynth/low").iterdir()
    )


def test_second_run_with_same_name_gets_its_own_folder(trained, tmp_path):
    log_dir = trained["log_dir"]
    run("train.py", *sample_run(log_dir, "e2e", max_epochs=1, session="frozen", **no_closing(tmp_path)))
    assert (log_dir / "e2e" / "version_1" / "frozen" / "checkpoints" / "best.ckpt").is_file()
    assert not (log_dir / "e2e" / "version_1" / "trainable").exists()
    assert (trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt").is_file()


def test_valid_from_checkpoint_alone(trained, tmp_path):
    """valid.py needs only the checkpoint and reproduces training's validation PSNR; --cache_gb reaches
    the data module (a budget too small for the split reads it from disk, to the same numbers)."""
    ckpt = trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt"
    proc = run(
        "valid.py",
        "--checkpoint_path",
        str(ckpt),
        "--valid_data_path",
        str(SAMPLE / "2_valid"),
        "--accelerator",
        "cpu",
        "--num_workers",
        "0",
        "--cache_gb",
        "1e-6",
        "--log_dir",
        str(tmp_path),
    )
    report = json.loads(next(tmp_path.glob("*/version_0/valid.json")).read_text())
    expected = json.loads((trained["run_dir"] / "trainable" / "result.json").read_text())["valid_psnr"]
    assert report["valid/psnr"] == pytest.approx(expected, abs=1e-3)
    assert "valid/psnr" in proc.stdout
    assert "validation images not kept in memory" in proc.stdout + proc.stderr


def test_bench_csv_matches_psnr_of_saved_inference_images(trained, tmp_path):
    closing = trained["run_dir"] / "bench"  # train.py's closing bench (trained under bf16-mixed)
    ckpt = json.loads((closing / "bench.json").read_text())["checkpoint_path"]
    bench_root = tmp_path / "bench_split"
    shutil.copytree(SAMPLE / "3_bench", bench_root)
    (bench_root / "NoGT" / "low").mkdir(parents=True)  # a sub-dataset without ground truth
    infer_low = SAMPLE / "4_infer/SkimageSynth/low"
    shutil.copy(infer_low / sorted(os.listdir(infer_low))[0], bench_root / "NoGT" / "low" / "only.png")
    proc = run(
        "bench.py",
        "--checkpoint_path",
        str(ckpt),
        "--bench_data_path",
        str(bench_root),
        "--metrics",
        "[PSNR, SSIM, NIQE]",
        "--save_images",
        "true",
        "--accelerator",
        "cpu",
        "--log_dir",
        str(tmp_path / "bench"),
    )
    out_dir = next((tmp_path / "bench").glob("*/version_0"))
    rows = list(csv.DictReader((out_dir / "bench.csv").open()))
    assert list(rows[0])[:5] == ["dataset", "image", "PSNR", "SSIM", "NIQE"]
    summary = json.loads((out_dir / "bench.json").read_text())
    assert summary["datasets"]["SkimageSynth"]["images"] == 2 and summary["datasets"]["NoGT"]["images"] == 1
    assert len(summary["checkpoint_sha256"]) == 64 and "pyiqa" in summary["versions"]
    assert "**NoGT** — 1 images (no ground truth" in proc.stdout
    nogt = [r for r in rows if r["dataset"] == "NoGT"][0]
    assert nogt["PSNR"] == "n/a" and nogt["SSIM"] == "n/a" and nogt["NIQE"] != "n/a"
    strips = list((out_dir / "images" / "SkimageSynth").glob("*.png"))
    assert len(strips) == 2
    # The closing bench of train.py runs in fp32 like bench.py: the same numbers to the last digit.
    closing_rows = {r["image"]: r for r in csv.DictReader((closing / "bench.csv").open())}
    for row in (r for r in rows if r["dataset"] == "SkimageSynth"):
        assert (row["PSNR"], row["SSIM"]) == (
            closing_rows[row["image"]]["PSNR"],
            closing_rows[row["image"]]["SSIM"],
        )
    # Enhance the same split with infer.py and recompute PSNR from the saved 8-bit files.
    run(
        "infer.py",
        "--checkpoint_path",
        str(ckpt),
        "--infer_data_path",
        str(bench_root),
        "--accelerator",
        "cpu",
        "--log_dir",
        str(tmp_path / "infer"),
        "--experiment_name",
        "x",
    )
    for row in rows:
        if row["dataset"] != "SkimageSynth":
            continue
        stem = Path(row["image"]).stem
        enhanced = np.asarray(Image.open(tmp_path / "infer/x/inference/SkimageSynth" / f"{stem}.png"))
        high = np.asarray(Image.open(bench_root / "SkimageSynth/high" / row["image"]).convert("RGB"))
        assert float(row["PSNR"]) == pytest.approx(
            peak_signal_noise_ratio(high, enhanced, data_range=255), abs=1e-3
        )


def test_bench_lpips_offline_is_na_not_zero(trained, tmp_path):
    ckpt = trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt"
    env = {"TORCH_HOME": str(tmp_path / "empty_hub")}
    args = [
        "--checkpoint_path",
        str(ckpt),
        "--bench_data_path",
        str(SAMPLE / "3_bench"),
        "--metrics",
        "[PSNR, LPIPS]",
        "--accelerator",
        "cpu",
        "--log_dir",
        str(tmp_path / "b"),
    ]
    proc = run("bench.py", *args, env=env)
    assert "alexnet-owt-7be5be79.pth" in proc.stderr  # the one line naming the missing file
    rows = list(csv.DictReader(next((tmp_path / "b").glob("*/version_0/bench.csv")).open()))
    assert all(r["LPIPS"] == "n/a" for r in rows) and all(float(r["PSNR"]) > 0 for r in rows)
    strict = run("bench.py", *args, "--strict_metrics", "true", env=env, check=False)
    assert strict.returncode == 2 and "error: " in strict.stderr and "LPIPS" in strict.stderr
    assert "Traceback" not in strict.stderr
    # the failed run leaves no empty version_1 behind (only the finished version_0)
    assert [p.name for p in (tmp_path / "b").glob("*/version_*")] == ["version_0"]


def test_infer_sizes_names_rerun_and_bad_files(trained, tmp_path):
    ckpt = trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt"
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 60, (399, 601, 3), dtype=np.uint8)).save(folder / "ночь 01.png")
    Image.fromarray(rng.integers(0, 60, (1, 1, 3), dtype=np.uint8)).save(folder / "tiny.png")
    Image.fromarray(rng.integers(0, 60, (5, 3), dtype=np.uint8), mode="L").save(folder / "grey.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    args = [
        "--checkpoint_path",
        str(ckpt),
        "--input",
        str(folder),
        "--accelerator",
        "cpu",
        "--log_dir",
        str(tmp_path / "out"),
        "--experiment_name",
        "inf",
    ]
    first = run("infer.py", *args, check=False)
    assert first.returncode != 0 and "broken.jpg" in first.stdout + first.stderr
    out = tmp_path / "out" / "inf" / "inference" / "photos"
    assert Image.open(out / "ночь 01.png").size == (601, 399)
    assert Image.open(out / "tiny.png").size == (1, 1)
    assert Image.open(out / "grey.png").mode == "RGB" and Image.open(out / "grey.png").size == (3, 5)
    assert not (out / "broken.png").exists()
    assert "enhanced 3" in first.stdout and "failed 1" in first.stdout
    (folder / "broken.jpg").unlink()
    second = run("infer.py", *args)
    assert "enhanced 0, skipped (already done) 3" in second.stdout
    single = run("infer.py", *args[:2], "--input", str(folder / "tiny.png"), *args[4:], "--overwrite", "true")
    assert "enhanced 1" in single.stdout


@pytest.mark.parametrize("script", ["train.py", "valid.py", "bench.py", "infer.py"])
def test_help(script):
    out = run(script, "--help").stdout
    assert "--config" in out and "--print_config" in out
    if script != "train.py":
        assert "--checkpoint_path" in out
    else:
        for flag in ("--train_data_path", "--image_size", "--embed_dim", "--lr", "--precision", "--patience"):
            assert flag in out


def test_print_config_and_config_round_trip(tmp_path):
    printed = run("train.py", "--image_size", "96", "--embed_dim", "16", "--print_config").stdout
    config = yaml.safe_load(printed)
    assert config["image_size"] == 96 and config["embed_dim"] == 16 and config["precision"] == "bf16-mixed"
    path = tmp_path / "cfg.yaml"
    path.write_text(printed)
    again = run("train.py", "--config", str(path), "--print_config").stdout
    assert yaml.safe_load(again) == config


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kernel_size", "4"], "kernel_size must be a positive odd number"),
        (["--image_size", "abc"], "Parser key \"image_size\":\n  Expected a <class 'int'>. Got value: abc"),
        (["--precision", "12"], "precision must be one of"),
        (["--embed_dim", "10", "--num_heads", "3"], "multiple of num_heads"),
        (["--devices", "0"], "devices must be a count"),
        (["--devices", "[0, 0]"], "devices must be a count"),
    ],
)
def test_wrong_values_get_a_message_not_a_traceback(args, message):
    proc = run("train.py", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_devices_take_every_form_the_help_names(tmp_path):
    """A count, -1, auto, '0,1' and a list '[0, 1]' (on the command line or in a config file) reach
    Lightning as values it accepts (a list used to stay the string '[0, 1]' and fail inside it);
    bench/infer use the first listed device."""
    import train
    from engine.engine import LightningEngine
    from utils.hparams import first_device_index
    from utils.utils import parse_hparams

    config = tmp_path / "devices.yaml"
    config.write_text("devices: [2, 3]\n")
    cases = {"2": 2, "-1": -1, "auto": "auto", "0,1": "0,1", "[0, 1]": [0, 1]}
    for flag, expected in cases.items():
        assert parse_hparams(train.TrainHparams, "", ["--devices", flag]).devices == expected
    assert parse_hparams(train.TrainHparams, "", ["--config", str(config)]).devices == [2, 3]
    assert [first_device_index(d) for d in ([2, 3], "2,3", 2, "auto")] == [2, 2, 0, 0]
    assert LightningEngine(accelerator="cpu", devices=[0]).device() == torch.device("cpu")


def test_boolean_flags_take_the_bare_form_a_value_their_negation_or_a_config(tmp_path):
    """``--resume`` as a user types it first, ``--resume true/false``, ``--no_resume`` and a config
    file's ``resume: true`` all reach the hyper-parameters (the bare form used to fail with
    "expected one argument"), and a bare flag does not swallow the next one."""
    import bench
    import train
    from utils.utils import parse_hparams

    def parsed(*argv: str) -> train.TrainHparams:
        return parse_hparams(train.TrainHparams, "", list(argv))

    assert parsed("--resume").resume is True and parsed().resume is False
    assert parsed("--resume", "false").resume is False and parsed("--resume", "yes").resume is True
    assert parsed("--resume", "--no_resume").resume is False
    both = parsed("--deterministic", "--max_epochs", "3", "--compile")
    assert both.deterministic and both.compile and both.max_epochs == 3
    config = tmp_path / "resume.yaml"
    config.write_text("resume: true\nsqrt_input: false\n")
    from_file = parsed("--config", str(config))
    assert from_file.resume is True and from_file.sqrt_input is False
    assert parse_hparams(bench.BenchHparams, "", ["--self_ensemble"]).self_ensemble is True
    assert "--resume [{true,yes,false,no}]" in run("train.py", "--help").stdout


def test_self_ensemble_averages_the_eight_transforms():
    class ShiftRight(torch.nn.Module):  # not flip/rotation equivariant
        def forward(self, x):
            return torch.roll(x, 1, dims=-1)

    class Double(torch.nn.Module):  # equivariant
        def forward(self, x):
            return 2 * x

    x = torch.rand(1, 3, 6, 6)
    cpu = torch.device("cpu")
    assert torch.allclose(Enhance(Double(), cpu, self_ensemble=True)(x), 2 * x)
    ensemble = Enhance(ShiftRight(), cpu, self_ensemble=True)(x)
    # The 8 conjugates of a one-pixel shift are the four one-pixel shifts, twice each.
    expected = sum(torch.roll(x, s, dims=d) for s in (1, -1) for d in (-1, -2)) / 4
    assert torch.allclose(ensemble, expected, atol=1e-6)


def test_ddp_two_cpu_processes_one_epoch(tmp_path):
    """train.py --accelerator cpu --devices 2 --strategy ddp (gloo): one run folder, rank-0 files only,
    and each rank sees half of the training pairs per epoch."""
    ddp = {"devices": 2, "strategy": "ddp", "batch_size": 4, "max_epochs": 1, "session": "frozen"}
    run("train.py", *sample_run(tmp_path, "ddp", **ddp, **no_closing(tmp_path)))
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["version_0"]
    result = json.loads((tmp_path / "ddp/version_0/frozen/result.json").read_text())
    pairs = len(list((SAMPLE / "1_train/SkimageSynth/low").iterdir()))
    assert result["global_step"] == math.ceil(math.ceil(pairs / 2) / 4)  # per-rank shard, batch 4
    assert len(list((tmp_path / "ddp/version_0/frozen").glob("events.out.tfevents.*"))) >= 1
    assert sorted(p.name for p in (tmp_path / "ddp/version_0/frozen/checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]


def test_infer_with_several_devices_runs_once_on_one(trained, tmp_path):
    ckpt = trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt"
    proc = run(
        "infer.py",
        "--checkpoint_path",
        str(ckpt),
        "--infer_data_path",
        str(SAMPLE / "4_infer"),
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--log_dir",
        str(tmp_path),
    )
    assert "run on one device" in proc.stderr
    assert "enhanced 2," in proc.stdout


def test_torchrun_two_cpu_processes_share_one_run_folder(tmp_path):
    """Under torchrun every process starts on its own: rank 0 picks the folder, the other finds it."""
    ddp = {"devices": 2, "strategy": "ddp", "max_epochs": 1, "session": "frozen"}
    flags = sample_run(tmp_path, "tr", **ddp, **no_closing(tmp_path))
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    proc = run_python(*torchrun, ROOT / "train.py", *flags, fresh=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [p.name for p in (tmp_path / "tr").iterdir() if not p.name.startswith(".")] == ["version_0"]
    assert proc.stdout.count("IllRecNet training finished") == 1
    result = json.loads((tmp_path / "tr/version_0/frozen/result.json").read_text())
    pairs = len(list((SAMPLE / "1_train/SkimageSynth/low").iterdir()))
    assert result["global_step"] == math.ceil(math.ceil(pairs / 2) / 4)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    bf16 = {"precision": "bf16-mixed", "max_epochs": 1, "session": "frozen"}
    run("train.py", *sample_run(tmp_path, "bf16", **bf16, **no_closing(tmp_path)))
    result = json.loads((tmp_path / "bf16/version_0/frozen/result.json").read_text())
    assert np.isfinite(result["valid_psnr"]) and result["global_step"] == 3
    hparams = torch.load(tmp_path / "bf16/version_0/frozen/checkpoints/last.ckpt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in hparams["state_dict"].values() if v.is_floating_point())


def test_ddp_validation_counts_every_image_once(trained, tmp_path):
    """Three validation pairs on two ranks: the synced means equal one device's (a padded sampler
    would score one image twice), and rank 0 alone writes the report."""
    ckpt = trained["run_dir"] / "trainable" / "checkpoints" / "best.ckpt"
    split = tmp_path / "valid3" / "Mixed"
    for part in ("low", "high"):
        (split / part).mkdir(parents=True)
        for source in ("2_valid", "3_bench"):
            for path in sorted((SAMPLE / source / "SkimageSynth" / part).iterdir()):
                shutil.copy(path, split / part / path.name)
        (split / part / "rocket_1.png").unlink()  # 3 pairs: chelsea_0, chelsea_1, rocket_0
    common = ["--checkpoint_path", str(ckpt), "--valid_data_path", str(tmp_path / "valid3"),
              "--accelerator", "cpu", "--num_workers", "0"]  # fmt: skip
    run("valid.py", *common, "--devices", "1", "--log_dir", str(tmp_path / "one"))
    run("valid.py", *common, "--devices", "2", "--strategy", "ddp", "--log_dir", str(tmp_path / "two"))
    one = json.loads(next((tmp_path / "one").glob("*/version_0/valid.json")).read_text())
    reports = list((tmp_path / "two").glob("*/version_*/valid.json"))
    assert len(reports) == 1
    two = json.loads(reports[0].read_text())
    for key in ("valid/psnr", "valid/ssim", "valid/3_total"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def test_every_script_runs_the_checks_of_every_group_it_combines() -> None:
    """A wrong value is rejected in each script's flat hyper-parameters, whichever group it belongs to
    (each group's check chains to the next: none is skipped by the dataclass MRO)."""
    import bench
    import infer
    import train
    import valid
    from tools.quality import QualityHparams
    from utils import hparams

    bad = {
        hparams.CacheHparams: ({"cache_gb": -1}, "cache_gb must be >= 0"),
        hparams.DataHparams: ({"image_size": 4}, "image_size must be >= 8"),
        hparams.ModelHparams: ({"channels": 0}, "channels must be >= 1"),
        hparams.OptimHparams: ({"lr": 0}, "lr must be > 0"),
        hparams.RuntimeHparams: ({"num_nodes": 0}, "num_nodes must be >= 1"),
        hparams.TrainLoopHparams: ({"max_epochs": 0}, "max_epochs must be >= 1"),
        hparams.TileHparams: ({"tile_overlap": -1}, "--tile_overlap must be >= 0"),
    }
    scripts = [train.TrainHparams, valid.ValidHparams, bench.BenchHparams, infer.InferHparams, QualityHparams]
    checked = 0
    for script in scripts:
        script(checkpoint_path="m.ckpt") if script is not QualityHparams else script()  # defaults pass
        for group, (value, message) in bad.items():
            if issubclass(script, group):
                kwargs = {} if script is QualityHparams else {"checkpoint_path": "m.ckpt"}
                with pytest.raises(ValueError, match=message):
                    script(**kwargs, **value)
                checked += 1
    assert checked >= 14  # train alone combines six groups
