"""bench.py --methods: checkpoints and folders of other methods' outputs under one protocol, tables in
four formats, paired differences, and the HTML report (in a real browser where one is installed)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from data.utils import DataError
from engine.compare import latex_escape, parse_methods
from model.model import LowLightEnhancerLightning
from tests.conftest import tiny_model

HOSTILE = "<img src=x onerror=alert(1)>"
NAMES = (HOSTILE, 'a&b "c"', "plain")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """A bench split with hostile file names, a tiny checkpoint, and folders of outputs: the
    checkpoint's own (infer.py), gamma-corrected inputs as JPEG, and the same as 16-bit PNG."""
    import bench as bench_script
    import infer

    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    split = root / "bench" / "Tiny"
    for side in ("low", "high"):
        (split / side).mkdir(parents=True)
    for name in NAMES:
        high = rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)
        Image.fromarray(high // 6).save(split / "low" / f"{name}.png")
        Image.fromarray(high).save(split / "high" / f"{name}.png")
    torch.manual_seed(0)
    module = LowLightEnhancerLightning(tiny_model())
    ckpt = root / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    infer.main(
        infer.InferHparams(
            checkpoint_path=str(ckpt),
            infer_data_path=str(root / "bench"),
            log_dir=str(root / "runs"),
            accelerator="cpu",
        )
    )
    saved = root / "runs" / "illrecnet" / "inference"
    (root / "gamma" / "Tiny").mkdir(parents=True)
    (root / "deep" / "Tiny").mkdir(parents=True)
    for name in NAMES:
        low = np.asarray(Image.open(split / "low" / f"{name}.png")) / 255.0
        Image.fromarray(np.round(255 * low ** (1 / 2.2)).astype(np.uint8)).save(
            root / "gamma" / "Tiny" / f"{name}.jpg", quality=90
        )
        deep = np.round(65535 * low ** (1 / 2.2)).astype(np.uint16)
        cv2.imwrite(str(root / "deep" / "Tiny" / f"{name}.png"), deep[..., ::-1])
    methods = [f"ours={ckpt}", f"saved={saved}", f"gamma={root / 'gamma'}", f"deep={root / 'deep'}"]
    hp = bench_script.BenchHparams(
        methods=methods,
        bench_data_path=str(root / "bench"),
        metrics=["PSNR", "SSIM"],
        report=True,
        log_dir=str(root / "out"),
        accelerator="cpu",
    )
    bench_script.main(hp)
    out = root / "out" / "illrecnet" / "version_0"
    return {"root": root, "out": out, "ckpt": ckpt, "methods": methods}


def read_rows(out: Path) -> list[dict]:
    with open(out / "bench.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_of_a_checkpoints_own_outputs_scores_what_the_checkpoint_scores(bench) -> None:
    rows = read_rows(bench["out"])
    assert {r["method"] for r in rows} == {"ours", "saved", "gamma", "deep"} and len(rows) == 12
    by = {(r["method"], r["image"]): r for r in rows}
    for name in NAMES:
        ours, saved = by[("ours", f"{name}.png")], by[("saved", f"{name}.png")]
        assert abs(float(ours["PSNR"]) - float(saved["PSNR"])) < 1e-6
        assert abs(float(ours["SSIM"]) - float(saved["SSIM"])) < 1e-6
    summary = json.loads((bench["out"] / "bench.json").read_text())
    sources = {m["label"]: m for m in summary["methods"]}
    assert sources["ours"]["kind"] == "checkpoint" and len(sources["ours"]["sha256"]) == 64
    assert sources["gamma"]["kind"] == "folder" and len(sources["gamma"]["files"]) == 3
    # the protocol line says what was scored: JPEGs as decoded, 16-bit PNGs scaled by their dtype
    assert "gamma: folder of 3 8-bit JPEG" in summary["protocol_line"]
    assert "deep: folder of 3 16-bit PNG (16-bit scaled by 65535)" in summary["protocol_line"]
    gamma_psnr = float(by[("gamma", "plain.png")]["PSNR"])
    deep_psnr = float(by[("deep", "plain.png")]["PSNR"])
    assert abs(gamma_psnr - deep_psnr) < 1.5  # the same curve: JPEG loss only, not a factor of 257


def test_tables_bold_the_best_and_the_paired_differences_match_a_hand_computation(bench) -> None:
    rows = read_rows(bench["out"])
    summary = json.loads((bench["out"] / "bench.json").read_text())
    table = summary["tables"]["all"]
    psnr = {m: [float(r["PSNR"]) for r in rows if r["method"] == m] for m in ("ours", "gamma")}
    diffs = np.array(psnr["gamma"]) - np.array(psnr["ours"])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    paired = table["paired"]["gamma"]["PSNR"]
    assert paired["mean"] == pytest.approx(diffs.mean(), abs=1e-5)
    assert paired["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-5)
    assert paired["better"] == int((diffs > 0).sum()) and paired["images"] == 3
    text = (bench["out"] / "table.md").read_text()
    best = max(table["means"], key=lambda m: table["means"][m]["PSNR"])
    line = next(x for x in text.splitlines() if x.startswith(f"| {best} |"))
    assert (
        f"**{table['means'][best]['PSNR']:.2f}**" in line or f"**{table['means'][best]['PSNR']:.4f}**" in line
    )
    assert "Paired per-image differences against ours" in text
    with open(bench["out"] / "table.csv", newline="") as f:
        means = list(csv.DictReader(f))
    assert {(r["method"], r["dataset"]) for r in means} >= {("ours", "Tiny"), ("gamma", "all")}


def test_the_latex_table_is_a_valid_booktabs_tabular(bench) -> None:
    tex = (bench["out"] / "table.tex").read_text()
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    for line in (x for x in body.splitlines() if x.strip() and x.strip() != "\\midrule"):
        assert line.rstrip().endswith("\\\\") and line.count("&") == len(spec) - 1, line
    assert (
        tex.index("\\toprule")
        < tex.index("\\midrule")
        < tex.index("\\bottomrule")
        < tex.index("\\end{tabular}")
    )
    assert latex_escape('a&b "c"_%#$') == 'a\\&b "c"\\_\\%\\#\\$'
    if shutil.which("pdflatex"):  # compile it as pasted where LaTeX is installed
        import subprocess

        doc = bench["root"] / "doc.tex"
        doc.write_text(
            "\\documentclass{article}\\usepackage{booktabs}\\begin{document}" + tex + "\\end{document}"
        )
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", doc.name], cwd=doc.parent, capture_output=True
        )
        assert done.returncode == 0, done.stdout[-2000:]


def test_every_folder_problem_is_reported_before_scoring(bench, tmp_path) -> None:
    """FAULTS 48: a missing output, one of another size, an unreadable one; extra files warned."""
    from data.utils import scan_split
    from engine.compare import check_folders, parse_methods

    broken = tmp_path / "broken" / "Tiny"
    shutil.copytree(bench["root"] / "gamma" / "Tiny", broken)
    (broken / "plain.jpg").unlink()  # missing
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(broken / 'a&b "c".jpg')  # another size
    (broken / f"{HOSTILE}.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # unreadable
    (broken / "extra.png").write_bytes((bench["root"] / "bench" / "Tiny" / "low" / "plain.png").read_bytes())
    pairs = scan_split(bench["root"] / "bench", require_high=False)
    references = {p: (36, 52) for group in pairs.values() for pair in group for p in (pair.low, pair.high)}
    with pytest.raises(DataError) as error:
        check_folders(parse_methods([f"broken={tmp_path / 'broken'}"]), pairs, references)
    message = str(error.value)
    assert "3 problem(s)" in message and "broken: missing output for Tiny/plain.png" in message
    assert "is 12 x 10 but its reference" in message and "52 x 36 (W x H)" in message
    assert f"{broken / (HOSTILE + '.jpg')}" in message
    import bench as bench_script

    hp = bench_script.BenchHparams(
        methods=[f"ours={bench['ckpt']}", f"broken={tmp_path / 'broken'}"],
        bench_data_path=str(bench["root"] / "bench"),
        metrics=["PSNR"],
        log_dir=str(tmp_path / "out"),
        accelerator="cpu",
    )
    with pytest.raises(DataError):
        bench_script.main(hp)
    assert not list((tmp_path / "out").rglob("bench.json"))  # nothing scored, no empty run folder left
    assert not list((tmp_path / "out").rglob("version_*"))


def test_method_labels_are_checked(tmp_path) -> None:
    """FAULTS 51: the same label twice, a label with a comma or '='."""
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="'x' is given twice"):
        parse_methods([f"x={tmp_path / 'a'}", f"x={tmp_path / 'a'}"])
    with pytest.raises(DataError, match="'my,label'"):
        parse_methods([f"my,label={tmp_path / 'a'}"])
    with pytest.raises(DataError, match="holds no ',' or '='"):
        parse_methods([f"a=b={tmp_path / 'a'}"])
    with pytest.raises(DataError, match="does not exist"):
        parse_methods([f"y={tmp_path / 'nothing'}"])
    assert parse_methods([str(tmp_path / "a")])[0].label == "a"


def test_the_report_holds_every_image_and_names_only_as_data(bench) -> None:
    page = (bench["out"] / "report.html").read_text()
    assert HOSTILE not in page  # only its escaped form, inside the JSON data block
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    )
    assert data["methods"] == ["ours", "saved", "gamma", "deep"]
    assert [row["image"] for row in data["rows"]] == [f"{n}.png" for n in NAMES]
    for row in data["rows"]:
        assert set(row["images"]) == {"low", "reference", "ours", "saved", "gamma", "deep"}
        for image in row["images"].values():
            assert (bench["out"] / image["thumb"]).is_file()
            assert (bench["out"] / unquote(image["full"])).is_file()  # the link opens the full image
            assert Image.open(bench["out"] / image["thumb"]).size[0] <= 256
    assert "http" not in page.replace("http-equiv", "")  # nothing from the network


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver; .ci/run installs
    them where apt can)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def test_the_report_works_in_a_real_browser(bench, browser, tmp_path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((bench["out"] / "report.html").resolve().as_uri())
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "h3.name")]
    assert titles == [f"Tiny / {name}.png" for name in NAMES]  # the hostile name shown as text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - nothing ran
    assert browser.execute_script("return document.querySelectorAll(\"img[src='x']\").length") == 0
    loaded = "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    images = browser.execute_script(loaded)
    assert len(images) == 3 * (6 + 2) and all(images)  # 6 thumbnails and the slider's two per row
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    rows = read_rows(bench["out"])
    psnr = {(r["method"], r["image"]): float(r["PSNR"]) for r in rows}
    order = lambda: [e.get_attribute("data-image") for e in browser.find_elements(By.CSS_SELECTOR, ".row")]  # noqa: E731
    Select(browser.find_element(By.ID, "sort")).select_by_visible_text("PSNR of gamma")
    assert order() == sorted((f"{n}.png" for n in NAMES), key=lambda n: -psnr[("gamma", n)])
    Select(browser.find_element(By.ID, "sort")).select_by_visible_text("PSNR: gamma minus ours")
    by_gain = sorted((f"{n}.png" for n in NAMES), key=lambda n: -(psnr[("gamma", n)] - psnr[("ours", n)]))
    assert order() == by_gain
    browser.find_element(By.ID, "descending").click()
    assert order() == by_gain[::-1]

    Select(browser.find_element(By.ID, "slider-b")).select_by_visible_text("gamma")
    over = browser.find_element(By.CSS_SELECTOR, ".row .slider img.top")
    first = browser.find_element(By.CSS_SELECTOR, ".row").get_attribute("data-image")
    page = (bench["out"] / "report.html").read_text()
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    thumb = next(row for row in data["rows"] if row["image"] == first)["images"]["gamma"]["thumb"]
    assert over.get_attribute("src") == (bench["out"] / thumb).resolve().as_uri()
    browser.execute_script(
        "const r = document.querySelector('.row input[type=range]'); r.value = 20;"
        "r.dispatchEvent(new Event('input'));"
    )
    assert "20%" in over.get_attribute("style")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_folder_outputs_are_decoded_once_and_score_as_read_from_disk(bench, tmp_path, monkeypatch) -> None:
    """The outputs decoded to check a folder are the ones scored (no second decode while they fit
    --cache_gb), and the scores are those of reading every file again (--cache_gb 0)."""
    import engine.compare as compare
    from data import utils as data_utils

    decodes: list[Path] = []
    original = data_utils.decode_image_array

    def counting(path, *args, **kwargs):
        decodes.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(compare, "decode_image_array", counting)
    monkeypatch.setattr(data_utils, "decode_image_array", counting)
    methods = parse_methods([f"gamma={bench['root'] / 'gamma'}", f"deep={bench['root'] / 'deep'}"])
    split = str(bench["root"] / "bench")
    device = torch.device("cpu")
    kept = compare.run_compare(methods, split, tmp_path / "kept", ["PSNR"], True, None, device, cache_gb=1.0)
    outputs = [p for p in decodes if "gamma" in p.parts or "deep" in p.parts]
    assert len(outputs) == 2 * len(NAMES) and len(set(outputs)) == len(outputs)
    decodes.clear()
    again = compare.run_compare(methods, split, tmp_path / "disk", ["PSNR"], True, None, device, cache_gb=0.0)
    assert len([p for p in decodes if "gamma" in p.parts]) == 2 * len(NAMES)  # checked, then read again
    assert [r["PSNR"] for r in kept.rows] == [r["PSNR"] for r in again.rows]
