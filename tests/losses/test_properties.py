"""Every loss on random shapes, dtypes and label patterns (fixed budget): a finite scalar with finite
gradients, or a ValueError naming the argument."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pygml.checks import value_checks
from pygml.losses import ClassifierCELoss, ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, max_n=12, max_classes=4):
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


def _losses(c, d):
    return [NormalizedSoftmaxLoss(c, d), ClassifierCELoss(c, d, 0.2, 0.1), ContrastiveCELoss(),
            ProxyGMLLoss(c, d, proxies_per_class=2, r=0.3)]


@SETTINGS
@given(batches())
def test_losses_are_finite_with_finite_gradients(batch):
    x, y = batch
    emb = x.float().requires_grad_(True)
    d, c = emb.size(1), int(y.max()) + 1
    for loss_fn in _losses(c, d):
        loss = loss_fn(emb, y)
        assert loss.dim() == 0 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, emb, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()


@SETTINGS
@given(batches())
def test_losses_reject_nan_with_value_checks_on_and_bad_labels_always(batch):
    x, y = batch
    d, c = x.size(1), int(y.max()) + 1
    bad = x.float().clone()
    bad[-1, 0] = math.inf
    for loss_fn in _losses(c, d):
        with value_checks(), pytest.raises(ValueError, match="NaN or inf"):
            loss_fn(bad, y)
        with pytest.raises(ValueError, match="labels"):
            loss_fn(x.float(), y[:-1] if y.numel() > 1 else y.repeat(2))
