"""Measurement tools: the yardstick U-Net, the speed report and the quality-per-step comparison."""

import json
from pathlib import Path

import torch

from utils.utils import atomic_write_text


def check_device(device: str) -> None:
    """Raise a ValueError when ``device`` is ``cuda`` and no CUDA device is usable."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")


def publish(report: dict, markdown: str, output: str) -> None:
    """Store the Markdown table in ``report``, write it all as JSON to ``output`` atomically, and
    print the table and where it went."""
    report["markdown"] = markdown
    atomic_write_text(Path(output), json.dumps(report, indent=2) + "\n")
    print(markdown)
    print(f"wrote {output}")
