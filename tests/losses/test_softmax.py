"""NormalizedSoftmaxLoss and ClassifierCELoss against values computed by hand from their formulas."""

import math

import pytest
import torch

from pygml.losses import ClassifierCELoss, NormalizedSoftmaxLoss


def _ce(logits: list[float], target: int, smoothing: float = 0.0) -> float:
    """Label-smoothed cross-entropy of one row, from the definition."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    log_p = [v - log_z for v in logits]
    c = len(logits)
    return -sum(((1 - smoothing) * (j == target) + smoothing / c) * log_p[j] for j in range(c))


# ---------------------------------------------------------------- NormalizedSoftmaxLoss


def test_normalized_softmax_hand_computed():
    loss = NormalizedSoftmaxLoss(2, 2, temperature=0.5).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # normalised: (1, 0) and (0, 1)
    x = torch.tensor([[3.0, 4.0], [-1.0, 0.0]], dtype=torch.float64)  # normalised: (0.6, 0.8), (-1, 0)
    y = torch.tensor([0, 1])
    # row 0: cosines 0.6, 0.8 -> logits 1.2, 1.6; row 1: cosines -1, 0 -> logits -2, 0
    expected = (_ce([1.2, 1.6], 0) + _ce([-2.0, 0.0], 1)) / 2
    assert loss(x, y).item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(loss.logits(x), torch.tensor([[1.2, 1.6], [-2.0, 0.0]], dtype=torch.float64))
    assert loss(7.0 * x, y).item() == pytest.approx(expected, abs=1e-12), "the embeddings' norm does not matter"


def test_normalized_softmax_temperature_divides_the_cosines():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    cold = NormalizedSoftmaxLoss(4, 3, temperature=0.05).double()
    warm = NormalizedSoftmaxLoss(4, 3, temperature=1.0).double()
    warm.load_state_dict(cold.state_dict())
    torch.testing.assert_close(cold.logits(x), 20.0 * warm.logits(x))
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(cold.weight, dim=1).t()
    torch.testing.assert_close(warm.logits(x), cos)


def test_normalized_softmax_init_and_errors():
    loss = NormalizedSoftmaxLoss(10, 16)
    bound = 1 / math.sqrt(16)
    assert loss.weight.shape == (10, 16) and loss.weight.abs().max() <= bound
    assert loss.weight.abs().max() > 0.8 * bound
    with pytest.raises(ValueError, match="temperature"):
        NormalizedSoftmaxLoss(10, 16, temperature=0.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        loss(torch.randn(4, 16), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- ClassifierCELoss


def _classifier(num_classes=3, dim=2, **kw):
    loss = ClassifierCELoss(num_classes, dim, **kw).double()
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        if loss.classifier.bias is not None:
            loss.classifier.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    return loss


X = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 2])
# W x + b: row 0 -> (2, 0.5, 1), row 1 -> (0, 1.5, 0)
LOGITS = [[2.0, 0.5, 1.0], [0.0, 1.5, 0.0]]


def test_classifier_ce_hand_computed():
    loss = _classifier()
    torch.testing.assert_close(loss.logits(X), torch.tensor(LOGITS, dtype=torch.float64))
    expected = (_ce(LOGITS[0], 0) + _ce(LOGITS[1], 2)) / 2
    assert loss(X, Y).item() == pytest.approx(expected, abs=1e-12)


def test_classifier_ce_temperature_and_label_smoothing():
    loss = _classifier(temperature=0.25, label_smoothing=0.1)
    scaled = [[v / 0.25 for v in row] for row in LOGITS]
    expected = (_ce(scaled[0], 0, 0.1) + _ce(scaled[1], 2, 0.1)) / 2
    assert loss(X, Y).item() == pytest.approx(expected, abs=1e-12)
    plain = _classifier(temperature=0.25)
    assert plain(X, Y).item() == pytest.approx((_ce(scaled[0], 0) + _ce(scaled[1], 2)) / 2, abs=1e-12)
    assert plain(X, Y).item() != pytest.approx(loss(X, Y).item())
    assert "label_smoothing=0.1" in repr(loss) and "temperature=0.25" in repr(loss)


def test_classifier_ce_without_bias():
    loss = _classifier(bias=False)
    assert loss.classifier.bias is None
    expected = (_ce([2.0, 0.0, 2.0], 0) + _ce([0.0, 1.0, 1.0], 2)) / 2
    assert loss(X, Y).item() == pytest.approx(expected, abs=1e-12)


def test_classifier_ce_neck_is_batchnorm_with_frozen_zero_bias():
    loss = _classifier(neck=True, bias=False, temperature=0.5)
    assert isinstance(loss.neck, torch.nn.BatchNorm1d)
    assert not loss.neck.bias.requires_grad and loss.neck.weight.requires_grad
    assert torch.equal(loss.neck.bias, torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    # training mode: each column standardised with the batch mean and biased variance (eps 1e-5)
    mean = [2.0, 3.0]
    var = [2 / 3, 14 / 3]
    h = [[(x[i, c].item() - mean[c]) / math.sqrt(var[c] + 1e-5) for c in range(2)] for i in range(3)]
    logits = [[h[i][0] / 0.5, h[i][1] / 0.5, (h[i][0] + h[i][1]) / 0.5] for i in range(3)]
    expected = sum(_ce(logits[i], int(y[i])) for i in range(3)) / 3
    assert loss.train()(x, y).item() == pytest.approx(expected, abs=1e-9)
    # eval mode: the running statistics after that one step (momentum 0.1, unbiased variance)
    loss.eval()
    run_mean = [0.1 * m for m in mean]
    run_var = [0.9 + 0.1 * v * 3 / 2 for v in var]
    h = [[(x[i, c].item() - run_mean[c]) / math.sqrt(run_var[c] + 1e-5) for c in range(2)] for i in range(3)]
    logits = [[h[i][0] / 0.5, h[i][1] / 0.5, (h[i][0] + h[i][1]) / 0.5] for i in range(3)]
    expected = sum(_ce(logits[i], int(y[i])) for i in range(3)) / 3
    assert loss(x, y).item() == pytest.approx(expected, abs=1e-9)


def test_classifier_ce_init_std_and_gradients():
    torch.manual_seed(8)
    loss = ClassifierCELoss(500, 64, neck=True, bias=False, init_std=1e-3)
    assert abs(loss.classifier.weight.std().item() - 1e-3) < 1e-4
    default = ClassifierCELoss(500, 64)
    assert default.classifier.weight.abs().max() <= 1 / math.sqrt(64)  # torch's Linear init
    assert default.classifier.weight.std().item() > 0.01
    x = torch.randn(8, 64, requires_grad=True)
    loss(x, torch.arange(8)).backward()
    assert x.grad.abs().sum() > 0 and loss.classifier.weight.grad.abs().sum() > 0
    assert loss.neck.weight.grad.abs().sum() > 0 and loss.neck.bias.grad is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes and embedding_size must be positive"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(label_smoothing=1.0), r"label_smoothing must lie in \[0, 1\)"),
    (dict(label_smoothing=-0.1), r"label_smoothing must lie in \[0, 1\)"),
    (dict(init_std=0.0), "init_std must be > 0 or None"),
])
def test_classifier_ce_errors(kwargs, match):
    args = {"num_classes": 3, "embedding_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        ClassifierCELoss(**args)
