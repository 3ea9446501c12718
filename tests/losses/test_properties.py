"""Every loss on random shapes, dtypes and label patterns (fixed budget): a finite scalar with finite
gradients, or a ValueError naming the argument."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pygml.checks import value_checks
from pygml.losses import ClassifierCELoss, ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss
from tests.strategies import SETTINGS, labelled_rows

def batches():
    return labelled_rows(max_n=12, max_classes=4)


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
