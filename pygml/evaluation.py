r"""The retrieval evaluator shared by every method: Recall@K, precision@1, R-precision, MAP@R, NMI, AMI.

Two protocols, as in the benchmarks:

* **leave-one-out** (``reference=None``; CUB-200-2011, Cars196, SOP): the query set is its own gallery
  and each query's own row is removed from its ranking *by index* (duplicates and ties are safe);
* **query vs gallery** (In-Shop): queries are ranked against a separate reference set.

Definitions
-----------
For query :math:`i` with label :math:`y_i`, let :math:`n_i(1), n_i(2), \dots` be the gallery rows
sorted by decreasing similarity, **ties broken by the smaller reference index** (the order of
an exhaustive faiss ``IndexFlatL2`` search, which is what pytorch-metric-learning uses), let
:math:`\mathrm{rel}_i(k) = [y_{n_i(k)} = y_i]` and let :math:`R_i` be the number of gallery rows with
label :math:`y_i`. A query with :math:`R_i = 0` (its class has no other member) cannot be answered;
it is left out of every retrieval metric, as pytorch-metric-learning's ``AccuracyCalculator`` does,
and the averages run over the set :math:`Q` of the other queries:

.. math::

    \mathrm{recall@}K &= \frac{1}{|Q|} \sum_{i \in Q} \big[\exists\, k \le K : \mathrm{rel}_i(k) = 1\big]
    \qquad \text{(a hit rate, not IR recall)} \\
    \mathrm{precision\_at\_1} &= \frac{1}{|Q|} \sum_{i \in Q} \mathrm{rel}_i(1) = \mathrm{recall@}1 \\
    \mathrm{r\_precision} &= \frac{1}{|Q|} \sum_{i \in Q} \frac{1}{R_i} \sum_{k=1}^{R_i} \mathrm{rel}_i(k) \\
    \mathrm{mean\_average\_precision\_at\_r} &= \frac{1}{|Q|} \sum_{i \in Q} \frac{1}{R_i}
        \sum_{k=1}^{R_i} \mathrm{rel}_i(k)\, P_i(k), \qquad P_i(k) = \frac{1}{k} \sum_{j=1}^{k} \mathrm{rel}_i(j)

(R-precision and MAP@R: Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020.)
Clustering metrics run k-means (faiss, 20 iterations, fixed seed, all points used) on the query
embeddings as the similarity sees them (L2-normalised for cosine) with as many clusters as query
classes :math:`C`, then compare the assignment :math:`A` with the labels :math:`Y`:

.. math::

    \mathrm{NMI} = \frac{I(Y; A)}{\tfrac12 \big(H(Y) + H(A)\big)}, \qquad
    \mathrm{AMI} = \frac{I(Y; A) - \mathbb{E}[I]}{\tfrac12 \big(H(Y) + H(A)\big) - \mathbb{E}[I]}

NMI is computed here from the contingency table (natural logarithms, arithmetic mean: scikit-learn's
``normalized_mutual_info_score``); AMI, whose expectation term is costly, is delegated to
scikit-learn, imported only when ``ami=True``.

How it runs
-----------
Recall@K only needs the rank of a query's *first* relevant neighbour, so the gallery is never sorted
K = 1000 deep. Similarities are computed in blocks of ``chunk_size`` query rows (about 512 MiB by
default, so memory stays bounded at any set size) and feed, in one pass, a running list of each
query's top :math:`\max(\max_i R_i, \min(\max K, 32))` neighbours (faiss heaps on CPU, ``torch.topk``
on CUDA, where faiss' 2048-neighbour GPU limit never applies): it gives precision@1, R-precision and
MAP@R exactly. For the few queries whose first relevant neighbour lies deeper, its rank is counted:
the number of gallery rows more similar than the best relevant one. In leave-one-out the
similarity matrix is symmetric, so each block on or above the diagonal is computed once and also
feeds, transposed, the lists of its columns (when every query's list fits in the same budget): half
the matrix products, the dominant cost. Queries vs a gallery are taken a block of rows at a time
against the whole gallery. The result is that of an exhaustive exact kNN search, including the
order of ties (PML agrees up to float32 rounding: two rows within ~1e-7 in similarity may be
ordered differently by its L2 distances).
All arithmetic is float32 (inputs of any float dtype are converted), averages float64.

Approximate search
------------------
For galleries where the exhaustive ranking is too slow or too large, ``search`` takes a faiss index
factory string (:func:`build_index`: ``"IVF4096,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``, ...) or an
index already built over the reference rows. Each query's top :math:`\max(\max_i R_i, \max K)` list is
read from the index (its own row dropped, by index, in leave-one-out) and the metrics are computed from
it as above, a relevant row missing from the list counting as a miss; NMI is unchanged. Tied rows
within the list are ordered by index, as in the exact ranking; which of several rows tied across the
list's end make it in is faiss's choice (with ``"Flat"``, an exhaustive index, that is the only
difference from ``"exact"``). Rows are added
and searched a block at a time, so a memory-mapped gallery is never loaded whole.
``bench/bench_large_gallery.py`` measures time and recall loss against exact search at 1,000,000 × 128.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import faiss
import numpy as np
import pandas as pd
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

#: the similarities accepted by ``metric``
METRICS = ("cosine", "euclidean")
#: default size of one block of similarities, in bytes (sets the number of query rows per block)
CHUNK_BYTES = 512 * 2**20
#: the sorted neighbour list is at least this deep (when a K asks for it), so that most first hits
#: are read from it instead of being counted
MIN_DEPTH = 32
#: k-means iterations, as in pytorch-metric-learning's ``FaissKMeans``
KMEANS_ITERATIONS = 20

_RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


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
    """Retrieval and clustering metrics of embeddings (definitions in the module docstring).

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
        search: ``"exact"`` (the exhaustive ranking described above), or a faiss index factory string
            for an approximate kNN search, e.g. ``"IVF4096,Flat"`` or, to hold a gallery compressed,
            ``"IVF4096,PQ32"`` (see :func:`build_index`), or a faiss index already holding the
            reference rows (e.g. from :func:`build_index`, reused across settings; used as it is).
            The metrics are then read from the index's top ``max(max R, max K)`` list: a relevant row
            the index misses counts as a miss.
        nprobe: inverted lists visited per query by an IVF index that ``search`` names (more: slower,
            closer to exact).

    Returns:
        ``{"recall@K": ..., "precision_at_1": ..., "r_precision": ...,
        "mean_average_precision_at_r": ..., "NMI": ..., "AMI": ...}``, fractions in [0, 1]
        (a ValueError when no query has a relevant gallery row: the retrieval metrics are undefined).
    """
    ks = _check_settings(recall_at, metric, chunk_size, search, nprobe)
    dev = _resolve_device(device)
    approximate = not (isinstance(search, str) and search == "exact")
    if approximate:
        dev = torch.device("cpu")  # faiss takes host memory; rows are not copied to a device first
    q = _embeddings(query, "query", dev)
    q_labels = _labels(query_labels, "query_labels", q.shape[0])
    leave_one_out = reference is None
    if leave_one_out:
        if reference_labels is not None:
            raise ValueError("reference_labels was given without reference; pass both or neither")
        r, r_labels = q, q_labels
    else:
        if reference_labels is None:
            raise ValueError("reference was given without reference_labels; pass both or neither")
        r = _embeddings(reference, "reference", dev)
        r_labels = _labels(reference_labels, "reference_labels", r.shape[0])
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
        q = _unit_rows(q, "query")
        r = q if leave_one_out else _unit_rows(r, "reference")

    classes, codes = np.unique(np.concatenate([q_labels, r_labels]), return_inverse=True)
    q_codes, r_codes = codes[: len(q_labels)], codes[len(q_labels):]
    if approximate:
        rank, ap, rp, relevant = _search_queries(q, r, q_codes, r_codes, len(classes), leave_one_out, ks,
                                                 metric, search, nprobe, seed, _resolve_device(device))
    else:
        rank, ap, rp, relevant = _rank_queries(q, r, q_codes, r_codes, len(classes), leave_one_out, ks,
                                               metric, chunk_size, torch_kernels=dev.type != "cpu")
    out = _retrieval_metrics(rank, ap, rp, relevant, ks)
    if nmi or ami:
        rows = _unit_rows(q, "query") if metric == "cosine" and approximate else q
        assignment = kmeans_assignments(rows, len(np.unique(q_codes)), seed=seed)
        if nmi:
            out["NMI"] = normalized_mutual_info(q_codes, assignment)
        if ami:
            out["AMI"] = _adjusted_mutual_info(q_codes, assignment)
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
        self.recall_at = _check_settings(self.recall_at, self.metric, self.chunk_size, self.search, self.nprobe)

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


def metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as an aligned two-column text table, values in percent with 2 decimals."""
    width = max([len("metric")] + [len(name) for name in metrics])
    lines = [f"{'metric':<{width}}  {'%':>7}", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {100.0 * value:7.2f}" for name, value in metrics.items()]
    return "\n".join(lines)


def metrics_frame(metrics: dict[str, float]) -> pd.DataFrame:
    """The metrics as a one-row DataFrame (fractions, one column per metric), for CSV logs."""
    return pd.DataFrame([metrics], columns=list(metrics))


def normalized_mutual_info(labels: np.ndarray, assignment: np.ndarray) -> float:
    r"""NMI of two labelings of the same N items, arithmetic normalisation, natural logarithms.

    :math:`I / \tfrac12 (H(Y) + H(A))` from the sparse contingency table; 1 when both labelings put
    everything in a single group, 0 when the mutual information is 0 (scikit-learn's conventions).
    """
    labels, assignment = np.asarray(labels).ravel(), np.asarray(assignment).ravel()
    if labels.shape != assignment.shape:
        raise ValueError(f"labels has {labels.size} entries but assignment has {assignment.size}")
    _, y = np.unique(labels, return_inverse=True)
    _, a = np.unique(assignment, return_inverse=True)
    n_y, n_a = int(y.max(initial=-1)) + 1, int(a.max(initial=-1)) + 1
    if n_y == n_a and n_y <= 1:
        return 1.0
    cells, n_ij = np.unique(y.astype(np.int64) * n_a + a, return_counts=True)
    row, col = np.bincount(y), np.bincount(a)
    n = float(labels.size)
    n_ij = n_ij.astype(np.float64)
    mi = float(np.sum(n_ij / n * (np.log(n_ij) + math.log(n)
                                  - np.log(row[cells // n_a]) - np.log(col[cells % n_a]))))
    if mi <= 0.0:
        return 0.0
    return mi / (0.5 * (_entropy(row) + _entropy(col)))


def kmeans_assignments(x: torch.Tensor, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Cluster index of each row of ``x`` (N, d) after faiss k-means with ``n_clusters`` centroids.

    Every row takes part in training (faiss would otherwise subsample above 256 rows per centroid);
    the GPU is used when ``x`` is on CUDA and faiss was built with GPU support.
    """
    data = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    n = data.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] for {n} rows, got {n_clusters}")
    gpu = x.is_cuda and faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(
        data.shape[1], n_clusters, niter=KMEANS_ITERATIONS, seed=seed, gpu=gpu,
        min_points_per_centroid=1, max_points_per_centroid=math.ceil(n / n_clusters),
    )
    kmeans.train(data)
    _, assignment = kmeans.index.search(data, 1)
    return assignment.ravel()


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _adjusted_mutual_info(labels: np.ndarray, assignment: np.ndarray) -> float:
    try:
        from sklearn.metrics import adjusted_mutual_info_score
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("ami=True needs scikit-learn: pip install scikit-learn") from err
    return float(adjusted_mutual_info_score(labels, assignment))


def _check_settings(recall_at: Sequence[int], metric: str, chunk_size: Optional[int],
                    search: Union[str, "faiss.Index"] = "exact", nprobe: int = 1) -> tuple[int, ...]:
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


def _resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _embeddings(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
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


def _labels(y: ArrayLike, name: str, n: int) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.size != n:
        raise ValueError(f"{name} has {y.size} entries but its embeddings have {n} rows")
    return y.astype(np.int64)


def _unit_rows(x: torch.Tensor, name: str, rows: Optional[np.ndarray] = None) -> torch.Tensor:
    """Rows of ``x`` divided by their norms; an all-zero row is an error naming its row of ``name``
    (``rows[i]`` for ``x[i]`` when ``x`` holds some of its rows, else ``i``)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = norms == 0
    if bool(zero.any()):
        first = int(torch.nonzero(zero)[0, 0])
        row = first if rows is None else int(rows[first])
        raise ValueError(f"{name} row {row} is all zeros: its cosine similarity is undefined")
    return x / norms[:, None]


def _rank_queries(
    q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray, n_classes: int,
    leave_one_out: bool, ks: tuple[int, ...], metric: str, chunk_size: Optional[int], *, torch_kernels: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: 0-based rank of the first relevant neighbour, AP@R, R-precision and R (shape (N,)).

    ``torch_kernels`` selects and counts with torch (any device) instead of faiss and numpy (CPU).
    """
    ranking = _Ranking(q, r, q_codes, r_codes, n_classes, leave_one_out, ks, metric, chunk_size, torch_kernels)
    # the symmetric schedule keeps every query's list at once (12 bytes an entry: float32 value, int64
    # column) and recomputes the rows whose first relevant neighbour is deeper: worth it below one half
    if (leave_one_out and q.shape[0] * ranking.fetch * 12 <= CHUNK_BYTES
            and ranking.deep_fraction() < 0.5):
        ranking.run_symmetric()
    else:
        ranking.run_by_rows()
    return ranking.rank, ranking.ap, ranking.rp, ranking.relevant


#: rows added to, or searched in, an approximate index at a time
INDEX_BLOCK = 65_536
#: training rows an approximate index samples per inverted list (faiss asks for at least 39)
TRAIN_ROWS_PER_LIST = 64
#: training rows sampled at least (a PQ code book of 256 centroids asks for 9,984 rows)
TRAIN_ROWS_DEFAULT = 16_384


def _index_rows(block: torch.Tensor, rows: np.ndarray, metric: str, name: str) -> np.ndarray:
    """``block`` (rows ``rows`` of ``name``) as a float32 array for faiss, L2-normalised for cosine."""
    if metric == "cosine":
        block = _unit_rows(block, name, rows)
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
    _check_settings((1,), metric, None, search, nprobe)
    x = _embeddings(gallery, name, torch.device("cpu"))
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


def _search_queries(
    q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray, n_classes: int,
    leave_one_out: bool, ks: tuple[int, ...], metric: str, search: Union[str, "faiss.Index"], nprobe: int,
    seed: int, device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_rank_queries` from an approximate index's top ``max(max R, max K)`` list per query; a
    query with no relevant row in it gets rank ``depth`` (a miss at every K)."""
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
        ap[start:stop], rp[start:stop] = _precision_at_r(hit[:, :max_r], relevant[start:stop])
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


class _Ranking:
    """The ranking of every query, computed block by block.

    Two schedules. :meth:`run_by_rows` takes ``rows`` queries at a time against the whole gallery and
    finishes them from that block. :meth:`run_symmetric` (leave-one-out) computes each block of the
    symmetric similarity matrix once, on and above the diagonal, feeds it to the rows' running top
    lists and, transposed, to the columns' ones: half the products; the rows whose first relevant
    neighbour lies below their list are recomputed to count its rank, so it is chosen only when a
    sample of queries shows that they are fewer than half (:meth:`deep_fraction`).
    """

    def __init__(self, q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray,
                 n_classes: int, leave_one_out: bool, ks: tuple[int, ...], metric: str,
                 chunk_size: Optional[int], torch_kernels: bool) -> None:
        self.q, self.r, self.q_codes, self.r_codes = q, r, q_codes, r_codes
        self.leave_one_out = leave_one_out
        self.top_list = _TorchTop if torch_kernels else _HeapTop
        self.count = _count_torch if torch_kernels else _count_numpy
        n_q, n_r = q.shape[0], r.shape[0]
        self.class_size = np.bincount(r_codes, minlength=n_classes)
        self.relevant = self.class_size[q_codes] - int(leave_one_out)
        self.max_r = int(self.relevant.max())
        self.depth = max(self.max_r, min(max(ks, default=1), MIN_DEPTH))
        self.fetch = min(self.depth + 1, n_r - int(leave_one_out))
        self.members = np.argsort(r_codes, kind="stable")
        self.first_member = np.concatenate([[0], np.cumsum(self.class_size)[:-1]])
        self.rows = min(chunk_size or max(1, CHUNK_BYTES // (4 * n_r)), n_q)
        self.buffer = torch.empty(self.rows * n_r, dtype=torch.float32, device=q.device)
        self.neg_sq_norms = -(r * r).sum(dim=1) if metric == "euclidean" else None
        self.neg_q_sq_norms = -(q * q).sum(dim=1) if metric == "euclidean" else None
        self.rank = np.full(n_q, -1, dtype=np.int64)
        self.ap = np.zeros(n_q)
        self.rp = np.zeros(n_q)

    def similarities(self, index: torch.Tensor, col0: int = 0) -> torch.Tensor:
        """Similarities of queries ``index`` (at most ``rows``) to gallery rows ``col0:``, shape
        (len(index), M - col0), in the shared buffer; a query's own column is -inf in leave-one-out."""
        width = self.r.shape[0] - col0
        sim = self.buffer[: index.numel() * width].view(index.numel(), width)
        q, r = self.q[index], self.r[col0:]
        if self.neg_sq_norms is None:
            torch.mm(q, r.T, out=sim)
        else:
            # -|q - r|^2 = 2 q.r - |r|^2 - |q|^2, symmetric as the schedule of run_symmetric needs
            torch.addmm(self.neg_sq_norms[col0:], q, r.T, alpha=2.0, out=sim)
            sim.add_(self.neg_q_sq_norms[index][:, None])
        if self.leave_one_out:
            own = index - col0
            inside = own >= 0
            sim[torch.nonzero(inside)[:, 0], own[inside]] = -math.inf
        return sim

    def recomputed(self, index: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(queries, their full similarity rows) for the queries ``index``, ``rows`` at a time."""
        for start in range(0, index.size, self.rows):
            part = index[start: start + self.rows]
            yield part, self.similarities(torch.from_numpy(part).to(self.q.device))

    def deep_fraction(self, sample: int = 256) -> float:
        """Fraction of ``sample`` evenly spaced queries whose first relevant neighbour lies below the
        top list (queries without one left out)."""
        n_q = self.q.shape[0]
        index = np.unique(np.linspace(0, n_q - 1, min(n_q, sample)).astype(np.int64))
        index = index[self.relevant[index] > 0]
        if not index.size:
            return 0.0
        deep = sum(int(np.count_nonzero(self.rank_beyond(sim, self.q_codes[part]) >= self.depth))
                   for part, sim in self.recomputed(index))
        return deep / index.size

    def run_by_rows(self) -> None:
        n_q = self.q.shape[0]
        for start in range(0, n_q, self.rows):
            index = np.arange(start, min(start + self.rows, n_q))
            sim = self.similarities(torch.from_numpy(index).to(self.q.device))
            top = self.top_list(index.size, self.fetch, sim.device)
            top.add(sim, 0, 0)

            def from_block(pos: np.ndarray, sim: torch.Tensor = sim) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
                if pos.size:
                    yield pos, sim if pos.size == sim.shape[0] else sim[torch.from_numpy(pos).to(sim.device)]

            self.finish(index, *top.result(), from_block)

    def run_symmetric(self) -> None:
        n = self.q.shape[0]
        top = self.top_list(n, self.fetch, self.q.device)
        for start in range(0, n, self.rows):
            stop = min(start + self.rows, n)
            sim = self.similarities(torch.arange(start, stop, device=self.q.device), col0=start)
            top.add(sim, start, start)
            for col in range(stop - start, n - start, self.rows):
                top.add(_transposed(sim[:, col: col + self.rows]), start + col, start)
        # every query is finished at once, so positions in the finished rows are query indices
        self.finish(np.arange(n), *top.result(), self.recomputed)

    def finish(self, index: np.ndarray, values: np.ndarray, columns: np.ndarray,
               full_rows: Callable[[np.ndarray], Iterator[tuple[np.ndarray, torch.Tensor]]]) -> None:
        """Rank, AP@R and R-precision of queries ``index`` from their top ``fetch`` (values, columns);
        ``full_rows(positions)`` gives the full similarity rows of ``index[positions]`` when needed."""
        depth = self.depth
        order = np.lexsort((columns, -values))
        values = np.take_along_axis(values, order, axis=1)
        columns = np.take_along_axis(columns, order, axis=1)
        if self.fetch > depth:
            # a tie across the cut: which tied rows make the list is decided by index, on the full row
            for pos, sim in full_rows(np.flatnonzero(values[:, depth - 1] == values[:, depth])):
                full = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :depth]
                columns[pos, :depth] = full.cpu().numpy()
        codes = self.q_codes[index]
        relevant = self.relevant[index]
        hit = self.r_codes[columns[:, :depth]] == codes[:, None]
        found = hit.any(axis=1)
        rank = np.where(found, hit.argmax(axis=1), -1)
        for pos, sim in full_rows(np.flatnonzero(~found & (relevant > 0))):
            rank[pos] = self.rank_beyond(sim, codes[pos])
        self.rank[index] = rank
        self.ap[index], self.rp[index] = _precision_at_r(hit[:, : self.max_r], relevant)

    def rank_beyond(self, sim: torch.Tensor, codes: np.ndarray) -> np.ndarray:
        """0-based rank of the first relevant column in each row of ``sim`` (queries of classes ``codes``).

        The first relevant column is the most similar gallery row of the query's class (the smaller
        index among equals); its rank is the number of columns ranked before it.
        """
        size = self.class_size[codes]
        offsets = np.arange(int(size.max()))
        valid = offsets < size[:, None]
        columns = self.members[np.minimum(self.first_member[codes][:, None] + offsets, self.members.size - 1)]
        rows = torch.arange(sim.shape[0], device=sim.device)
        scores = sim[rows[:, None], torch.from_numpy(columns).to(sim.device)].cpu().numpy()
        scores[~valid] = -np.inf
        best = scores.max(axis=1)
        at_best = scores == best[:, None]
        best_column = columns[np.arange(codes.size), at_best.argmax(axis=1)]
        above, at_least = self.count(sim, best)
        rank = above
        # other rows tied with the best relevant one come first when their index is smaller
        mixed = np.flatnonzero(at_least - above > at_best.sum(axis=1))
        if mixed.size:
            sub = sim[torch.from_numpy(mixed).to(sim.device)].cpu().numpy()
            before = (sub == best[mixed, None]) & (np.arange(sub.shape[1]) < best_column[mixed, None])
            rank[mixed] += np.count_nonzero(before, axis=1)
        return rank


def _transposed(block: torch.Tensor, strip: int = 512) -> torch.Tensor:
    """A contiguous copy of ``block.T``; on CPU copied a strip of rows at a time, which is several
    times faster than one strided copy of a slice of a wide block."""
    if block.device.type != "cpu":
        return block.T.contiguous()
    source = block.numpy()
    out = np.empty(source.shape[::-1], dtype=source.dtype)
    for start in range(0, source.shape[0], strip):
        out[:, start: start + strip] = source[start: start + strip].T
    return torch.from_numpy(out)


class _HeapTop:
    """The ``k`` largest entries of each of ``n_rows`` rows seen so far, in faiss heaps (CPU blocks)."""

    def __init__(self, n_rows: int, k: int, device: torch.device) -> None:
        self.values = np.empty((n_rows, k), dtype=np.float32)
        self.columns = np.empty((n_rows, k), dtype=np.int64)
        self.heap = faiss.float_minheap_array_t()
        self.heap.nh, self.heap.k = n_rows, k
        self.heap.val, self.heap.ids = faiss.swig_ptr(self.values), faiss.swig_ptr(self.columns)
        self.heap.heapify()

    def add(self, block: torch.Tensor, row0: int, col0: int) -> None:
        """Offer ``block`` (contiguous), entry (i, j) being row ``row0 + i``, column ``col0 + j``."""
        data = block.numpy()
        self.heap.addn(data.shape[1], faiss.swig_ptr(data), col0, row0, data.shape[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, columns), each (n_rows, k), in no guaranteed order among ties."""
        self.heap.reorder()
        return self.values, self.columns


class _TorchTop:
    """:class:`_HeapTop` with ``torch.topk``, on any device."""

    def __init__(self, n_rows: int, k: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((n_rows, k), -math.inf, device=device)
        self.columns = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)

    def add(self, block: torch.Tensor, row0: int, col0: int) -> None:
        rows = slice(row0, row0 + block.shape[0])
        values, columns = torch.topk(block, min(self.k, block.shape[1]), dim=1)
        values = torch.cat([self.values[rows], values], dim=1)
        columns = torch.cat([self.columns[rows], columns + col0], dim=1)
        best = torch.topk(values, self.k, dim=1)
        self.values[rows] = best.values
        self.columns[rows] = columns.gather(1, best.indices)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values.cpu().numpy(), self.columns.cpu().numpy()


def _count_torch(sim: torch.Tensor, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sim``: entries > threshold and entries >= threshold."""
    t = torch.from_numpy(threshold).to(sim.device)[:, None]
    return (sim > t).sum(dim=1).cpu().numpy(), (sim >= t).sum(dim=1).cpu().numpy()


def _count_numpy(sim: torch.Tensor, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_count_torch` for a CPU block, with numpy: several times faster there."""
    block, t = sim.numpy(), threshold[:, None]
    return np.count_nonzero(block > t, axis=1), np.count_nonzero(block >= t, axis=1)


def _precision_at_r(hit: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP@R and R-precision per row from the relevance of the first max(R) neighbours (rows with R = 0: 0)."""
    r = np.maximum(relevant, 1)
    within = np.arange(hit.shape[1]) < relevant[:, None]
    correct = np.cumsum(hit, axis=1)
    precision = correct / np.arange(1, hit.shape[1] + 1)
    ap = np.sum(precision * (hit & within), axis=1) / r
    rp = np.sum(hit & within, axis=1) / r
    return ap, rp


def _retrieval_metrics(
    rank: np.ndarray, ap: np.ndarray, rp: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...],
) -> dict[str, float]:
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
