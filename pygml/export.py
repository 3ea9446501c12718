"""A method's embedding path as TorchScript or ONNX, checked against PyTorch before it is kept.

At test time no pygml method uses a batch graph: ``method.embed(images)`` maps each image to its
L2-normalised embedding on its own. That function is what is exported:

* input ``images``: float32 (B, 3, H, W), RGB in [0, 1], i.e. an image after the run's test transform
  (resize, centre crop, ``ToTensor``); the backbone's normalisation is inside the exported model;
* output ``embeddings``: float32 (B, d), L2-normalised rows;
* B is dynamic; H and W are those of the example batch.

:func:`export_model` writes a temporary file, runs it (``torch.jit.load``, or onnxruntime for ONNX) on a
check batch of another size than the example's, compares with PyTorch and renames the file into place
only when the largest absolute difference is within ``atol``; otherwise nothing is left at ``path``.
TorchScript is traced (``torch.jit.trace``); ONNX goes through ``torch.onnx.export(dynamo=True)`` into
a single file (models under 2 GB). Both carry ``metadata`` (TorchScript: the extra file ``pygml.json``;
ONNX: the model's ``metadata_props``).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pygml.atomic import atomic_path, check_folder

#: file endings → export format
FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
#: the largest absolute difference from PyTorch an export may show by default
ATOL = 1e-4


class ExportMismatchError(ValueError):
    """An exported model's output differs from PyTorch's by more than the tolerance."""


class EmbeddingModel(nn.Module):
    """``method.embed`` as a module: images (B, 3, H, W) in [0, 1] → L2-normalised embeddings (B, d)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: Tensor) -> Tensor:
        return self.method.embed(images)


@dataclass
class ExportResult:
    """Where an export went and how it compared with PyTorch."""

    path: Path
    format: str
    max_abs_diff: float
    check_batch: int
    atol: float


def export_format(path: str | os.PathLike) -> str:
    """``"onnx"`` or ``"torchscript"``, from the file ending (:data:`FORMATS`)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the export format of {path}: end the name with "
                         f"{', '.join(FORMATS)} (.onnx for ONNX, the others for TorchScript)")
    return FORMATS[suffix]


@contextmanager
def _jit_quietly() -> Iterator[None]:
    """torch.jit without its deprecation warnings and, in a trace, the warnings about shape checks: those read
    sizes as Python values, which the trace records as constants; the batch size is never among them (the
    check runs the traced model on another batch size)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        yield


def _write_torchscript(module: nn.Module, example: Tensor, path: Path, metadata: dict[str, str]) -> None:
    with _jit_quietly():
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"pygml.json": json.dumps(metadata)})


def _run_torchscript(path: Path, images: Tensor) -> np.ndarray:
    with _jit_quietly(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(images).numpy()


def _write_onnx(module: nn.Module, example: Tensor, path: Path, metadata: dict[str, str],
                opset: Optional[int]) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pygml[export]'") from exc
    kwargs = {} if opset is None else {"opset_version": opset}
    torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                      dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True, external_data=False,
                      verbose=False, **kwargs)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def _run_onnx(path: Path, images: Tensor) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'pygml[export]'") from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embeddings"], {"images": images.numpy()})[0]


def export_model(method: nn.Module, path: str | os.PathLike, example: Tensor, *, check: Optional[Tensor] = None,
                 atol: float = ATOL, metadata: Optional[dict[str, str]] = None,
                 opset: Optional[int] = None) -> ExportResult:
    """Export ``method.embed`` to ``path`` (format from its ending, :func:`export_format`) and check it.

    Args:
        method: a pygml method (anything with ``embed(images) -> (B, d)``); exported on the CPU in eval
            mode (its mode and device are restored after).
        path: the file to write; its folder must exist.
        example: a batch (B, 3, H, W) the export is traced with; H and W are fixed by it.
        check: the batch compared with PyTorch; ``None`` = ``B + 1`` random images of the example's
            size (another batch size, so the dynamic batch is checked too).
        atol: the largest absolute difference accepted.
        metadata: strings stored in the exported file (input size, preprocessing, ...).
        opset: ONNX opset (``None``: the exporter's default).

    Returns an :class:`ExportResult`; raises :class:`ExportMismatchError` (nothing written) when the
    exported model differs from PyTorch by more than ``atol``.
    """
    fmt = export_format(path)
    path = check_folder(path, f"{fmt} export")
    if example.dim() != 4 or example.size(1) != 3:
        raise ValueError(f"example must be a batch of RGB images (B, 3, H, W), got shape {tuple(example.shape)}")
    if check is None:
        check = torch.rand((example.size(0) + 1, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    was_training = method.training
    device = next((p.device for p in method.parameters()), torch.device("cpu"))
    module = EmbeddingModel(method.cpu().eval()).eval()
    try:
        example, check = example.detach().float().cpu(), check.detach().float().cpu()
        with torch.no_grad():
            want = module(check).numpy()
        with atomic_path(path) as tmp:
            if fmt == "onnx":
                _write_onnx(module, example, tmp, metadata, opset)
                got = _run_onnx(tmp, check)
            else:
                _write_torchscript(module, example, tmp, metadata)
                got = _run_torchscript(tmp, check)
            if got.shape != want.shape:
                raise ExportMismatchError(f"the {fmt} export of {path.name} gives shape {got.shape} for a batch of "
                                          f"{len(check)}; PyTorch gives {want.shape}")
            diff = float(np.abs(got - want).max())
            if not diff <= atol:
                raise ExportMismatchError(f"the {fmt} export differs from PyTorch by up to {diff:.3g} on a batch of "
                                          f"{len(check)} (tolerance {atol:g}); nothing was written to {path}")
    finally:
        method.to(device).train(was_training)
    return ExportResult(path=path, format=fmt, max_abs_diff=diff, check_batch=len(check), atol=atol)


__all__ = ["ATOL", "EmbeddingModel", "ExportMismatchError", "ExportResult", "FORMATS", "export_format",
           "export_model"]
