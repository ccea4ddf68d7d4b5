"""Measurement tools: the yardstick U-Net, the speed report and the quality-per-step comparison."""

import json
from pathlib import Path

from utils.utils import atomic_write_text


def publish(report: dict, markdown: str, output: str) -> None:
    """Store the Markdown table in ``report``, write it all as JSON to ``output`` atomically, and
    print the table and where it went."""
    report["markdown"] = markdown
    atomic_write_text(Path(output), json.dumps(report, indent=2) + "\n")
    print(markdown)
    print(f"wrote {output}")
