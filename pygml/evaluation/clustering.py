r"""Clustering metrics: k-means assignments (faiss), NMI from the contingency table, AMI (scikit-learn).

The definitions are in :mod:`pygml.evaluation`.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

#: k-means iterations, as in pytorch-metric-learning's ``FaissKMeans``
KMEANS_ITERATIONS = 20


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


def adjusted_mutual_info(labels: np.ndarray, assignment: np.ndarray) -> float:
    """AMI of two labelings of the same N items: scikit-learn's ``adjusted_mutual_info_score``."""
    try:
        from sklearn.metrics import adjusted_mutual_info_score
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("ami=True needs scikit-learn: pip install scikit-learn") from err
    return float(adjusted_mutual_info_score(labels, assignment))
