"""Baseline: backbone → embedding head → normalized softmax (or any loss), built directly in Python."""

import pytest
import torch
import torch.nn.functional as F

from pygml.losses import ContrastiveCELoss, NormalizedSoftmaxLoss
from pygml.methods import Baseline, MetricLearner
from pygml.models import EmbeddingHead, SmallCNN


def tiny_batch():
    torch.manual_seed(9)
    return torch.rand(12, 3, 32, 32), torch.arange(4).repeat_interleave(3)


def test_forward_is_normalized_softmax_of_the_head_output():
    torch.manual_seed(0)
    method = Baseline(SmallCNN(width=4), num_classes=4, embedding_dim=16, temperature=0.1)
    assert isinstance(method, MetricLearner) and isinstance(method.loss, NormalizedSoftmaxLoss)
    assert isinstance(method.head, EmbeddingHead) and method.head.init == "kaiming" and method.graph is None
    images, labels = tiny_batch()
    method.eval()  # fixed BatchNorm statistics: the two passes below see the same network
    loss, logs = method(images, labels)
    assert set(logs) == {"loss", "loss_backbone"}
    with torch.no_grad():
        z = method.head.fc(method.backbone(images))
        w = F.normalize(method.loss.weight, dim=1)
        expected = F.cross_entropy(F.normalize(z, dim=1) @ w.t() / 0.1, labels)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(logs["loss"], logs["loss_backbone"])
    assert method.loss.temperature == 0.1


def test_gradients_reach_every_part_and_groups_cover_the_parameters():
    method = Baseline(SmallCNN(width=4), num_classes=4, embedding_dim=16, loss_lr=0.5)
    images, labels = tiny_batch()
    loss, _ = method(images, labels)
    loss.backward()
    for name, part in (("backbone", method.backbone), ("head", method.head), ("loss", method.loss)):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    groups = method.param_groups()
    assert [g["name"] for g in groups] == ["backbone", "head", "loss"]
    assert groups[2]["lr"] == 0.5 and "lr" not in groups[0] and "lr" not in groups[1]
    assert groups[2]["params"] == [method.loss.weight]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.parameters())
    assert "lr" not in Baseline(SmallCNN(width=4), 4, 16).param_groups()[2]


def test_any_loss_takes_the_place_of_normalized_softmax():
    method = Baseline(SmallCNN(width=4), num_classes=4, embedding_dim=16, loss=ContrastiveCELoss(0.3))
    assert isinstance(method.loss, ContrastiveCELoss)
    assert [g["name"] for g in method.param_groups()] == ["backbone", "head"]  # the loss has no parameters
    images, labels = tiny_batch()
    method.eval()
    loss, _ = method(images, labels)
    with torch.no_grad():
        expected = ContrastiveCELoss(0.3)(method.features(images), labels)
    torch.testing.assert_close(loss.detach(), expected)


def test_embedding_is_normalised_and_independent_of_the_batch():
    torch.manual_seed(0)
    method = Baseline(SmallCNN(width=4), num_classes=4, embedding_dim=16).eval()
    images, _ = tiny_batch()
    with torch.no_grad():
        emb = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(12)])
    assert emb.shape == (12, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(emb, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, F.normalize(method.features(images), dim=1))


@pytest.mark.parametrize("init", ["kaiming", "default", "orthogonal"])
def test_head_init(init):
    torch.manual_seed(0)
    method = Baseline(SmallCNN(width=4), num_classes=4, embedding_dim=16, head_init=init)
    fc = method.head.fc
    assert method.head.init == init and fc.weight.shape == (16, 32)
    if init == "orthogonal":
        torch.testing.assert_close(fc.weight @ fc.weight.t(), torch.eye(16), atol=1e-5, rtol=0)
    if init in ("kaiming", "orthogonal"):
        assert torch.equal(fc.bias, torch.zeros(16))
    else:
        assert fc.bias.abs().sum() > 0 and fc.weight.abs().max() <= 1 / 32**0.5  # torch's Linear init


def test_errors():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        Baseline(SmallCNN(width=4), num_classes=1)
    with pytest.raises(ValueError, match="init must be one of"):
        Baseline(SmallCNN(width=4), num_classes=3, head_init="xavier")
    with pytest.raises(ValueError, match="temperature"):
        Baseline(SmallCNN(width=4), num_classes=3, temperature=0.0)
