"""Repository contract: CI runs the README's test command; pins agree; the sample stays small;
doc links resolve."""

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


def _github_anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_in_the_docs_reach_a_file_and_heading():
    """README and docs/ link to each other (the measurement log moved to docs/); a moved file or a
    renamed heading must not leave a dead link."""
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = page.read_text()
        links = re.findall(r"\]\(([^)\s]+)\)", text)
        for link in links:
            if re.match(r"[a-z]+:", link):  # https:, mailto: ...
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.is_file(), f"{page.name}: link {link} points to a missing file"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
                assert anchor in {_github_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor}"
