"""pygml.export: the embedding path of a method as TorchScript and ONNX, checked against PyTorch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pygml.export import ExportMismatchError, export_format, export_model
from pygml.methods import Baseline
from pygml.models import SmallCNN


@pytest.fixture
def method():
    torch.manual_seed(0)
    m = Baseline(SmallCNN(width=8), 4, embedding_dim=8)
    m(torch.rand(8, 3, 16, 16), torch.arange(8) % 4)[0].backward()  # BatchNorm statistics that are not the defaults
    return m.train()


def test_torchscript_export_with_a_dynamic_batch(method, tmp_path):
    example = torch.rand(2, 3, 16, 16)
    result = export_model(method, tmp_path / "m.pt", example, metadata={"k": "v"})
    assert result.format == "torchscript" and result.max_abs_diff <= 1e-4 and result.check_batch == 3
    assert method.training, "the method's mode is restored"
    extra = {"pygml.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    images = torch.rand(7, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(images), method.eval().embed(images), atol=1e-5)
    assert json.loads(extra["pygml.json"]) == {"k": "v"}


def test_onnx_export_with_a_dynamic_batch(method, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = export_model(method, tmp_path / "m.onnx", torch.rand(2, 3, 16, 16), metadata={"pygml.method": "baseline"})
    assert result.format == "onnx" and result.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and isinstance(session.get_inputs()[0].shape[0], str)
    images = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        want = method.eval().embed(images).numpy()
    assert np.abs(session.run(["embeddings"], {"images": images.numpy()})[0] - want).max() < 1e-4


def test_an_export_that_differs_is_not_kept(method, tmp_path):
    with pytest.raises(ExportMismatchError, match="differs from PyTorch by up to .* nothing was written"):
        export_model(method, tmp_path / "m.pt", torch.rand(2, 3, 16, 16), atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_and_examples(method, tmp_path):
    with pytest.raises(ValueError, match="cannot tell the export format of .*m.zip"):
        export_format(tmp_path / "m.zip")
    with pytest.raises(FileNotFoundError, match="folder .*missing does not exist"):
        export_model(method, tmp_path / "missing" / "m.onnx", torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"example must be a batch of RGB images \(B, 3, H, W\)"):
        export_model(method, tmp_path / "m.pt", torch.rand(3, 16, 16))
