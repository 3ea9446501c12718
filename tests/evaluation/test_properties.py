"""The evaluator on random shapes, dtypes and label patterns (fixed budget, CI-friendly): metrics in
[0, 1] or a ValueError naming the argument, and an exhaustive faiss index giving the exact numbers."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pygml.evaluation import evaluate

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def embeddings(draw, max_n=40, max_classes=6):
    """(rows (n, d) float32 or float64, labels (n,)): one class, all distinct, or random labels."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 6))
    pattern = draw(st.sampled_from(["one class", "all distinct", "random"]))
    if pattern == "one class":
        y = [0] * n
    elif pattern == "all distinct":
        y = list(range(n))
    else:
        y = draw(st.lists(st.integers(0, max_classes), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x, torch.tensor(y, dtype=torch.long)


@SETTINGS
@given(embeddings(), st.sampled_from(["cosine", "euclidean"]))
def test_evaluator_in_range_or_clear_error(batch, metric):
    x, y = batch
    n = x.size(0)
    if n < 2 or len(set(y.tolist())) == n:
        with pytest.raises(ValueError):
            evaluate(x, y, recall_at=(1,), metric=metric, nmi=False)
        return
    m = evaluate(x, y, recall_at=(1,), metric=metric, nmi=n > 2)
    for key, value in m.items():
        assert 0.0 <= value <= 1.0 + 1e-9, (key, value)
    assert m["recall@1"] == pytest.approx(m["precision_at_1"])
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, y, recall_at=(1,), metric=metric, nmi=False)
    with pytest.raises(ValueError):
        evaluate(x, y, recall_at=(n,), metric=metric, nmi=False)  # K larger than the gallery (n - 1)
    with pytest.raises(ValueError):
        evaluate(x, np.asarray(y)[:-1], recall_at=(1,), nmi=False)


@SETTINGS
@given(embeddings(), st.sampled_from(["cosine", "euclidean"]))
def test_exhaustive_index_search_equals_the_exact_evaluator(batch, metric):
    """search="Flat" reads the metrics from a faiss kNN list: on rows without near-ties it must give
    the exact evaluator's numbers, for any shape and label pattern, or the same clear error."""
    x, y = batch
    assume(metric == "euclidean" or x.size(1) > 1)  # 1-D rows normalise to ±1: ties at the list's cut
    n = x.size(0)
    ks = (1, max(1, min(3, n - 1)))
    try:
        exact = evaluate(x, y, recall_at=ks, metric=metric, nmi=False)
    except ValueError as err:
        with pytest.raises(ValueError, match=str(err)[:30].replace("(", r"\(").replace(")", r"\)")):
            evaluate(x, y, recall_at=ks, metric=metric, nmi=False, search="Flat")
        return
    approx = evaluate(x, y, recall_at=ks, metric=metric, nmi=False, search="Flat")
    assert approx.keys() == exact.keys()
    for key in exact:
        assert approx[key] == pytest.approx(exact[key], abs=1e-9), key
