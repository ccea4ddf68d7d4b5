"""Repository contract: CI runs the README's test command; pins agree; the sample stays small;
doc links resolve; the README stays short; every flag the docs use is one its script accepts."""

import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

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


def test_readme_stays_short():
    """The README is the front page (what, set-up, quick start, results, a map); detail lives in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail to a page under docs/"


# Scripts whose flags the docs may use: `python train.py ...` and `python -m tools.quality ...`.
_COMMAND = re.compile(r"(?<![\w/.-])((?:train|valid|bench|infer|export)\.py)\b|-m\s+((?:tools|data)\.\w+)")
_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def _script_flags(command: str) -> list[tuple[str, str]]:
    """(script, --flag) for every flag after a script's name in one command, up to the next script."""
    matches = list(_COMMAND.finditer(command))
    pairs = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(command)
        script = match.group(1) or match.group(2)
        pairs += [(script, flag) for flag in _FLAG.findall(command, match.end(), end)]
    return pairs


def _doc_commands(text: str) -> list[tuple[str, str]]:
    """(script, --flag) pairs of the commands in a Markdown page: every line of a ```bash block
    (continuation lines joined; a flag in a comment belongs to the last script of its line) and
    every inline code span that names a script (`python infer.py --input photo.jpg`)."""
    pairs = []
    for block in _bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            hash_ = re.search(r"(?:^|\s)#", line)
            code, comment = (line[: hash_.start()], line[hash_.end() :]) if hash_ else (line, "")
            for command in re.split(r"&&|\|\||[|;]", code):
                pairs += _script_flags(command)
            scripts = [m.group(1) or m.group(2) for m in _COMMAND.finditer(code)]
            if scripts:
                pairs += [(scripts[-1], flag) for flag in _FLAG.findall(comment)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose):
        pairs += _script_flags(span.replace("\n", " "))
    return pairs


def test_doc_commands_finds_the_flags_of_each_script():
    """The extractor below must see flags wherever the docs put them, or the flag test proves nothing."""
    text = (
        "Run `python infer.py --input photo.jpg` or `valid.py --devices 2`; `--lr` alone is prose.\n"
        "```bash\n"
        "torchrun --nproc_per_node 4 train.py --devices 4 \\\n    --bogus_flag 1   # or --other\n"
        "python -m tools.quality --seeds '[0]' && python bench.py --metrics '[PSNR]'\n"
        "#SBATCH --nodes=2\n"
        "```\n"
    )
    assert sorted(_doc_commands(text)) == sorted(
        [
            ("infer.py", "--input"),
            ("valid.py", "--devices"),
            ("train.py", "--devices"),
            ("train.py", "--bogus_flag"),
            ("train.py", "--other"),
            ("tools.quality", "--seeds"),
            ("bench.py", "--metrics"),
        ]
    )


def _help_options(script: str) -> set[str]:
    """The option names `script --help` lists (jsonargparse lists a boolean's negated form itself:
    `--resume [{true,yes,false,no}], --no_resume [...]`). Only the option column counts, not the
    descriptions, so a flag another script's help mentions in passing is not accepted."""
    command = [script] if script.endswith(".py") else ["-m", script]
    result = subprocess.run(
        [sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr[-2000:]}"
    options = set()
    for line in result.stdout.splitlines():
        column = re.match(r" {2}(-\S.*?)(?: {2,}|$)", line)
        if column:
            options |= set(_FLAG.findall(column.group(1)))
    assert "--help" in options, f"{script} --help: no option column found"
    return options


@pytest.mark.slow
def test_every_flag_in_the_docs_is_one_its_script_accepts():
    """A renamed or removed flag must not live on in README.md or docs/: every --flag of a command
    that names a script (train.py ... export.py, python -m tools.* / data.*) is in that script's
    --help."""
    used: dict[tuple[str, str], set[str]] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for script, flag in _doc_commands(page.read_text()):
            used.setdefault((script, flag), set()).add(page.name)
    scripts = sorted({script for script, _ in used})
    assert {"train.py", "valid.py", "bench.py", "infer.py", "export.py"} <= set(scripts)
    with ThreadPoolExecutor(max_workers=4) as pool:  # each --help imports torch: start them together
        options = dict(zip(scripts, pool.map(_help_options, scripts), strict=True))
    wrong = sorted(
        f"{script} {flag} ({', '.join(sorted(pages))})"
        for (script, flag), pages in used.items()
        if flag not in options[script]
    )
    assert not wrong, "flags the scripts' --help does not list:\n" + "\n".join(wrong)


def test_training_doc_lists_every_model_field():
    """docs/training.md's list of model fields names every field of ModelHparams (a new option that
    is missing there is a flag a reader cannot find)."""
    from utils.hparams import ModelHparams, field_names

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    listed = text[text.index("Model fields:") : text.index("optimizer:")]
    missing = [name for name in field_names(ModelHparams) if f"`{name}`" not in listed]
    assert not missing, f"docs/training.md's model fields lack {missing}"
