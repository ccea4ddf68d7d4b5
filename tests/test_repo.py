"""Repository contract: CI runs the README's test command; pins agree; the sample stays small."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## ", 2)[1]  # the first section: set-up in two commands
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2 and blocks[0].endswith("python train.py --config configs/sample.yaml")
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci_lines[-1] == blocks[1]


def test_requirements_mirror_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        d for group in project["optional-dependencies"].values() for d in group
    ]
    requirements = [
        ln.strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and ln[0] != "#"
    ]
    assert sorted(declared) == sorted(requirements)
    assert all("==" in r for r in requirements)


def test_sample_is_small_and_in_the_seed_layout():
    files = [p for p in (ROOT / "sample").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    for split in ("1_train", "2_valid", "3_bench", "4_infer"):
        assert list((ROOT / "sample" / split).glob("*/low/*.png")), split
