r"""Approximate search: the metrics read from a faiss index's kNN lists.

For galleries where the exhaustive ranking is too slow or too large, ``search`` takes a faiss index
factory string (:func:`build_index`: ``"IVF4096,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``, ...) or an
index already built over the reference rows. Each query's top :math:`\max(\max_i R_i, \max K)` list is
read from the index (its own row dropped, by index, in leave-one-out) and the metrics are computed from
it as in the exact ranking, a relevant row missing from the list counting as a miss; NMI is unchanged.
Tied rows within the list are ordered by index, as in the exact ranking; which of several rows tied
across the list's end make it in is faiss's choice (with ``"Flat"``, an exhaustive index, that is the
only difference from ``"exact"``). Rows are added and searched a block at a time, so a memory-mapped
gallery is never loaded whole. ``bench/bench_large_gallery.py`` measures time and recall loss against
exact search at 1,000,000 × 128.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

import faiss
import numpy as np
import torch

from pygml.evaluation.inputs import ArrayLike, as_embeddings, check_settings, unit_rows
from pygml.evaluation.ranking import precision_at_r

#: rows added to, or searched in, an approximate index at a time
INDEX_BLOCK = 65_536
#: training rows an approximate index samples per inverted list (faiss asks for at least 39)
TRAIN_ROWS_PER_LIST = 64
#: training rows sampled at least (a PQ code book of 256 centroids asks for 9,984 rows)
TRAIN_ROWS_DEFAULT = 16_384


def _index_rows(block: torch.Tensor, rows: np.ndarray, metric: str, name: str) -> np.ndarray:
    """``block`` (rows ``rows`` of ``name``) as a float32 array for faiss, L2-normalised for cosine."""
    if metric == "cosine":
        block = unit_rows(block, name, rows)
    return np.ascontiguousarray(block.cpu().numpy(), dtype=np.float32)


def empty_index(search: str, dim: int, metric: str = "cosine") -> "faiss.Index":
    """The untrained, empty faiss index that the factory string ``search`` describes for ``dim``-dimensional
    rows (inner product for ``metric="cosine"``, L2 for ``"euclidean"``); a ValueError names a string
    faiss cannot build. Cheap: configurations are checked with it before a run starts."""
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    try:
        return faiss.index_factory(dim, search, faiss_metric)
    except RuntimeError as err:
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err).strip().splitlines()[-1])
        raise ValueError(f"search={search!r} is not a faiss index factory string faiss can build for "
                         f"{dim}-dimensional rows: {reason}") from None


def build_index(
    gallery: ArrayLike,
    search: str,
    *,
    metric: str = "cosine",
    nprobe: int = 32,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = "cpu",
    name: str = "reference",
) -> "faiss.Index":
    """A faiss index of ``gallery`` (M, d) built from a factory string, for approximate kNN search.

    ``search`` is any `faiss index factory
    <https://github.com/facebookresearch/faiss/wiki/The-index-factory>`_ string: ``"IVF4096,Flat"``
    (inverted lists, full vectors), ``"IVF4096,PQ32"`` (inverted lists, 32-byte codes: a gallery of
    1,000,000 × 128 takes 32 MB instead of 512 MB), ``"HNSW32"``, or ``"Flat"`` (exhaustive).
    Rows are L2-normalised for ``metric="cosine"`` (inner-product index) and taken as they are for
    ``"euclidean"`` (L2 index), a block of :data:`INDEX_BLOCK` rows at a time, so a gallery given as a
    memory-mapped numpy array is never held whole in memory. An index that needs training is trained
    on a seeded sample of :data:`TRAIN_ROWS_PER_LIST` rows per inverted list (at least
    :data:`TRAIN_ROWS_DEFAULT`). ``nprobe`` sets how many
    lists an IVF index visits per query. With ``device="cuda"`` and a GPU build of faiss the index is
    moved to the GPUs (faiss-cpu, the pinned build, searches on the CPU).
    """
    check_settings((1,), metric, None, search, nprobe)
    x = as_embeddings(gallery, name, torch.device("cpu"))
    n, d = x.shape
    index = empty_index(search, d, metric)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        ivf = None
    if ivf is not None and hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # only polysemous (Hamming) search uses it; it is slow to train
    if not index.is_trained:
        want = max(TRAIN_ROWS_PER_LIST * ivf.nlist if ivf is not None else 0, TRAIN_ROWS_DEFAULT)
        if ivf is not None and ivf.nlist > n:
            raise ValueError(f"search={search!r} asks for {ivf.nlist} inverted lists but {name} has only "
                             f"{n} rows; use at most about sqrt({n}) ≈ {max(1, int(math.sqrt(n)))} lists")
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, want), replace=False))
        index.train(_index_rows(x[torch.from_numpy(sample)], sample, metric, name))
    for start in range(0, n, INDEX_BLOCK):
        rows = np.arange(start, min(start + INDEX_BLOCK, n))
        index.add(_index_rows(x[start: rows[-1] + 1], rows, metric, name))
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    if torch.device(device or "cpu").type == "cuda" and hasattr(faiss, "index_cpu_to_all_gpus") \
            and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def search_queries(
    q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray, n_classes: int,
    leave_one_out: bool, ks: tuple[int, ...], metric: str, search: Union[str, "faiss.Index"], nprobe: int,
    seed: int, device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~pygml.evaluation.ranking.rank_queries` from an approximate index's top ``max(max R, max K)``
    list per query; a query with no relevant row in it gets rank ``depth`` (a miss at every K)."""
    class_size = np.bincount(r_codes, minlength=n_classes)
    relevant = class_size[q_codes] - int(leave_one_out)
    max_r = int(relevant.max())
    depth = min(max(max_r, max(ks, default=1)), r.shape[0] - int(leave_one_out))
    if isinstance(search, faiss.Index):
        index = search
        _check_index(index, r.shape, metric)
    else:
        index = build_index(r, search, metric=metric, nprobe=nprobe, seed=seed, device=device,
                            name="query" if leave_one_out else "reference")
    k = depth + int(leave_one_out)
    n_q = q.shape[0]
    rank = np.full(n_q, depth, dtype=np.int64)
    ap, rp = np.zeros(n_q), np.zeros(n_q)
    for start in range(0, n_q, INDEX_BLOCK):
        stop = min(start + INDEX_BLOCK, n_q)
        scores, ids = index.search(_index_rows(q[start:stop], np.arange(start, stop), metric, "query"), k)
        # ties within the list in index order, as the exact ranking has them (faiss leaves them unordered)
        order = np.lexsort((ids, scores if metric == "euclidean" else -scores), axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        if leave_one_out:
            ids = _without_self(ids, np.arange(start, stop))
        codes = q_codes[start:stop]
        hit = (ids >= 0) & (r_codes[np.maximum(ids, 0)] == codes[:, None])  # -1: fewer than k found
        found = hit.any(axis=1)
        rank[start:stop] = np.where(found, hit.argmax(axis=1), depth)
        ap[start:stop], rp[start:stop] = precision_at_r(hit[:, :max_r], relevant[start:stop])
    return rank, ap, rp, relevant


def _check_index(index: "faiss.Index", shape: tuple[int, int], metric: str) -> None:
    """A ValueError unless ``index`` holds ``shape[0]`` rows of ``shape[1]`` dimensions with ``metric``'s
    faiss metric (inner product for cosine, L2 for euclidean)."""
    want = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if index.d != shape[1]:
        raise ValueError(f"search is a faiss index of {index.d}-dimensional rows but reference has {shape[1]}")
    if index.ntotal != shape[0]:
        raise ValueError(f"search is a faiss index holding {index.ntotal} rows but reference has {shape[0]}: "
                         "an index must hold exactly the reference rows, in order")
    if index.metric_type != want:
        raise ValueError(f"search is a faiss index with the other metric: metric={metric!r} needs "
                         f"{'an inner-product index of normalised rows' if metric == 'cosine' else 'an L2 index'}")


def _without_self(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row of ``ids`` (n, k) without the query's own index (or, when the search missed it, without
    its last entry), shape (n, k - 1)."""
    keep = ids != own[:, None]
    keep[keep.all(axis=1), -1] = False
    return ids[keep].reshape(ids.shape[0], ids.shape[1] - 1)
