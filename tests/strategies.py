"""Hypothesis strategies shared by the property tests of the evaluator, the losses, the graph and the layers."""

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: the fixed budget of every property test
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled_rows(draw, max_n=12, max_classes=3):
    """(rows (n, d) float32 or float64, labels (n,)): labels of one class, all distinct, or random in
    ``[0, max_classes]``; 1 ≤ n ≤ ``max_n``, 1 ≤ d ≤ 6."""
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
