"""ContrastiveCELoss (BGFormer's loss) against hand-computed values and pytorch-metric-learning's SupCon."""

import math

import pytest
import torch
import torch.nn.functional as F

from pygml.losses import ContrastiveCELoss


def test_contrastive_ce_hand_computed():
    # three unit vectors at 0, 90 and 180 degrees; labels 0, 0, 1; tau = 0.5
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    loss = ContrastiveCELoss(temperature=0.5)(e, y)
    # anchor 0: s01 = 0, s02 = -1 -> -log(e^0 / (e^0 + e^-2)); anchor 1: s10 = 0, s12 = 0 -> log 2;
    # anchor 2 has no positive and is left out
    l0 = math.log(1 + math.exp(-2.0))
    l1 = math.log(2.0)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-12)


def test_contrastive_ce_averages_over_positives():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    tau = 0.25
    loss = ContrastiveCELoss(tau)(e, y)
    z = F.normalize(e, dim=1)
    s = (z @ z.t()).tolist()

    def anchor(i: int) -> float:
        others = [j for j in range(4) if j != i]
        log_z = math.log(sum(math.exp(s[i][j] / tau) for j in others))
        pos = [j for j in others if y[j] == y[i]]
        return -sum(s[i][p] / tau - log_z for p in pos) / len(pos)

    assert loss.item() == pytest.approx(sum(anchor(i) for i in range(3)) / 3, abs=1e-12)


def test_contrastive_ce_matches_pml_supcon():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(0)
    e = torch.randn(24, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (24,), generator=g)
    ours = ContrastiveCELoss(0.2)(e, y)
    ref = losses.SupConLoss(temperature=0.2)(e, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)


def test_contrastive_ce_without_positives_is_zero_with_gradient():
    e = torch.randn(5, 4, requires_grad=True)
    loss = ContrastiveCELoss()(e, torch.arange(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))
    one = torch.randn(1, 4, requires_grad=True)
    ContrastiveCELoss()(one, torch.tensor([3])).backward()
    assert torch.isfinite(one.grad).all()


def test_contrastive_ce_gradcheck_and_errors():
    e = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 3])
    assert torch.autograd.gradcheck(lambda t: ContrastiveCELoss(0.3)(t, y), (e,))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveCELoss(0.0)
    with pytest.raises(ValueError, match="labels"):
        ContrastiveCELoss()(e, torch.zeros(5, dtype=torch.long))
