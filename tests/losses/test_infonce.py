import math

import pytest
import torch
import torch.nn.functional as F

from pygml.checks import value_checks
from pygml.losses.infonce import PairwiseInfoNCELoss


def _reference(embeddings, labels, temperature):
    """The loss written as loops from its definition: views in order of appearance, float64."""
    z = F.normalize(embeddings.double(), dim=1)
    classes = sorted(set(labels.tolist()))
    views = [[r for r in range(len(labels)) if labels[r] == c] for c in classes]
    m = len(views[0])
    total = 0.0
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            per_class = []
            for c in range(len(classes)):
                anchor = z[views[c][i]]
                candidates = [views[e][j] for e in range(len(classes))]
                candidates += [views[e][i] for e in range(len(classes)) if e != c]
                logits = torch.stack([anchor @ z[r] for r in candidates]) / temperature
                per_class.append(torch.logsumexp(logits, 0) - anchor @ z[views[c][j]] / temperature)
            total = total + torch.stack(per_class).mean()
    return total


def _batch(classes=5, views=4, dim=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * views, dim, generator=g, dtype=dtype)
    y = (torch.arange(classes) * 7 + 3).repeat_interleave(views)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def test_hand_computed_case():
    # class 0: (1, 0), (0, 1); class 1: (-1, 0), (0, -1). For every anchor and ordered pair the positive has
    # cosine 0, the other class's view j cosine 0, the other class's view i cosine -1: loss per pair
    # log(2 + e^-1), two ordered pairs.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    expected = 2 * math.log(2 + math.exp(-1))
    assert PairwiseInfoNCELoss(1.0)(z, y).item() == pytest.approx(expected, rel=1e-6)
    assert PairwiseInfoNCELoss(1.0, views=2)(z * 3.0, y).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("classes,views,temperature", [(5, 4, 0.2), (2, 2, 0.5), (1, 3, 0.2), (7, 9, 0.1)])
def test_matches_loop_reference(classes, views, temperature):
    x, y = _batch(classes, views, seed=classes + views)
    expected = _reference(x, y, temperature)
    for loss in (PairwiseInfoNCELoss(temperature), PairwiseInfoNCELoss(temperature, views=views)):
        torch.testing.assert_close(loss(x, y).double(), expected, rtol=1e-5, atol=1e-5)


def test_sums_over_ordered_pairs_and_averages_over_classes():
    # with identical rows every pair of every class has the same loss: log(C + C - 1) for cosines all 1
    x = torch.ones(3 * 4, 5)
    y = torch.arange(3).repeat_interleave(4)
    assert PairwiseInfoNCELoss(1.0)(x, y).item() == pytest.approx(4 * 3 * math.log(5), rel=1e-6)


def test_gradients_gradcheck_float64():
    x, y = _batch(3, 3, dim=4, seed=1, dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: PairwiseInfoNCELoss(0.3)(e, y), (x,))
    assert torch.autograd.gradcheck(lambda e: PairwiseInfoNCELoss(0.3, views=3)(e, y), (x,))


def test_gradients_match_reference():
    x, y = _batch(4, 3, seed=2, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    PairwiseInfoNCELoss(0.2)(a, y).backward()
    _reference(b, y, 0.2).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_invariant_to_row_order_that_keeps_each_class_in_order():
    x, y = _batch(6, 4, seed=3)
    loss = PairwiseInfoNCELoss(0.2)
    base = loss(x, y)
    # any interleaving of the classes that keeps the order of rows inside each class
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(4))
    for c in y.unique():
        perm[(y[perm] == c).nonzero().flatten()] = (y == c).nonzero().flatten()
    torch.testing.assert_close(loss(x[perm], y[perm]), base)
    # the same permutation of the views in every class
    order = torch.sort(y, stable=True).indices.view(6, 4)[:, [2, 0, 3, 1]].flatten()
    torch.testing.assert_close(loss(x[order], y[order]), base)
    # relabelling the classes
    torch.testing.assert_close(loss(x, 100 - y), base)


def test_reordering_views_of_one_class_changes_the_negatives():
    x, y = _batch(4, 3, seed=5)
    order = torch.sort(y, stable=True).indices.view(4, 3).clone()
    order[0] = order[0, [1, 2, 0]]
    assert not torch.allclose(PairwiseInfoNCELoss()(x[order.flatten()], y[order.flatten()]),
                              PairwiseInfoNCELoss()(x, y))


def test_unequal_class_sizes_name_the_counts():
    x = torch.randn(7, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"0: 3, 1: 2, 2: 2"):
        PairwiseInfoNCELoss()(x, y)
    with pytest.raises(ValueError, match="at least 2"):
        PairwiseInfoNCELoss()(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multiple of views=2"):
        PairwiseInfoNCELoss(views=2)(x, y)


def test_given_views_gives_nan_without_value_checks_and_an_error_with_them():
    x = torch.randn(6, 4)
    y = torch.tensor([0, 0, 0, 0, 1, 1])  # 6 rows = 3 "classes" of 2, but class 0 has 4 rows
    loss = PairwiseInfoNCELoss(views=2)
    with value_checks(False):
        assert torch.isnan(loss(x, y))
    with value_checks(True):
        with pytest.raises(ValueError, match=r"views=2.*0: 4, 1: 2"):
            loss(x, y)


def test_argument_errors():
    for bad in (0, -1.0, True, "0.2"):
        with pytest.raises(ValueError, match="temperature"):
            PairwiseInfoNCELoss(bad)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="views"):
            PairwiseInfoNCELoss(views=bad)
    loss = PairwiseInfoNCELoss()
    with pytest.raises(ValueError, match="2-D"):
        loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        loss(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="floating point"):
        loss(torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        loss(torch.randn(0, 2), torch.zeros(0, dtype=torch.long))


def test_non_finite_embeddings_are_reported_with_value_checks():
    x, y = _batch(2, 2)
    x[0, 0] = float("nan")
    with value_checks(True):
        with pytest.raises(ValueError, match="NaN or inf"):
            PairwiseInfoNCELoss()(x, y)
