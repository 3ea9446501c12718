"""The evaluator's entry points, :func:`evaluate` and :class:`RetrievalEvaluator`, and the averages of the
retrieval metrics over the answerable queries (definitions in :mod:`pygml.evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import faiss
import numpy as np
import torch

from pygml.evaluation.clustering import adjusted_mutual_info, kmeans_assignments, normalized_mutual_info
from pygml.evaluation.index import search_queries
from pygml.evaluation.inputs import ArrayLike, as_embeddings, as_labels, check_settings, resolve_device, unit_rows
from pygml.evaluation.ranking import rank_queries


def evaluate(
    query: ArrayLike,
    query_labels: ArrayLike,
    reference: Optional[ArrayLike] = None,
    reference_labels: Optional[ArrayLike] = None,
    *,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
    nmi: bool = True,
    ami: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    chunk_size: Optional[int] = None,
    seed: int = 0,
    search: Union[str, "faiss.Index"] = "exact",
    nprobe: int = 32,
) -> dict[str, float]:
    """Retrieval and clustering metrics of embeddings (definitions in :mod:`pygml.evaluation`).

    Args:
        query: query embeddings, shape (N, d), a torch tensor or numpy array of any float dtype.
        query_labels: integer class labels, shape (N,).
        reference: gallery embeddings, shape (M, d); ``None`` = leave-one-out on ``query``.
        reference_labels: integer labels of the gallery, shape (M,); given with ``reference`` only.
        recall_at: the K of Recall@K; each at most the gallery size (M, or N - 1 in leave-one-out).
        metric: ``"cosine"`` (inner product of L2-normalised rows) or ``"euclidean"``.
        nmi: add ``NMI`` (k-means on the query embeddings).
        ami: add ``AMI`` (needs scikit-learn).
        device: where the similarities are computed; ``None`` = CUDA when available, else CPU.
        chunk_size: query rows per block of similarities; ``None`` = about 512 MiB per block.
        seed: k-means seed (and the seed of the training sample of an approximate index).
        search: ``"exact"`` (the exhaustive ranking, :mod:`pygml.evaluation.ranking`), or a faiss index
            factory string for an approximate kNN search, e.g. ``"IVF4096,Flat"`` or, to hold a gallery
            compressed, ``"IVF4096,PQ32"`` (see :func:`~pygml.evaluation.build_index`), or a faiss index
            already holding the reference rows (e.g. from :func:`~pygml.evaluation.build_index`, reused
            across settings; used as it is).
            The metrics are then read from the index's top ``max(max R, max K)`` list: a relevant row
            the index misses counts as a miss.
        nprobe: inverted lists visited per query by an IVF index that ``search`` names (more: slower,
            closer to exact).

    Returns:
        ``{"recall@K": ..., "precision_at_1": ..., "r_precision": ...,
        "mean_average_precision_at_r": ..., "NMI": ..., "AMI": ...}``, fractions in [0, 1]
        (a ValueError when no query has a relevant gallery row: the retrieval metrics are undefined).
    """
    ks = check_settings(recall_at, metric, chunk_size, search, nprobe)
    dev = resolve_device(device)
    approximate = not (isinstance(search, str) and search == "exact")
    if approximate:
        dev = torch.device("cpu")  # faiss takes host memory; rows are not copied to a device first
    q = as_embeddings(query, "query", dev)
    q_labels = as_labels(query_labels, "query_labels", q.shape[0])
    leave_one_out = reference is None
    if leave_one_out:
        if reference_labels is not None:
            raise ValueError("reference_labels was given without reference; pass both or neither")
        r, r_labels = q, q_labels
    else:
        if reference_labels is None:
            raise ValueError("reference was given without reference_labels; pass both or neither")
        r = as_embeddings(reference, "reference", dev)
        r_labels = as_labels(reference_labels, "reference_labels", r.shape[0])
        if r.shape[1] != q.shape[1]:
            raise ValueError(
                f"query has {q.shape[1]} dimensions but reference has {r.shape[1]}; "
                "embed both with the same model"
            )
    gallery = r.shape[0] - int(leave_one_out)
    if gallery < 1:
        raise ValueError("query has a single row: leave-one-out needs at least 2 rows, or pass a reference")
    if ks and max(ks) > gallery:
        raise ValueError(
            f"recall_at asks for K={max(ks)} but the gallery has only {gallery} rows"
            + (" (leave-one-out excludes the query itself)" if leave_one_out else "")
        )
    if metric == "cosine" and not approximate:  # an index normalises its rows a block at a time
        q = unit_rows(q, "query")
        r = q if leave_one_out else unit_rows(r, "reference")

    classes, codes = np.unique(np.concatenate([q_labels, r_labels]), return_inverse=True)
    q_codes, r_codes = codes[: len(q_labels)], codes[len(q_labels):]
    if approximate:
        rank, ap, rp, relevant = search_queries(q, r, q_codes, r_codes, len(classes), leave_one_out, ks,
                                                metric, search, nprobe, seed, resolve_device(device))
    else:
        rank, ap, rp, relevant = rank_queries(q, r, q_codes, r_codes, len(classes), leave_one_out, ks,
                                              metric, chunk_size, torch_kernels=dev.type != "cpu")
    out = retrieval_metrics(rank, ap, rp, relevant, ks)
    if nmi or ami:
        rows = unit_rows(q, "query") if metric == "cosine" and approximate else q
        assignment = kmeans_assignments(rows, len(np.unique(q_codes)), seed=seed)
        if nmi:
            out["NMI"] = normalized_mutual_info(q_codes, assignment)
        if ami:
            out["AMI"] = adjusted_mutual_info(q_codes, assignment)
    return out


@dataclass
class RetrievalEvaluator:
    """The evaluator's settings, applied by calling it on embeddings (see :func:`evaluate`).

    ``RetrievalEvaluator(recall_at=(1, 10, 100, 1000))(embeddings, labels)`` evaluates SOP-style
    leave-one-out; ``evaluator(query, query_labels, gallery, gallery_labels)`` In-Shop-style.
    """

    recall_at: Sequence[int] = (1, 2, 4, 8)
    metric: str = "cosine"
    nmi: bool = True
    ami: bool = False
    device: Optional[Union[str, torch.device]] = None
    chunk_size: Optional[int] = None
    seed: int = 0
    search: Union[str, "faiss.Index"] = "exact"
    nprobe: int = 32

    def __post_init__(self) -> None:
        self.recall_at = check_settings(self.recall_at, self.metric, self.chunk_size, self.search, self.nprobe)

    def __call__(
        self,
        query: ArrayLike,
        query_labels: ArrayLike,
        reference: Optional[ArrayLike] = None,
        reference_labels: Optional[ArrayLike] = None,
    ) -> dict[str, float]:
        return evaluate(
            query, query_labels, reference, reference_labels,
            recall_at=self.recall_at, metric=self.metric, nmi=self.nmi, ami=self.ami,
            device=self.device, chunk_size=self.chunk_size, seed=self.seed, search=self.search,
            nprobe=self.nprobe,
        )


def retrieval_metrics(
    rank: np.ndarray, ap: np.ndarray, rp: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...],
) -> dict[str, float]:
    """Recall@K, precision@1, R-precision and MAP@R averaged over the queries with R > 0, from each query's
    0-based rank of its first relevant neighbour, AP@R, R-precision and R (each shape (N,))."""
    answerable = relevant > 0
    if not answerable.any():
        raise ValueError("no query has a reference row of its class (query_labels and reference_labels share "
                         "no class with two members): Recall@K, MAP@R and R-precision are undefined")
    rank = rank[answerable]
    out = {f"recall@{k}": float(np.mean(rank < k)) for k in ks}
    out["precision_at_1"] = float(np.mean(rank == 0))
    out["r_precision"] = float(np.mean(rp[answerable]))
    out["mean_average_precision_at_r"] = float(np.mean(ap[answerable]))
    return out
