"""References and data of the evaluator's tests, as fixtures: a brute-force numpy ranking and random,
tied and clustered sets of rows."""

import numpy as np
import pytest


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(query, query_labels, reference=None, reference_labels=None, metric="cosine"):
    """Every metric from the full similarity matrix, gallery sorted by (-similarity, index): the 0-based
    rank of each answerable query's first relevant row, and the metrics other than Recall@K."""
    loo = reference is None
    if loo:
        reference, reference_labels = query, query_labels
    q, r = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    if metric == "cosine":
        sim = _unit(q) @ _unit(r).T
    else:
        sim = -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    if loo:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, : len(r) - loo]
    rel = reference_labels[order] == query_labels[:, None]
    big_r = rel.sum(1)
    keep = big_r > 0
    rel, big_r = rel[keep], big_r[keep]
    first = rel.argmax(1)
    cum = np.cumsum(rel, 1)
    within = np.arange(rel.shape[1]) < big_r[:, None]
    rp = (rel & within).sum(1) / big_r
    ap = ((cum / np.arange(1, rel.shape[1] + 1)) * (rel & within)).sum(1) / big_r
    return first, {"precision_at_1": np.mean(first == 0), "r_precision": rp.mean(),
                   "mean_average_precision_at_r": ap.mean()}


def _random_set(rng, n, d, n_classes, singletons=0):
    """Random rows and labels; ``singletons`` extra rows each in a class of its own."""
    labels = np.concatenate([rng.integers(0, n_classes, n - singletons), n_classes + np.arange(singletons)])
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, rng.permutation(labels)


def _tied_set(rng, n, n_base=25, n_classes=6):
    """Rows drawn with repetition from a few unit vectors whose entries are 0 or ±1/2 (4 non-zeros):
    every similarity and distance is exact in float32, so duplicates tie exactly; labels follow the
    base vector only partly, so the order of tied rows changes the metrics."""
    base = np.zeros((n_base, 16), np.float32)
    for row in base:
        row[rng.choice(16, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    which = rng.integers(0, n_base, n)
    labels = np.where(rng.random(n) < 0.6, which % n_classes, rng.integers(0, n_classes, n))
    return base[which], labels


def _clustered_set(rng, n_classes=60, per_class=8, dim=16, noise=0.35):
    """Rows around class centres, in random order."""
    centres = rng.standard_normal((n_classes, dim))
    y = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    return (centres[y] + noise * rng.standard_normal((y.size, dim))).astype(np.float32), y


@pytest.fixture
def unit():
    """``unit(x)``: the rows of a numpy array divided by their norms."""
    return _unit


@pytest.fixture
def brute_force():
    """``brute_force(query, query_labels, reference=None, reference_labels=None, metric="cosine")``:
    (rank of the first relevant row per answerable query, dense precision@1 / R-precision / MAP@R)."""
    return _brute_force


@pytest.fixture
def random_set():
    """``random_set(rng, n, d, n_classes, singletons=0)``: (rows (n, d) float32, labels (n,))."""
    return _random_set


@pytest.fixture
def tied_set():
    """``tied_set(rng, n, n_base=25, n_classes=6)``: (rows (n, 16) with exact ties, labels (n,))."""
    return _tied_set


@pytest.fixture
def clustered_set():
    """``clustered_set(rng, n_classes=60, per_class=8, dim=16, noise=0.35)``: (rows, labels)."""
    return _clustered_set
