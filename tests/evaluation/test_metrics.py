"""evaluate and RetrievalEvaluator against pytorch-metric-learning's AccuracyCalculator (the oracle), the
brute-force numpy ranking and hand-computed cases."""

import numpy as np
import pytest
import torch

from pygml.evaluation import RetrievalEvaluator, evaluate

pml_calc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

PML_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def pml(query, query_labels, reference=None, reference_labels=None):
    calc = pml_calc.AccuracyCalculator(include=PML_KEYS, device=torch.device("cpu"))
    return calc.get_accuracy(query, query_labels, reference, reference_labels)


def assert_matches(ours, reference, keys=PML_KEYS):
    for key in keys:
        assert abs(ours[key] - reference[key]) <= 1e-6, (key, ours[key], reference[key])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leave_one_out_matches_pml_with_singletons(metric, unit, brute_force, random_set):
    rng = np.random.default_rng(0)
    x, y = random_set(rng, 700, 8, 90, singletons=15)
    ours = evaluate(x, y, recall_at=(1, 5, 50, 699), metric=metric, nmi=False, chunk_size=97)
    assert_matches(ours, pml(unit(x) if metric == "cosine" else x, y))
    first, _ = brute_force(x, y, metric=metric)
    for k in (1, 5, 50, 699):
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(first < k), abs=1e-12)
    assert ours["recall@1"] == ours["precision_at_1"]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_vs_gallery_matches_pml(metric, unit, brute_force, random_set):
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
def test_exact_ties_follow_pml_and_index_order(leave_one_out, brute_force, tied_set):
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
def test_deep_first_hits_tied_with_other_rows(leave_one_out, brute_force, tied_set):
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


def test_euclidean_ties_on_integer_rows(brute_force):
    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, size=(30, 5)).astype(np.float32)
    x = base[rng.integers(0, 30, 300)]
    y = rng.integers(0, 8, 300)
    ours = evaluate(x, y, recall_at=(1, 4, 16, 299), metric="euclidean", nmi=False, chunk_size=50)
    assert_matches(ours, pml(x, y))
    first, dense = brute_force(x, y, metric="euclidean")
    assert_matches(ours, dense)
    assert ours["recall@16"] == pytest.approx(np.mean(first < 16), abs=1e-12)


def test_clustered_embeddings_with_duplicates_match_pml(unit):
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


def test_no_answerable_query_is_an_error_not_nan():
    rng = np.random.default_rng(9)
    q, g = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="no query has a reference row of its class"):
        evaluate(q, np.arange(5), g, np.arange(10, 16), recall_at=(1, 2), nmi=False)
    with pytest.raises(ValueError, match="no query has a reference row of its class"):
        evaluate(q, np.arange(5), recall_at=(1,), nmi=False)


def test_evaluator_object_applies_its_settings(random_set):
    rng = np.random.default_rng(11)
    x, y = random_set(rng, 120, 6, 12)
    evaluator = RetrievalEvaluator(recall_at=[1, 2, 4, 8], metric="euclidean", nmi=True, seed=2)
    assert evaluator.recall_at == (1, 2, 4, 8)
    out = evaluator(x, y)
    assert out == evaluate(x, y, recall_at=(1, 2, 4, 8), metric="euclidean", seed=2)
    assert list(out)[:4] == ["recall@1", "recall@2", "recall@4", "recall@8"]
