"""The retrieval evaluator against pytorch-metric-learning's AccuracyCalculator (the oracle), a
brute-force numpy ranking, hand-computed cases and scikit-learn's NMI."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import faiss

from pygml.evaluation import (
    RetrievalEvaluator,
    _Ranking,
    _without_self,
    build_index,
    evaluate,
    kmeans_assignments,
    metrics_frame,
    metrics_table,
    normalized_mutual_info,
)

pml_calc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
sk_metrics = pytest.importorskip("sklearn.metrics")

PML_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def pml(query, query_labels, reference=None, reference_labels=None):
    calc = pml_calc.AccuracyCalculator(include=PML_KEYS, device=torch.device("cpu"))
    return calc.get_accuracy(query, query_labels, reference, reference_labels)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(query, query_labels, reference=None, reference_labels=None, metric="cosine"):
    """Every metric from the full similarity matrix, gallery sorted by (-similarity, index)."""
    loo = reference is None
    if loo:
        reference, reference_labels = query, query_labels
    q, r = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    if metric == "cosine":
        sim = unit(q) @ unit(r).T
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


def assert_matches(ours, reference, keys=PML_KEYS):
    for key in keys:
        assert abs(ours[key] - reference[key]) <= 1e-6, (key, ours[key], reference[key])


def random_set(rng, n, d, n_classes, singletons=0):
    """Random rows and labels; ``singletons`` extra rows each in a class of its own."""
    labels = np.concatenate([rng.integers(0, n_classes, n - singletons), n_classes + np.arange(singletons)])
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, rng.permutation(labels)


def tied_set(rng, n, n_base=25, n_classes=6):
    """Rows drawn with repetition from a few unit vectors whose entries are 0 or ±1/2 (4 non-zeros):
    every similarity and distance is exact in float32, so duplicates tie exactly; labels follow the
    base vector only partly, so the order of tied rows changes the metrics."""
    base = np.zeros((n_base, 16), np.float32)
    for row in base:
        row[rng.choice(16, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    which = rng.integers(0, n_base, n)
    labels = np.where(rng.random(n) < 0.6, which % n_classes, rng.integers(0, n_classes, n))
    return base[which], labels


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leave_one_out_matches_pml_with_singletons(metric):
    rng = np.random.default_rng(0)
    x, y = random_set(rng, 700, 8, 90, singletons=15)
    ours = evaluate(x, y, recall_at=(1, 5, 50, 699), metric=metric, nmi=False, chunk_size=97)
    assert_matches(ours, pml(unit(x) if metric == "cosine" else x, y))
    first, _ = brute_force(x, y, metric=metric)
    for k in (1, 5, 50, 699):
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(first < k), abs=1e-12)
    assert ours["recall@1"] == ours["precision_at_1"]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_vs_gallery_matches_pml(metric):
    rng = np.random.default_rng(1)
    q, qy = random_set(rng, 300, 8, 60)
    g, gy = random_set(rng, 450, 8, 60)
    qy[:10] = 1000 + np.arange(10)  # queries with no gallery row of their class
    ours = evaluate(q, qy, g, gy, recall_at=(1, 3, 30, 450), metric=metric, nmi=False, chunk_size=64)
    if metric == "cosine":
        q, g = unit(q), unit(g)
    assert_matches(ours, pml(q, qy, g, gy))
    first, _ = brute_force(q, qy, g, gy, metric=metric)
    for k in (1, 3, 30, 450):
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(first < k), abs=1e-12)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_exact_ties_follow_pml_and_index_order(leave_one_out):
    rng = np.random.default_rng(2)
    x, y = tied_set(rng, 400)
    args = (x, y) if leave_one_out else (x[:150], y[:150], x[150:], y[150:])
    ks = (1, 2, 3, 7, 40)
    for chunk in (None, 33):
        ours = evaluate(*args, recall_at=ks, nmi=False, chunk_size=chunk)
        assert_matches(ours, pml(*args))
        first, dense = brute_force(*args)
        assert_matches(ours, dense)
        for k in ks:
            assert ours[f"recall@{k}"] == pytest.approx(np.mean(first < k), abs=1e-12)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_deep_first_hits_tied_with_other_rows(leave_one_out):
    """Small classes over heavily duplicated rows: most first relevant rows lie below the sorted
    list and tie exactly with rows of other classes, so their rank is counted with the index rule."""
    rng = np.random.default_rng(12)
    x, _ = tied_set(rng, 500)
    y = rng.integers(0, 180, 500)
    args = (x, y) if leave_one_out else (x[:200], y[:200], x[200:], y[200:])
    ks = (1, 2, 33, 34, 35, 60, 120, 299)
    ours = evaluate(*args, recall_at=ks, nmi=False, chunk_size=64)
    first, dense = brute_force(*args)
    assert np.mean(first >= 32) > 0.3
    for k in ks:
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(first < k), abs=1e-12)
    assert_matches(ours, dense)
    assert_matches(ours, pml(*args))


def test_euclidean_ties_on_integer_rows():
    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, size=(30, 5)).astype(np.float32)
    x = base[rng.integers(0, 30, 300)]
    y = rng.integers(0, 8, 300)
    ours = evaluate(x, y, recall_at=(1, 4, 16, 299), metric="euclidean", nmi=False, chunk_size=50)
    assert_matches(ours, pml(x, y))
    first, dense = brute_force(x, y, metric="euclidean")
    assert_matches(ours, dense)
    assert ours["recall@16"] == pytest.approx(np.mean(first < 16), abs=1e-12)


def test_clustered_embeddings_with_duplicates_match_pml():
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    y = rng.integers(0, 40, 500)
    x = centres[y] + 0.7 * rng.standard_normal((500, 32)).astype(np.float32)
    x[250:300] = x[200:250]  # exact duplicates, some relabelled
    y[250:275] = (y[200:225] + 1) % 40
    ours = evaluate(x, y, recall_at=(1, 2, 4, 8), nmi=False)
    assert_matches(ours, pml(unit(x), y))
    assert ours["precision_at_1"] > 0.5


def test_self_is_removed_by_index_not_by_rank():
    # rows 0 and 1 are identical: row 0's nearest neighbour is row 1 (label 1), then the tie of rows
    # 2 and 3 at similarity 0 is broken by index; the same for rows 2, 3.
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    out = evaluate(x, y, recall_at=(1, 2, 3), nmi=False)
    assert out["recall@1"] == 0.0 and out["recall@2"] == 0.5 and out["recall@3"] == 1.0
    assert out["r_precision"] == 0.0 and out["mean_average_precision_at_r"] == 0.0


def test_hand_computed_map_at_r():
    # one query at angle 0, gallery at angles 0.1 j: ranking = gallery order, relevance 1 0 1 0 0 1,
    # R = 3 -> R-precision 2/3, AP@R = (1/1 + 2/3) / 3 = 5/9
    angles = 0.1 * np.arange(6)
    gallery = np.stack([np.cos(angles), np.sin(angles)], 1)
    out = evaluate(np.array([[1.0, 0.0]]), np.array([7]), gallery, np.array([7, 2, 7, 2, 2, 7]),
                   recall_at=(1, 2, 6), nmi=False)
    assert out["precision_at_1"] == 1.0 and out["recall@6"] == 1.0
    assert out["r_precision"] == pytest.approx(2 / 3)
    assert out["mean_average_precision_at_r"] == pytest.approx(5 / 9)
    far = evaluate(np.array([[0.0, -1.0]]), np.array([7]), gallery, np.array([2, 2, 2, 2, 2, 7]),
                   recall_at=(1, 5, 6), nmi=False)
    assert (far["recall@5"], far["recall@6"], far["mean_average_precision_at_r"]) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_schedules_and_kernels_agree(metric):
    """Leave-one-out by row blocks and by symmetric blocks, with the CPU kernels (faiss heap, numpy
    counts) and the CUDA ones (torch.topk, torch counts, here on CPU), give the same ranks."""
    rng = np.random.default_rng(5)
    x, _ = tied_set(rng, 300)
    _, codes = np.unique(rng.integers(0, 40, 300), return_inverse=True)
    q = torch.from_numpy(x)
    results = []
    for torch_kernels in (False, True):
        for symmetric in (False, True):
            ranking = _Ranking(q, q, codes, codes, codes.max() + 1, True, (1, 10, 100), metric, 41, torch_kernels)
            if symmetric:
                ranking.run_symmetric()
            else:
                ranking.run_by_rows()
            results.append((ranking.rank, ranking.ap, ranking.rp))
    assert (results[0][0] >= 32).any()
    assert ranking.deep_fraction() == pytest.approx(np.mean(results[0][0][ranking.relevant > 0] >= 32), abs=0.1)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    first, dense = brute_force(x, codes, metric=metric)
    answerable = ranking.relevant > 0
    np.testing.assert_array_equal(results[0][0][answerable], first)
    assert results[0][1][answerable].mean() == pytest.approx(dense["mean_average_precision_at_r"], abs=1e-12)


def test_input_types_and_dtypes_agree():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 12)).astype(np.float16).astype(np.float32)
    y = rng.integers(0, 20, 200)
    kw = dict(recall_at=(1, 4), nmi=True, seed=3)
    expected = evaluate(x, y, **kw)
    for rows, labels in [(torch.from_numpy(x), torch.from_numpy(y)), (x.astype(np.float64), y.astype(np.int32)),
                         (x.astype(np.float16), y), (torch.from_numpy(x).double(), list(y))]:
        assert evaluate(rows, labels, **kw) == expected


def test_nmi_matches_sklearn():
    rng = np.random.default_rng(7)
    for n, a, b in [(50, 3, 4), (400, 30, 30), (1000, 200, 150), (12, 12, 1)]:
        y, c = rng.integers(0, a, n), rng.integers(0, b, n)
        assert normalized_mutual_info(y, c) == pytest.approx(sk_metrics.normalized_mutual_info_score(y, c), abs=1e-12)
    y = rng.integers(0, 9, 100)
    assert normalized_mutual_info(y, (y * 7 + 3) % 9) == pytest.approx(1.0)
    assert normalized_mutual_info(np.zeros(5), np.ones(5)) == 1.0
    assert normalized_mutual_info(y, np.zeros(100)) == 0.0


def test_evaluate_clusters_unit_rows_with_its_seed():
    rng = np.random.default_rng(8)
    centres = unit(rng.standard_normal((6, 10)))
    y = rng.integers(0, 6, 300)
    x = (centres[y] + 0.05 * rng.standard_normal((300, 10))) * rng.uniform(0.5, 3, (300, 1))
    out = evaluate(x, y, recall_at=(1,), nmi=True, ami=True, seed=5)
    clusters = kmeans_assignments(torch.from_numpy(unit(x)).float(), 6, seed=5)
    assert out["NMI"] == pytest.approx(sk_metrics.normalized_mutual_info_score(y, clusters), abs=1e-12)
    assert out["AMI"] == pytest.approx(sk_metrics.adjusted_mutual_info_score(y, clusters), abs=1e-12)
    assert out["NMI"] > 0.8
    assert evaluate(x, y, recall_at=(1,), nmi=False).keys() == {"recall@1", *PML_KEYS}


def test_no_answerable_query_is_an_error_not_nan():
    rng = np.random.default_rng(9)
    q, g = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="no query has a reference row of its class"):
        evaluate(q, np.arange(5), g, np.arange(10, 16), recall_at=(1, 2), nmi=False)
    with pytest.raises(ValueError, match="no query has a reference row of its class"):
        evaluate(q, np.arange(5), recall_at=(1,), nmi=False)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: evaluate(x, y[:-1]), "query_labels has 9 entries but its embeddings have 10 rows"),
    (lambda x, y: evaluate(x, y, x[:4], y[:5]), "reference_labels has 5 entries"),
    (lambda x, y: evaluate(np.where(np.eye(10, 4) > 0, np.nan, x), y), "query has NaN or inf"),
    (lambda x, y: evaluate(x, y, np.full((3, 4), np.inf), y[:3]), "reference has NaN or inf"),
    (lambda x, y: evaluate(torch.tensor([[1.0, 2.0]], dtype=torch.float64) * 1e300, y[:1]), "NaN or inf"),
    (lambda x, y: evaluate(x[:0], y[:0]), "query is empty"),
    (lambda x, y: evaluate(x, y, x[:0], y[:0]), "reference is empty"),
    (lambda x, y: evaluate(x[:, :0], y), "query is empty"),
    (lambda x, y: evaluate(x, y, recall_at=(1, 10)), "K=10 but the gallery has only 9 rows"),
    (lambda x, y: evaluate(x, y, x[:3], y[:3], recall_at=(4,)), "K=4 but the gallery has only 3 rows"),
    (lambda x, y: evaluate(x[:, 0], y), "query must be 2-D"),
    (lambda x, y: evaluate(x, y, x[:, :3], y), "query has 4 dimensions but reference has 3"),
    (lambda x, y: evaluate(x, y, metric="manhattan"), "metric must be one of"),
    (lambda x, y: evaluate(x, y, x), "without reference_labels"),
    (lambda x, y: evaluate(x, y, reference_labels=y), "without reference"),
    (lambda x, y: evaluate(x, y.astype(float)), "query_labels must hold integer"),
    (lambda x, y: evaluate(x, y[:, None]), "query_labels must be 1-D"),
    (lambda x, y: evaluate(x.astype(int), y), "query must hold floating-point"),
    (lambda x, y: evaluate(x.tolist(), y), "query must be a torch.Tensor or numpy.ndarray"),
    (lambda x, y: evaluate(np.zeros((10, 4)), y), "query row 0 is all zeros"),
    (lambda x, y: evaluate(x[:1], y[:1]), "leave-one-out needs at least 2 rows"),
    (lambda x, y: evaluate(x, y, recall_at=(0, 1)), "recall_at must hold positive integers"),
    (lambda x, y: evaluate(x, y, chunk_size=0), "chunk_size must be a positive"),
    (lambda x, y: RetrievalEvaluator(metric="dot"), "metric must be one of"),
])
def test_bad_input_is_an_error_naming_it(call, match):
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
    with pytest.raises(ValueError, match=match):
        call(x, y)


def test_evaluator_object_and_renderings():
    rng = np.random.default_rng(11)
    x, y = random_set(rng, 120, 6, 12)
    evaluator = RetrievalEvaluator(recall_at=[1, 2, 4, 8], metric="euclidean", nmi=True, seed=2)
    assert evaluator.recall_at == (1, 2, 4, 8)
    out = evaluator(x, y)
    assert out == evaluate(x, y, recall_at=(1, 2, 4, 8), metric="euclidean", seed=2)
    assert list(out)[:4] == ["recall@1", "recall@2", "recall@4", "recall@8"]

    table = metrics_table({"recall@1": 0.81404, "mean_average_precision_at_r": 0.5})
    lines = table.splitlines()
    assert lines[2].split() == ["recall@1", "81.40"] and lines[3].split() == ["mean_average_precision_at_r", "50.00"]
    assert len({len(line) for line in lines}) == 1

    frame = metrics_frame(out)
    assert isinstance(frame, pd.DataFrame) and frame.shape == (1, len(out))
    assert frame.iloc[0].to_dict() == out


# --- approximate search (faiss index) -------------------------------------------------------------

def clustered_set(rng, n_classes=60, per_class=8, dim=16, noise=0.35):
    """Rows around class centres, in random order."""
    centres = rng.standard_normal((n_classes, dim))
    y = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    return (centres[y] + noise * rng.standard_normal((y.size, dim))).astype(np.float32), y


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_exhaustive_index_equals_exact_search(metric, leave_one_out):
    """'Flat' (an exhaustive index), and IVF visiting every list, rank as the exact evaluator does."""
    rng = np.random.default_rng(20)
    x, y = random_set(rng, 400, 8, 30)
    args = (x, y) if leave_one_out else (x[:100], y[:100], x[100:], y[100:])
    exact = evaluate(*args, recall_at=(1, 5, 20), metric=metric, nmi=False)
    for search, nprobe in (("Flat", 1), ("IVF8,Flat", 8)):
        approx = evaluate(*args, recall_at=(1, 5, 20), metric=metric, nmi=False, search=search, nprobe=nprobe)
        assert approx.keys() == exact.keys()
        for key in exact:
            assert approx[key] == pytest.approx(exact[key], abs=1e-12), (search, key)


def test_ivf_loses_little_recall_on_clustered_rows_and_visits_fewer_lists():
    rng = np.random.default_rng(21)
    x, y = clustered_set(rng, n_classes=150, per_class=10, dim=32, noise=0.45)
    exact = evaluate(x, y, recall_at=(1, 10), nmi=False)
    one_list = evaluate(x, y, recall_at=(1, 10), nmi=False, search="IVF32,Flat", nprobe=1)
    several = evaluate(x, y, recall_at=(1, 10), nmi=False, search="IVF32,Flat", nprobe=4)
    assert exact["recall@1"] > 0.9
    assert exact["recall@1"] - several["recall@1"] < 0.02
    assert exact["recall@10"] - several["recall@10"] < 0.02
    # one list of 32 must miss neighbours that lie across a list boundary: the search is really approximate
    assert one_list["mean_average_precision_at_r"] < several["mean_average_precision_at_r"] \
        <= exact["mean_average_precision_at_r"] + 1e-9


def test_compressed_index_and_memory_mapped_gallery(tmp_path):
    """A PQ index over a gallery read from a memory-mapped file gives what the in-memory gallery gives."""
    rng = np.random.default_rng(22)
    x, y = clustered_set(rng, n_classes=100, per_class=6, dim=32, noise=0.3)
    path = tmp_path / "gallery.npy"
    np.save(path, x[100:])
    gallery = np.load(path, mmap_mode="r")
    kw = dict(recall_at=(1, 4), nmi=False, search="IVF4,PQ8", nprobe=4)
    mapped = evaluate(x[:100], y[:100], gallery, y[100:], **kw)
    in_memory = evaluate(x[:100], y[:100], x[100:], y[100:], **kw)
    assert mapped == in_memory
    exact = evaluate(x[:100], y[:100], x[100:], y[100:], recall_at=(1, 4), nmi=False)
    assert exact["recall@1"] > 0.9 and exact["recall@1"] - mapped["recall@1"] < 0.05


def test_a_zero_row_in_the_training_sample_is_named_by_its_row_of_the_gallery():
    x = np.random.default_rng(26).standard_normal((20_000, 4)).astype(np.float32)
    x[15_000:] = 0.0  # the seeded training sample (16,384 of 20,000 rows) holds some of them
    with pytest.raises(ValueError, match=r"reference row 15\d{3} is all zeros"):
        build_index(x, "IVF4,Flat")


def test_without_self_drops_the_query_or_the_last_column():
    ids = np.array([[3, 0, 7], [5, 2, 9], [4, 4 - 4, 1]])
    out = _without_self(ids, np.array([0, 1, 4]))
    assert out.tolist() == [[3, 7], [5, 2], [0, 1]]


def test_build_index_settings_and_nprobe():
    rng = np.random.default_rng(23)
    x, _ = clustered_set(rng, n_classes=40, per_class=10, dim=16)
    index = build_index(x, "IVF16,Flat", nprobe=5)
    assert index.ntotal == len(x) and faiss.extract_index_ivf(index).nprobe == 5
    index = build_index(x, "IVF16,Flat", nprobe=100)  # capped at the number of lists
    assert faiss.extract_index_ivf(index).nprobe == 16
    # cosine rows are normalised: the best match of a row is itself with similarity 1
    sims, ids = build_index(x, "Flat").search(np.ascontiguousarray(x[:5] / np.linalg.norm(x[:5], axis=1)[:, None]), 1)
    assert ids.ravel().tolist() == [0, 1, 2, 3, 4] and np.allclose(sims, 1.0, atol=1e-5)


def test_a_built_index_is_reused_as_it_is():
    rng = np.random.default_rng(25)
    x, y = clustered_set(rng, n_classes=50, per_class=8, dim=16, noise=0.5)
    q, qy, g, gy = x[:80], y[:80], x[80:], y[80:]
    index = build_index(g, "IVF8,Flat", nprobe=2)
    assert evaluate(q, qy, g, gy, nmi=False, search=index) == evaluate(q, qy, g, gy, nmi=False, search="IVF8,Flat",
                                                                      nprobe=2)
    faiss.extract_index_ivf(index).nprobe = 8  # every list: exact
    assert evaluate(q, qy, g, gy, nmi=False, search=index) == pytest.approx(evaluate(q, qy, g, gy, nmi=False))
    with pytest.raises(ValueError, match="holding 320 rows but reference has 319"):
        evaluate(q, qy, g[:-1], gy[:-1], search=index)
    with pytest.raises(ValueError, match="the other metric"):
        evaluate(q, qy, g, gy, search=index, metric="euclidean")
    with pytest.raises(ValueError, match="16-dimensional rows but reference has 15"):
        evaluate(q[:, :15], qy, g[:, :15], gy, search=index)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: evaluate(x, y, search="IVF4096,Flat"), "asks for 4096 inverted lists but query has only 40 rows"),
    (lambda x, y: evaluate(x, y, search="NotAnIndex"), "search='NotAnIndex' is not a faiss index factory string"),
    (lambda x, y: evaluate(x, y, search="IVF4,PQ3"), "multiple of the number of subquantizers"),
    (lambda x, y: evaluate(x, y, search=""), "search must be 'exact' or a faiss index factory string"),
    (lambda x, y: evaluate(x, y, search="IVF4,Flat", nprobe=0), "nprobe must be a positive"),
    (lambda x, y: evaluate(x * (np.arange(40) != 0)[:, None], y, search="Flat"), "query row 0 is all zeros"),
    (lambda x, y: build_index(np.vstack([x, np.zeros((1, 8))]), "Flat"), "reference row 40 is all zeros"),
    (lambda x, y: evaluate(np.where(np.eye(40, 8) > 0, np.nan, x), y, search="Flat"), "query has NaN or inf"),
])
def test_bad_approximate_settings_are_errors_naming_them(call, match):
    rng = np.random.default_rng(24)
    x, y = rng.standard_normal((40, 8)), rng.integers(0, 4, 40)
    with pytest.raises(ValueError, match=match):
        call(x, y)


def test_large_gallery_benchmark_quick_run(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the repository root holds bench/
    from bench.bench_large_gallery import run

    rows = {r["name"]: r for r in run(quick=True)}
    losses = [r for name, r in rows.items() if "Flat nprobe=64" in name and "loss" in name]
    assert len(losses) == 4  # every list visited: Recall@1 and @10 of both sets
    assert all(abs(r["ours"]) < 1e-9 for r in losses)
    sizes = [r for name, r in rows.items() if "index size" in name]
    assert sizes and all(r["ratio"] < 0.2 for r in sizes)
