"""Similarity search over stored embeddings: a faiss index of a gallery, saved with what its rows are,
loaded back and queried.

An index is built by :func:`pygml.evaluation.build_index` (the one way pygml builds indexes): ``"exact"``
is faiss's exhaustive ``Flat`` index, anything else a faiss index factory string for large galleries
(``"IVF4096,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``), as ``eval.search`` takes. With ``metric="cosine"``
rows and queries are L2-normalised and scores are cosine similarities (higher is nearer); with
``"euclidean"`` scores are squared L2 distances (lower is nearer).

On disk an index is two files: ``<name>`` (faiss's own format, readable by ``faiss.read_index``) and
``<name>.json`` (the metric, the search string, and the path and label of each row, with the faiss
file's SHA-256, so a description that belongs to another index file is refused). Both are written
atomically (:mod:`pygml.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import faiss
import numpy as np
import torch

from pygml.atomic import atomic_path, check_folder
from pygml.evaluation import build_index

ArrayLike = Union[torch.Tensor, np.ndarray]

FORMAT = "pygml-index"
VERSION = 1


@dataclass
class SearchIndex:
    """A faiss index of a gallery and what its rows are: ``paths[i]`` and ``labels[i]`` (``None`` when
    unknown) describe row ``i``."""

    index: "faiss.Index"
    paths: list[str]
    labels: list[Optional[str]]
    metric: str = "cosine"
    search: str = "exact"
    nprobe: int = 32

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.labels) == self.index.ntotal):
            raise ValueError(f"an index of {self.index.ntotal} rows needs as many paths and labels; got "
                             f"{len(self.paths)} paths and {len(self.labels)} labels")

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def score_name(self) -> str:
        """What a score is: ``similarity`` (cosine, higher is nearer) or ``distance²`` (euclidean)."""
        return "similarity" if self.metric == "cosine" else "distance²"


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a non-empty (N, d) float array, got {a.dtype} {a.shape}")
    return a


def build_search_index(embeddings: ArrayLike, paths: Sequence[str], labels: Optional[Sequence[Optional[str]]] = None,
                       *, search: str = "exact", metric: str = "cosine", nprobe: int = 32,
                       seed: int = 0) -> SearchIndex:
    """A :class:`SearchIndex` of ``embeddings`` (N, d), row ``i`` being the image ``paths[i]``.

    ``search``: ``"exact"`` or a faiss index factory string (:func:`pygml.evaluation.build_index`, which
    trains an approximate index on a ``seed``-ed sample and sets its ``nprobe``).
    """
    x = _as_array(embeddings, "embeddings")
    labels = [None] * len(paths) if labels is None else list(labels)
    if not len(paths) == len(labels) == x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings need as many paths and labels; got {len(paths)} paths and "
                         f"{len(labels)} labels")
    index = build_index(x, "Flat" if search == "exact" else search, metric=metric, nprobe=nprobe, seed=seed,
                        name="embeddings")
    return SearchIndex(index, [str(p) for p in paths], labels, metric=metric, search=search, nprobe=nprobe)


def description_path(path: str | os.PathLike) -> Path:
    """Where the description of the index file ``path`` lives: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_index(index: SearchIndex, path: str | os.PathLike) -> Path:
    """Write ``index`` to ``path`` (faiss format) and its description to ``<path>.json``, each atomically;
    the folder must exist."""
    path = check_folder(path, "index")
    with atomic_path(path) as tmp:
        faiss.write_index(index.index, str(tmp))
        digest = _sha256(tmp)
    description = {"format": FORMAT, "version": VERSION, "metric": index.metric, "search": index.search,
                   "nprobe": index.nprobe, "dim": index.dim, "rows": len(index), "sha256": digest,
                   "paths": index.paths, "labels": index.labels}
    with atomic_path(description_path(path)) as tmp:
        tmp.write_text(json.dumps(description))
    return path


def load_index(path: str | os.PathLike) -> SearchIndex:
    """The index saved at ``path`` by :func:`save_index`; a missing, foreign or mismatched file is an error
    naming it."""
    path = Path(path).expanduser()
    meta_path = description_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index {path} not found; build one with pygml-index")
    if not meta_path.is_file():
        raise FileNotFoundError(f"index {path} has no description {meta_path} beside it (the path and label of each "
                                "row); build it with pygml-index")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not a pygml index description: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a pygml index description (no '{FORMAT}' marker)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{meta_path} has index version {meta.get('version')}; this pygml reads {VERSION}")
    if meta["sha256"] != _sha256(path):
        raise ValueError(f"{meta_path} describes another index file than {path} (SHA-256 differs): the index was "
                         "rewritten or its writing was interrupted; build it again with pygml-index")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path} cannot be read as a faiss index: {str(err).strip().splitlines()[-1]}") from None
    if index.d != meta["dim"] or index.ntotal != meta["rows"]:
        raise ValueError(f"{path} holds {index.ntotal} rows of {index.d} dimensions, but {meta_path} describes "
                         f"{meta['rows']} of {meta['dim']}; build the index again")
    try:
        faiss.extract_index_ivf(index).nprobe = int(meta["nprobe"])
    except RuntimeError:
        pass  # not an IVF index
    return SearchIndex(index, list(meta["paths"]), list(meta["labels"]), metric=meta["metric"],
                       search=meta["search"], nprobe=int(meta["nprobe"]))


def search(index: SearchIndex, queries: ArrayLike, k: int, *,
           exclude: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)``, each (Q, k): the ``k`` nearest rows of ``index`` for each query, nearest first,
    tied rows in row order (ids of ``-1`` where an approximate index found fewer).

    ``exclude[q]``: a row left out of query ``q``'s list (its own row, when the queries are the gallery
    itself), removed by index, never by assuming it comes first.
    """
    q = _as_array(queries, "queries")
    if q.shape[1] != index.dim:
        raise ValueError(f"the queries have {q.shape[1]} dimensions but the index holds {index.dim}-dimensional rows; "
                         "embed the queries with the model the index was built from")
    available = len(index) - (exclude is not None)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available} (the rows of the index"
                         f"{', less the excluded one' if exclude is not None else ''}), got {k}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if index.metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    depth = k + (exclude is not None)
    scores, ids = index.index.search(q, depth)
    order = np.lexsort((ids, scores if index.metric == "euclidean" else -scores), axis=1)
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    if exclude is not None:
        own = np.asarray(exclude, dtype=np.int64)
        if own.shape != (q.shape[0],):
            raise ValueError(f"exclude needs one row per query ({q.shape[0]}), got shape {own.shape}")
        keep = ids != own[:, None]
        keep[keep.all(axis=1), -1] = False  # the own row was not among the nearest: drop the last one instead
        scores, ids = scores[keep].reshape(len(q), k), ids[keep].reshape(len(q), k)
    return scores, ids


__all__ = ["SearchIndex", "build_search_index", "description_path", "load_index", "save_index", "search"]
