"""The exact ranking engine: its two schedules and two sets of kernels against each other and against
the brute-force ranking."""

import numpy as np
import pytest
import torch

from pygml.evaluation.ranking import _Ranking


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_schedules_and_kernels_agree(metric, brute_force, tied_set):
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
