"""Export a trained IllRecNet checkpoint to ONNX with dynamic batch, height and width.

``python export.py --checkpoint_path C --output model.onnx`` rebuilds the model from the checkpoint
alone, exports its enhancer with ``torch.onnx.export``, checks the file with ``onnx.checker`` and
writes it atomically (a temporary file in the same folder, then a rename).

The TorchScript exporter is used: tracing records the size arithmetic of the pad-to-stride and the
crop back (``-H % stride``, ``[..., :H, :W]``) as graph operations, so one file serves every image
size, 1x1 included. The dynamo exporter (``torch.export``) instead turns that arithmetic into shape
guards (pad zero or not, coarsest level one pixel or more) and refuses fully dynamic sizes.
With onnxruntime installed it also runs the file on an odd-sized random image and reports the
largest difference from PyTorch.

Graph: input ``low`` float32 ``(B, 3, H, W)`` in [0, 1], output ``enhanced`` of the same shape
(not clamped), any ``H, W >= 1``. Needs the optional dependency group ``onnx`` (onnx; onnxruntime
for the check).
"""

import sys
from dataclasses import dataclass

from utils.utils import NEW_FILE_MODE, parse_hparams, run_main


@dataclass
class ExportHparams:
    """Export a checkpoint to ONNX."""

    checkpoint_path: str = ""
    """Checkpoint to export (required)."""
    output: str = "model.onnx"
    """ONNX file to write."""
    opset: int = 18
    """ONNX opset version (>= 17: LayerNormalization is a single node)."""
    example_size: tuple[int, int] = (67, 93)
    """(H, W) of the random example traced by the exporter; odd so padding is part of the graph."""
    verify: bool = True
    """Run the file with onnxruntime (if installed) on a second odd size and compare with PyTorch."""
    tolerance: float = 1e-3
    """Largest accepted absolute difference between onnxruntime and PyTorch outputs."""

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"--opset must be >= 17, got {self.opset}")
        if min(self.example_size) < 2:
            raise ValueError(f"--example_size must be at least 2 x 2, got {self.example_size}")


class ExportError(RuntimeError):
    """The exporter, the ONNX checker or the onnxruntime comparison failed."""


def verification_size(example_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of the onnxruntime check: odd, and larger than the traced example in both axes, so
    the check exercises sizes the trace did not see (any example size, 2x2 included)."""
    return (example_size[0] + 10) | 1, (example_size[1] + 14) | 1


def export_onnx(model, path, opset: int = 18, example_size: tuple[int, int] = (67, 93)) -> None:
    """Export ``model`` (an ``nn.Module`` mapping ``(B, 3, H, W)`` to the same shape) to ``path``.

    Batch, height and width are dynamic. The file appears at ``path`` only after it was written
    completely and passed ``onnx.checker``.
    """
    import os
    import tempfile
    import warnings
    from pathlib import Path

    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.rand(1, 3, *example_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():  # tracer warnings about size arithmetic: it is recorded, as intended
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=["low"],
                output_names=["enhanced"],
                dynamic_axes={"low": axes, "enhanced": axes},
            )
        onnx.checker.check_model(tmp, full_check=True)
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except Exception as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, ExportError):
            raise
        raise ExportError(f"ONNX export to {path} failed: {type(error).__name__}: {error}") from error


def compare_with_onnxruntime(model, path, size: tuple[int, int], batch: int = 1) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch on a random image."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.rand(batch, 3, *size)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["enhanced"], {"low": x.numpy()})
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime gave shape {got.shape} for input {tuple(x.shape)}")
    return float(np.abs(got - expected).max())


def get_hparams() -> ExportHparams:
    return ExportHparams(checkpoint_path="")


def main(hp: ExportHparams) -> None:
    import importlib.util

    from model.model import load_checkpoint

    model = load_checkpoint(hp.checkpoint_path).model
    export_onnx(model, hp.output, hp.opset, tuple(hp.example_size))
    print(f"wrote {hp.output} (opset {hp.opset}, dynamic batch/height/width; onnx.checker passed)")
    if hp.verify and importlib.util.find_spec("onnxruntime") is not None:
        size = verification_size(tuple(hp.example_size))
        diff = compare_with_onnxruntime(model, hp.output, size)
        print(f"onnxruntime vs PyTorch at {size[0]}x{size[1]} (H x W): max |difference| {diff:.2e}")
        if diff > hp.tolerance:
            raise ExportError(f"onnxruntime differs from PyTorch by {diff:.2e} (> {hp.tolerance:g})")


if __name__ == "__main__":
    hparams = parse_hparams(
        type(get_hparams()), __doc__.split("\n\n")[0], sys.argv[1:], required=("checkpoint_path",)
    )
    try:
        run_main(main, hparams)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
