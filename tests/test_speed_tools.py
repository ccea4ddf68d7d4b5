"""The yardstick U-Net, the speed report and the quality comparison (tools/)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, TINY_MODEL, keeps_shape, run_python
from tools.compare_quality import CompareHparams, Side, pair_by_seed
from tools.compare_quality import main as compare_main
from tools.quality import (
    QualityHparams,
    SyntheticPairs,
    gain_interval,
    holdout_pairs,
    holdout_references,
    load_photos,
)
from tools.quality import main as quality_main
from tools.speed_report import TARGETS, compare, interleaved, markdown
from tools.yardstick import YardstickUNet

SAMPLE_HIGH = ROOT / "sample" / "1_train" / "SkimageSynth" / "high"


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = run_python("-m", module, *args, timeout=timeout, fresh=False)
    assert proc.returncode == 0, (
        f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def test_yardstick_has_about_1_93m_parameters():
    params = sum(p.numel() for p in YardstickUNet().parameters())
    assert abs(params - 1.93e6) <= 0.02 * 1.93e6, params


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 48)])
def test_yardstick_keeps_odd_sizes(size):
    assert keeps_shape(YardstickUNet(), 2, 3, *size)


def test_retinexformer_reference_has_the_papers_size_and_lights_up_its_input():
    """The reference has Retinexformer's 1.61 M parameters, keeps any size, and starts from the
    lit-up image: with the light-up map and the residual at zero it returns its input."""
    from tools.quality import QualityHparams
    from tools.retinexformer import RetinexformerReference

    model = RetinexformerReference()
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 1.61e6) <= 0.01 * 1.61e6, params
    for size in [(1, 1), (37, 53)]:
        assert keeps_shape(model, 1, 3, *size)
    with torch.no_grad():
        for conv in (model.estimator.to_map, model.out):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        x = torch.rand(1, 3, 21, 30)
        torch.testing.assert_close(model(x), x)
    assert QualityHparams(models=["retinexformer"]).models == ["retinexformer"]
    with pytest.raises(ValueError, match="retinexformer"):
        QualityHparams(models=["unet"])


def test_interleaved_timing_alternates_and_pairs_ratios():
    calls = []
    times = interleaved(
        {"illrecnet": lambda: calls.append("A"), "yardstick": lambda: calls.append("B")},
        3,
        1,
        torch.device("cpu"),
    )
    assert calls == ["A", "B"] * 4  # one warm-up round, then three timed rounds, A B A B ...
    assert len(times["illrecnet"]) == len(times["yardstick"]) == 3
    summary = compare({"illrecnet": [2.0, 4.0, 9.0], "yardstick": [1.0, 1.0, 3.0]})
    assert summary["ratio"] == 3.0  # median of the per-round ratios 2, 4, 3
    assert summary["illrecnet_s"] == 4.0 and summary["yardstick_s"] == 1.0


@pytest.mark.slow
def test_speed_report_quick_writes_every_field(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_module("tools.speed_report", "--quick", "true", "--output", str(out))
    report = json.loads(out.read_text())
    for key in ("machine", "settings", "model_config", "illrecnet", "yardstick", "latency", "train_step"):
        assert key in report, key
    for key in ("peak_memory", "flops", "data_pipeline", "targets", "markdown"):
        assert key in report, key
    for model in ("illrecnet", "yardstick"):
        assert report[model]["params"] > 0
        assert len(report[model]["gmacs"]) == 2 and all(v > 0 for v in report[model]["gmacs"].values())
        assert report["peak_memory"][model]["bytes"] > 1e6  # a forward's activations, measured in a worker
        assert report["peak_memory_tiled"][model]["bytes"] > 1e6
    # the tiled row runs infer.py's path: an image above max_pixels, which it tiles
    tiled = report["peak_memory_tiled"]
    assert tiled["size"] == "320x256" and 320 * 256 > tiled["max_pixels"]
    assert "inference as infer.py runs it (tiled above 65,536 pixels)" in proc.stdout
    assert len(report["latency"]) == 2
    for entry in (*report["latency"].values(), report["train_step"]):
        assert entry["illrecnet_s"] > 0 and entry["yardstick_s"] > 0 and entry["ratio"] > 0
    assert report["flops"]["matmul_peak_gflops"] > 0 and report["flops"]["illrecnet_fraction"] > 0
    for key in ("data_pipeline", "data_pipeline_from_disk", "data_pipeline_photos"):
        assert report[key]["samples_per_s"] > 0 and report[key]["ratio"] > 0
    assert "photo folders (low images synthesized on the fly" in proc.stdout
    # the target row is the pipeline as train.py runs it: the sample's decoded images fit in memory
    assert report["data_pipeline"]["in_memory"] and not report["data_pipeline_from_disk"]["in_memory"]
    assert (
        "decoded images in memory, as train.py" in proc.stdout
        and "decoded from disk (`--cache_gb 0`)" in proc.stdout
    )
    io = report["image_io"]  # the PNG an infer run reads and the one it writes, at the memory size
    assert io["size"] == "72x56" and io["decode_s"] > 0 and io["encode_s"] > 0 and io["png_bytes"] > 0
    assert "infer.py's file I/O per 72x56 image" in proc.stdout
    assert set(report["targets"]) == set(TARGETS)
    assert all(t["status"] in ("PASS", "FAIL") for t in report["targets"].values())
    assert "| inference" in proc.stdout and ("PASS" in proc.stdout or "FAIL" in proc.stdout)
    # each timing is on stderr as soon as it is measured (a run stopped later still shows it)
    assert "  inference 48x40: IllRecNet" in proc.stderr and "  training step: IllRecNet" in proc.stderr
    assert "TF32" not in report["markdown"]  # a CPU report has nothing to say about it
    # a CUDA report says whether cuDNN convolutions ran in TF32 (PyTorch's default) or strict fp32
    report["machine"] |= {"device": "cuda", "tf32": {"cudnn": True, "matmul": False}}
    assert "TF32 in cuDNN convolutions on, in matrix products off" in markdown(report)


def test_synthetic_pairs_are_reproducible_and_darker():
    photo = torch.rand(40, 50, 3).numpy()
    first = SyntheticPairs([photo], crop=16, batch_size=3, seed=5).batch()
    second = SyntheticPairs([photo], crop=16, batch_size=3, seed=5).batch()
    low, high = first
    assert low.shape == high.shape == (3, 3, 16, 16)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert low.mean() < high.mean()
    # one regime draws exactly the stream of before regimes; several draw one regime per crop
    default = SyntheticPairs([photo], crop=16, batch_size=3, seed=5, regimes=("default",)).batch()
    assert torch.equal(default[0], low) and torch.equal(default[1], high)
    mixed = SyntheticPairs([photo], crop=16, batch_size=3, seed=5, regimes=("mild", "extreme")).batch()
    assert not torch.equal(mixed[0], low)


def test_held_out_pairs_per_regime_get_darker_from_mild_to_extreme():
    references = holdout_references(None, max_side=32)
    assert sorted(references) == ["astronaut", "chelsea", "coffee", "rocket"]
    legacy = holdout_pairs(0, references, ["default"], draws=2)["default"]
    names = [name for name, _, _ in legacy]
    assert len(names) == len(set(names)) == 8 and names[:2] == ["astronaut#0", "astronaut#1"]
    by_regime = holdout_pairs(0, references, ["mild", "lol", "extreme"])
    assert [len(pairs) for pairs in by_regime.values()] == [4, 4, 4]
    brightness = {r: float(np.mean([low.mean() for _, low, _ in pairs])) for r, pairs in by_regime.items()}
    assert brightness["mild"] > brightness["lol"] > brightness["extreme"]
    again = holdout_pairs(0, references, ["lol"])["lol"]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, by_regime["lol"], strict=True))
    other_seed = holdout_pairs(1, references, ["lol"])["lol"]
    assert not torch.equal(other_seed[0][1], again[0][1])


def test_the_held_out_photos_are_every_second_file_of_the_folder(tmp_path):
    for i in range(5):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    assert sorted(holdout_references(str(tmp_path), max_side=16)) == ["p0.png", "p2.png", "p4.png"]
    assert holdout_references(str(tmp_path), max_side=16)["p2.png"].shape == (11, 16, 3)
    with pytest.raises(FileNotFoundError, match="--holdout_dir"):
        holdout_references(str(tmp_path / "none"), max_side=16)
    with pytest.raises(ValueError, match="regimes must be distinct names"):
        QualityHparams(regimes=["lol", "dark"])


def test_quality_without_training_photos_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--train_dir") as err:
        load_photos(["empty"])
    assert str(tmp_path / "empty") in str(err.value)  # resolved, so a wrong working folder shows
    assert QualityHparams().train_dir == ["../shared/datasets/natural"]  # no absolute path


TINY_QUALITY = dict(
    train_dir=[str(SAMPLE_HIGH)],
    holdout_dir=str(SAMPLE_HIGH),
    steps=3,
    image_size=32,
    holdout_max_side=48,
    **TINY_MODEL,
)
"""A tools.quality recipe that trains in seconds."""


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory) -> tuple[Path, dict]:
    """Both models of the tiny recipe at seeds 0 and 3: the JSON file and what main returned."""
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    return out, quality_main(QualityHparams(**TINY_QUALITY, seeds=[0, 3], output=str(out)))


def test_quality_runs_end_to_end(quality_run):
    out, results = quality_run
    saved = json.loads(out.read_text())
    assert saved["target"] == results["target"]
    assert [run["seed"] for run in saved["runs"]] == [0, 3]
    for name in ("illrecnet", "yardstick"):
        entry = saved["models"][name]
        assert entry["train_s"] > 0 and 0 < entry["ssim"] <= 1 and entry["psnr"] > 0
        assert entry["psnr"] == pytest.approx(sum(entry["psnr_per_seed"]) / 2)
        losses = [run["models"][name]["final_l1"] for run in saved["runs"]]
        assert entry["final_l1"] == pytest.approx(sum(losses) / 2) and min(losses) > 0
        for run in saved["runs"]:
            regimes = run["models"][name]["regimes"]
            assert list(regimes) == ["mild", "lol", "extreme"]
            assert all(len(r["per_image"]) == 5 for r in regimes.values())  # every second of 10 photos
            mean = sum(r["psnr"] for r in regimes.values()) / 3
            assert run["models"][name]["psnr"] == pytest.approx(mean)
    # the two seeds draw different held-out pairs and initialisations
    assert saved["runs"][0]["dark_input"]["psnr"] != saved["runs"][1]["dark_input"]["psnr"]
    assert entry["psnr_per_seed"][0] != entry["psnr_per_seed"][1]
    target = saved["target"]["regimes"]
    assert {r: t["target_db"] for r, t in target.items()} == {"mild": 3.0, "lol": 3.0, "extreme": 3.5}
    assert saved["target"]["pass"] == all(t["pass"] for t in target.values())
    gains = target["lol"]["psnr_gain_per_seed"]
    ill, yard = saved["models"]["illrecnet"]["regimes"]["lol"], saved["models"]["yardstick"]["regimes"]["lol"]
    assert gains == pytest.approx(
        [i - y for i, y in zip(ill["psnr_per_seed"], yard["psnr_per_seed"], strict=True)]
    )
    assert sum(gains) / 2 == pytest.approx(target["lol"]["psnr_gain_db"])
    assert f"lol: IllRecNet - yardstick {target['lol']['psnr_gain_db']:+.2f} dB" in saved["markdown"]
    assert f"per seed {gains[0]:+.2f} / {gains[1]:+.2f}" in saved["markdown"]
    low, high = target["lol"]["psnr_gain_ci95"]  # two seeds: t(0.975, 1 dof) = 12.706
    assert high - low == pytest.approx(2 * 12.706 * abs(gains[0] - gains[1]) / 2, rel=1e-4)
    assert f"95 % interval {low:+.2f} to {high:+.2f}" in saved["markdown"]
    assert "Regime **extreme**" in saved["markdown"] and "Mean over the regimes" in saved["markdown"]
    assert f"| {saved['models']['yardstick']['final_l1']:.4f} |" in saved["markdown"]
    assert saved["recipe"]["steps"] == 3 and saved["train_photos"] == 10
    assert saved["machine"] == "CPU, 2 threads"
    with pytest.raises(ValueError, match="seeds"):
        QualityHparams(seeds=[1, 1])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            QualityHparams(device="cuda")


def test_quality_reuses_saved_models_instead_of_retraining(tmp_path, capsys):
    models_dir = tmp_path / "models"
    first = quality_main(
        QualityHparams(
            **TINY_QUALITY, regimes=["lol"], models_dir=str(models_dir), output=str(tmp_path / "a.json")
        )
    )
    saved = sorted(p.name for p in models_dir.glob("*.pt"))
    assert [name.split("_")[:2] for name in saved] == [["illrecnet", "seed0"], ["yardstick", "seed0"]]
    assert "training illrecnet" in capsys.readouterr().err
    # scoring one more regime later loads both models: same weights, same scores, no training
    more = quality_main(
        QualityHparams(
            **TINY_QUALITY,
            regimes=["lol", "camera"],
            models_dir=str(models_dir),
            output=str(tmp_path / "b.json"),
        )
    )
    err = capsys.readouterr().err
    assert "training" not in err and err.count("loaded ") == 2
    for name in ("illrecnet", "yardstick"):
        before, after = first["runs"][0]["models"][name], more["runs"][0]["models"][name]
        assert after["regimes"]["lol"]["per_image"] == before["regimes"]["lol"]["per_image"]
        assert after["final_l1"] == before["final_l1"] and after["train_s"] == before["train_s"]
        assert list(after["regimes"]) == ["lol", "camera"]
    # ... and reads the scores of the regime it already scored: one more regime, scored anew
    scores = sorted(
        p.name.split("_seed")[0] + "/" + p.name.split("_")[-2] for p in (models_dir / "scores").iterdir()
    )
    assert len(scores) == 6 and scores.count("dark/lol") == 1 and scores.count("dark/camera") == 1
    lol_file = next((models_dir / "scores").glob("dark_seed0_lol_*.json"))
    lol_file.write_text(lol_file.read_text().replace('"psnr": ', '"psnr": 1', 1))  # as if edited by hand
    again = quality_main(
        QualityHparams(
            **TINY_QUALITY, regimes=["lol"], models_dir=str(models_dir), output=str(tmp_path / "d.json")
        )
    )
    assert again["runs"][0]["dark_input"]["regimes"]["lol"]["psnr"] != first["runs"][0]["dark_input"]["psnr"]
    assert (
        again["runs"][0]["models"]["illrecnet"]["regimes"]
        == first["runs"][0]["models"]["illrecnet"]["regimes"]
    )
    lol_file.write_text("{")  # damaged: named, not silently rescored
    with pytest.raises(RuntimeError, match=f"{lol_file.name}: not readable tools.quality scores"):
        quality_main(QualityHparams(**TINY_QUALITY, regimes=["lol"], models_dir=str(models_dir)))
    lol_file.unlink()
    # anything that changes the training (a model flag, the training regimes) trains a new model
    quality_main(
        QualityHparams(
            **(TINY_QUALITY | {"embed_dim": 4}),
            models=["illrecnet"],
            regimes=["lol"],
            models_dir=str(models_dir),
            output=str(tmp_path / "c.json"),
        )
    )
    assert "training illrecnet" in capsys.readouterr().err and len(list(models_dir.glob("*.pt"))) == 3
    # a damaged file is named, not silently retrained over
    damaged = models_dir / saved[1]
    damaged.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=f"{damaged.name}: not a readable tools.quality model"):
        quality_main(QualityHparams(**TINY_QUALITY, regimes=["lol"], models_dir=str(models_dir)))


def test_gain_interval_over_seeds():
    # the ten per-seed gains of the README's width-32 model (CPU): mean +3.37, 95 % interval 2.99 to 3.76
    gains = [3.47, 2.85, 3.30, 4.32, 2.86, 3.05, 3.01, 3.43, 4.29, 3.15]
    spread = gain_interval(gains)
    sd = (sum((g - 3.373) ** 2 for g in gains) / 9) ** 0.5
    assert spread["mean"] == pytest.approx(3.373)
    assert spread["se"] == pytest.approx(sd / 10**0.5)
    half = 2.2622 * spread["se"]  # Student's t(0.975) with 9 degrees of freedom
    assert spread["ci95"] == pytest.approx([3.373 - half, 3.373 + half], abs=1e-3)
    assert [round(v, 2) for v in spread["ci95"]] == [2.99, 3.76]
    assert gain_interval([3.0]) == {"mean": 3.0, "se": None, "ci95": None}


def test_quality_cli_help():
    proc = run_module("tools.quality", "--help", timeout=120)
    for flag in ("--steps", "--train_dir", "--embed_dim", "--output", "--device"):
        assert flag in proc.stdout


def test_compare_quality_pairs_the_runs_of_each_seed(quality_run, tmp_path):
    baseline_file, baseline = quality_run
    # a wider IllRecNet alone, at seed 3 (shared with the baseline) and seed 5 (baseline lacks it)
    variant_file = tmp_path / "wide.json"
    variant = quality_main(
        QualityHparams(
            **(TINY_QUALITY | {"embed_dim": 12}), models=["illrecnet"], seeds=[3, 5], output=str(variant_file)
        )
    )
    out = tmp_path / "compare.json"
    result = compare_main(
        CompareHparams(baseline=[str(baseline_file)], variant=[str(variant_file)], output=str(out))
    )
    assert json.loads(out.read_text()) == result
    assert result["seeds"] == [3] and result["only_baseline"] == [0] and result["only_variant"] == [5]
    assert result["model_changes"] == {"embed_dim": [8, 12]}
    ill_base, ill_var = baseline["runs"][1]["models"]["illrecnet"], variant["runs"][0]["models"]["illrecnet"]
    for key in ("psnr", "ssim", "psnr_gtmean", "final_l1"):
        score = result["scores"][key]
        assert score["diff_per_seed"] == [pytest.approx(ill_var[key] - ill_base[key])]
        assert score["diff_se"] is None  # one common seed: no spread
    for regime in ("mild", "lol", "extreme"):  # and per regime
        score = result["scores"][f"{regime}/psnr"]
        diff = ill_var["regimes"][regime]["psnr"] - ill_base["regimes"][regime]["psnr"]
        assert score["diff_per_seed"] == [pytest.approx(diff)]
        assert f"| PSNR (dB), {regime} |" in result["markdown"]
    better = ill_var["final_l1"] < ill_base["final_l1"]  # the L1 is better when lower
    assert result["scores"]["final_l1"]["variant_better_on"] == int(better)
    assert "embed_dim: 8 -> 12" in result["markdown"] and "variant seeds [5]" in result["markdown"]

    # the same variant against the baseline file's yardstick: its gain over the yardstick at seed 3
    yard = compare_main(
        CompareHparams(
            baseline=[str(baseline_file)],
            variant=[str(variant_file)],
            baseline_model="yardstick",
            output=str(tmp_path / "gain.json"),
        )
    )
    gain = ill_var["psnr"] - baseline["runs"][1]["models"]["yardstick"]["psnr"]
    assert yard["scores"]["psnr"]["diff_per_seed"] == [pytest.approx(gain)]
    assert yard["model_changes"] == {}

    # seeds gathered from two files on one side: both seeds of the variant pair with the baseline's
    wider = json.loads(variant_file.read_text())
    wider["runs"][1]["seed"] = 0  # stands in for a separate run of seed 0
    split = tmp_path / "seed0.json"
    split.write_text(json.dumps(wider | {"runs": [wider["runs"][1]]}))
    only3 = tmp_path / "seed3.json"
    only3.write_text(json.dumps(wider | {"runs": [wider["runs"][0]]}))
    both = pair_by_seed(
        Side("baseline", [str(baseline_file)], "illrecnet"),
        Side("variant", [str(only3), str(split)], "illrecnet"),
    )
    assert both["seeds"] == [0, 3]
    diffs = both["scores"]["psnr"]["diff_per_seed"]
    assert both["scores"]["psnr"]["diff_mean"] == pytest.approx(sum(diffs) / 2)
    assert both["scores"]["psnr"]["diff_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2)


def test_compare_quality_refuses_what_is_not_a_paired_comparison(quality_run, tmp_path):
    baseline_file, _ = quality_run
    saved = json.loads(baseline_file.read_text())

    def write(name: str, results: dict) -> str:
        (tmp_path / name).write_text(json.dumps(results))
        return str(tmp_path / name)

    longer = write("longer.json", saved | {"recipe": saved["recipe"] | {"steps": 30}})
    with pytest.raises(ValueError, match="steps: 3 against 30") as err:
        pair_by_seed(
            Side("baseline", [str(baseline_file)], "illrecnet"), Side("variant", [longer], "illrecnet")
        )
    assert str(baseline_file) in str(err.value) and longer in str(err.value)
    with pytest.raises(ValueError, match="seed 0 is in both"):  # the same seed twice on one side
        Side("variant", [str(baseline_file), write("again.json", saved)], "illrecnet")
    wider = write("wider.json", saved | {"recipe": saved["recipe"] | {"embed_dim": 12}})
    with pytest.raises(ValueError, match="embed_dim: 8 against 12"):  # two configurations on one side
        Side("variant", [str(baseline_file), wider], "illrecnet")
    other_seeds = write("other.json", saved | {"runs": [run | {"seed": 7} for run in saved["runs"][:1]]})
    with pytest.raises(ValueError, match=r"no seed in common: baseline has \[0, 3\], variant \[7\]"):
        pair_by_seed(
            Side("baseline", [str(baseline_file)], "illrecnet"), Side("variant", [other_seeds], "illrecnet")
        )
    alone = write(
        "alone.json",
        saved
        | {"runs": [{**run, "models": {"illrecnet": run["models"]["illrecnet"]}} for run in saved["runs"]]},
    )
    with pytest.raises(ValueError, match="alone.json: has no yardstick results"):
        Side("baseline", [alone], "yardstick")
    no_gtmean = saved | {"runs": [json.loads(json.dumps(run)) for run in saved["runs"]]}
    del no_gtmean["runs"][1]["models"]["illrecnet"]["psnr_gtmean"]
    with pytest.raises(ValueError, match="old_run.json: the illrecnet results lack psnr_gtmean"):
        Side("variant", [write("old_run.json", no_gtmean)], "illrecnet")
    with pytest.raises(ValueError, match="speed.json: not a readable tools.quality result"):
        Side("baseline", [write("speed.json", {"parameters": 1})], "illrecnet")
    mixed = write("mixed.json", saved | {"recipe": saved["recipe"] | {"train_regimes": ["lol"]}})
    with pytest.raises(ValueError, match=r"train_regimes: \['mild', 'lol', 'extreme'\] against \['lol'\]"):
        pair_by_seed(
            Side("baseline", [str(baseline_file)], "illrecnet"), Side("variant", [mixed], "illrecnet")
        )
    # a result from before an option existed ran with its legacy value: sqrt_input off
    old = write(
        "old.json", saved | {"recipe": {k: v for k, v in saved["recipe"].items() if k != "sqrt_input"}}
    )
    assert pair_by_seed(
        Side("baseline", [str(baseline_file)], "illrecnet"), Side("variant", [old], "illrecnet")
    )["model_changes"] == {"sqrt_input": [True, False]}


def test_compare_quality_cli_names_the_problem(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return run_python("-m", "tools.compare_quality", *args, timeout=120, fresh=False)

    missing = str(tmp_path / "missing.json")
    proc = run(
        "--baseline", f"[{missing}]", "--variant", f"[{missing}]", "--output", str(tmp_path / "c.json")
    )
    assert proc.returncode == 1 and f"{missing}: not a readable tools.quality result" in proc.stderr
    assert not (tmp_path / "c.json").exists()
    proc = run("--variant", f"[{missing}]")
    assert proc.returncode != 0 and "--baseline is required" in proc.stderr


def test_quality_model_keys_survive_a_new_model_flag(monkeypatch):
    """A model flag added later, at its legacy value (the model as it was), leaves the training key
    and so the file name of every model saved before it: those models still load instead of
    training again. At any other value it is a different model, with its own key."""
    import tools.quality as quality

    hp = QualityHparams(train_regimes=["lol"], full_res_dim=32)
    now = quality.training_key(hp, "illrecnet", 0)
    fields = quality.field_names(quality.ModelHparams)
    monkeypatch.setattr(quality, "field_names", lambda cls: [f for f in fields if f != "exposure_level"])
    assert quality.training_key(hp, "illrecnet", 0) == now  # as keyed before exposure_level existed
    monkeypatch.undo()
    assert (
        quality.training_key(
            QualityHparams(train_regimes=["lol"], full_res_dim=32, exposure_level=0.4), "illrecnet", 0
        )
        != now
    )
    assert quality.training_key(hp, "illrecnet", 1) != now
