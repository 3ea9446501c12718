"""Conversion and validation of the evaluator's inputs: embeddings, labels and settings.

Embeddings (torch tensors or numpy arrays of any float dtype, a memory map included) become contiguous
float32 tensors on the device of the ranking, checked for NaN and inf a block at a time; labels become
int64 arrays; every error names the argument and what to do.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import faiss
import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

#: the similarities accepted by ``metric``
METRICS = ("cosine", "euclidean")
#: default size of one block of similarities, in bytes (sets the number of query rows per block)
CHUNK_BYTES = 512 * 2**20


def check_settings(recall_at: Sequence[int], metric: str, chunk_size: Optional[int],
                   search: Union[str, "faiss.Index"] = "exact", nprobe: int = 1) -> tuple[int, ...]:
    """The distinct K of ``recall_at`` in their order, after a ValueError for any bad setting."""
    if not isinstance(search, faiss.Index) and (not isinstance(search, str) or not search.strip()):
        raise ValueError(f"search must be 'exact' or a faiss index factory string such as 'IVF4096,Flat', "
                         f"got {search!r}")
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise ValueError(f"nprobe must be a positive number of inverted lists, got {nprobe!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if isinstance(recall_at, (int, np.integer)):
        recall_at = (recall_at,)
    ks = []
    for k in recall_at:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"recall_at must hold positive integers, got {list(recall_at)!r}")
        ks.append(int(k))
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of query rows or None, got {chunk_size!r}")
    return tuple(dict.fromkeys(ks))


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` = CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_embeddings(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    """``x`` (N, d) as a contiguous float32 tensor on ``device``; a ValueError naming ``name`` for a wrong
    type, dtype or shape, an empty array, or a NaN or inf (also one that float32 conversion makes)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
        with warnings.catch_warnings():  # a read-only array (a memory map) is only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dimensions), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    x = x.detach().to(device=device, dtype=torch.float32).contiguous()
    step = max(1, CHUNK_BYTES // (4 * x.shape[1]))
    for start in range(0, x.shape[0], step):  # in blocks: a memory-mapped array is never held whole
        finite = torch.isfinite(x[start: start + step]).all(dim=1)
        if not bool(finite.all()):
            row = start + int(torch.nonzero(~finite)[0, 0])
            raise ValueError(f"{name} has NaN or inf values (first in row {row}) after conversion to float32")
    return x


def as_labels(y: ArrayLike, name: str, n: int) -> np.ndarray:
    """``y`` as an int64 array of ``n`` class labels; a ValueError naming ``name`` otherwise."""
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.size != n:
        raise ValueError(f"{name} has {y.size} entries but its embeddings have {n} rows")
    return y.astype(np.int64)


def unit_rows(x: torch.Tensor, name: str, rows: Optional[np.ndarray] = None) -> torch.Tensor:
    """Rows of ``x`` divided by their norms; an all-zero row is an error naming its row of ``name``
    (``rows[i]`` for ``x[i]`` when ``x`` holds some of its rows, else ``i``)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = norms == 0
    if bool(zero.any()):
        first = int(torch.nonzero(zero)[0, 0])
        row = first if rows is None else int(rows[first])
        raise ValueError(f"{name} row {row} is all zeros: its cosine similarity is undefined")
    return x / norms[:, None]
