"""k-means assignments, NMI and AMI against scikit-learn."""

import numpy as np
import pytest
import torch

from pygml.evaluation import evaluate, kmeans_assignments, normalized_mutual_info

sk_metrics = pytest.importorskip("sklearn.metrics")


def test_nmi_matches_sklearn():
    rng = np.random.default_rng(7)
    for n, a, b in [(50, 3, 4), (400, 30, 30), (1000, 200, 150), (12, 12, 1)]:
        y, c = rng.integers(0, a, n), rng.integers(0, b, n)
        assert normalized_mutual_info(y, c) == pytest.approx(sk_metrics.normalized_mutual_info_score(y, c), abs=1e-12)
    y = rng.integers(0, 9, 100)
    assert normalized_mutual_info(y, (y * 7 + 3) % 9) == pytest.approx(1.0)
    assert normalized_mutual_info(np.zeros(5), np.ones(5)) == 1.0
    assert normalized_mutual_info(y, np.zeros(100)) == 0.0


def test_evaluate_clusters_unit_rows_with_its_seed(unit):
    rng = np.random.default_rng(8)
    centres = unit(rng.standard_normal((6, 10)))
    y = rng.integers(0, 6, 300)
    x = (centres[y] + 0.05 * rng.standard_normal((300, 10))) * rng.uniform(0.5, 3, (300, 1))
    out = evaluate(x, y, recall_at=(1,), nmi=True, ami=True, seed=5)
    clusters = kmeans_assignments(torch.from_numpy(unit(x)).float(), 6, seed=5)
    assert out["NMI"] == pytest.approx(sk_metrics.normalized_mutual_info_score(y, clusters), abs=1e-12)
    assert out["AMI"] == pytest.approx(sk_metrics.adjusted_mutual_info_score(y, clusters), abs=1e-12)
    assert out["NMI"] > 0.8
    retrieval = {"recall@1", "precision_at_1", "r_precision", "mean_average_precision_at_r"}
    assert evaluate(x, y, recall_at=(1,), nmi=False).keys() == retrieval
