"""ONNX export (export.py): one file, dynamic sizes, onnxruntime matches PyTorch."""

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import ExportError, ExportHparams, export_onnx  # noqa: E402
from export import main as export_main  # noqa: E402
from model.model import LowLightEnhancerLightning  # noqa: E402
from tests.conftest import ROOT, run_python, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny-config checkpoint in Lightning's layout (what load_checkpoint reads)."""
    torch.manual_seed(0)
    module = LowLightEnhancerLightning(tiny_model())
    with torch.no_grad():  # move every weight off its initial value, biases included
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_main(ExportHparams(checkpoint_path=str(checkpoint), output=str(out), verify=False))
    from model.model import load_checkpoint

    return out, load_checkpoint(checkpoint).model


def test_one_file_serves_several_odd_sizes(exported):
    path, model = exported
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, size in [(1, (37, 53)), (2, (64, 48)), (1, (1, 1))]:
        x = torch.rand(batch, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(["enhanced"], {"low": x.numpy()})
        assert got.shape == x.shape
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_dynamic_axes_are_named(exported):
    graph = onnx.load(str(exported[0])).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert graph.output[0].name == "enhanced"


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="exporter exploded"):
        export_onnx(LowLightEnhancerLightning(tiny_model()).model, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_verification_runs_on_an_odd_unseen_size_for_any_example_size(checkpoint, tmp_path, capsys):
    from export import verification_size

    assert [verification_size(s) for s in ((67, 93), (8, 8), (2, 2))] == [(77, 107), (19, 23), (13, 17)]
    export_main(
        ExportHparams(
            checkpoint_path=str(checkpoint), output=str(tmp_path / "small.onnx"), example_size=(8, 8)
        )
    )
    assert "onnxruntime vs PyTorch at 19x23 (H x W)" in capsys.readouterr().out  # was 18x-6: a traceback


def test_cli_exports_and_verifies(checkpoint, tmp_path):
    out = tmp_path / "cli.onnx"
    cmd = [ROOT / "export.py", "--checkpoint_path", str(checkpoint), "--output", str(out)]
    proc = run_python(*cmd, timeout=300, fresh=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and "onnxruntime vs PyTorch" in proc.stdout
    missing = run_python(
        ROOT / "export.py", "--checkpoint_path", str(tmp_path / "nope.ckpt"), timeout=300, fresh=False
    )
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
