"""MetricLearner: a method as backbone + head + base loss + optional graph module, built in plain Python."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pygml.losses import ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss
from pygml.methods import BGFormer, IntraBatch, IntraBatchGraph, MetricLearner
from pygml.models import SmallCNN


def batch(classes: int = 4, per_class: int = 4, side: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(classes * per_class, 3, side, side, generator=g), torch.arange(classes).repeat_interleave(per_class)


def test_loss_is_the_weighted_sum_of_the_backbone_and_graph_rows():
    torch.manual_seed(0)
    graph = IntraBatchGraph(16, heads=2, dropout=0.0)
    method = MetricLearner(SmallCNN(width=4), ContrastiveCELoss(0.2), 16, graph=graph, backbone_weight=0.3,
                           graph_weight=0.7)
    loss, logs = method(*batch())
    torch.testing.assert_close(loss.detach(), 0.3 * logs["loss_backbone"] + 0.7 * logs["loss_graph"])
    images, labels = batch()
    z = method.features(images)
    expected = ContrastiveCELoss(0.2)(graph(nn.functional.normalize(z, dim=1), labels), labels)
    torch.testing.assert_close(logs["loss_graph"], expected.detach())


def test_graph_loss_is_shared_for_feature_graphs_and_copied_for_embedding_graphs():
    torch.manual_seed(0)
    loss = NormalizedSoftmaxLoss(4, 16)
    ib = MetricLearner(SmallCNN(width=4), loss, 16, graph=IntraBatchGraph(16, heads=2))
    assert ib.graph_loss is not None and ib.graph_loss is not ib.loss
    torch.testing.assert_close(ib.graph_loss.weight, ib.loss.weight)  # a copy: same start, own parameters
    assert ib.graph_loss.weight.data_ptr() != ib.loss.weight.data_ptr()
    same = MetricLearner(SmallCNN(width=4), loss, 16, graph=IntraBatchGraph(16, heads=2), graph_loss=loss)
    assert same.graph_loss is None  # asked to share: the base loss scores the graph's rows too
    ids = [id(p) for g in same.param_groups() for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter in two optimiser groups"


def test_param_groups_name_every_trainable_parameter_once_with_their_lrs():
    torch.manual_seed(0)
    method = MetricLearner(SmallCNN(width=4), ProxyGMLLoss(4, 16, 2, r=0.5), 16,
                           graph=IntraBatchGraph(16, heads=2), loss_lr=0.3, graph_lr=0.01)
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "loss", "graph", "graph_loss"}
    assert groups["loss"]["lr"] == 0.3 and groups["graph_loss"]["lr"] == 0.3 and groups["graph"]["lr"] == 0.01
    assert "lr" not in groups["backbone"] and "lr" not in groups["head"]
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)
    assert {id(p) for p in grouped} == {id(p) for p in method.parameters() if p.requires_grad}


def test_intra_batch_mpn_on_top_of_a_pytorch_metric_learning_loss_trains():
    """Intra-Batch's MPN with MultiSimilarity as the base loss: the loss goes down over steps on a fixed
    batch and gradients reach the MPN through its rows."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(0)
    method = IntraBatch(SmallCNN(width=8), num_classes=4, embedding_dim=16, heads=2, dropout=0.0,
                        loss=losses.MultiSimilarityLoss())
    assert isinstance(method.graph_loss, losses.MultiSimilarityLoss)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    images, labels = batch()
    values = []
    for _ in range(30):
        loss, logs = method(images, labels)
        optimizer.zero_grad()
        loss.backward()
        values.append(float(loss.detach()))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.graph.mpn.parameters())
        optimizer.step()
    assert values[-1] < 0.5 * values[0]


def test_bgformer_with_the_proxygml_loss_trains_blocks_and_proxies():
    torch.manual_seed(0)
    backbone = SmallCNN(width=8)
    method = BGFormer(backbone, num_classes=4, embedding_dim=16, depth=1, heads=4, k=4, alpha=0.5,
                      loss=ProxyGMLLoss(4, 16, 3, r=0.5), loss_lr=0.03)
    assert method.graph_loss is None  # the blocks' rows go through the shared head: the same proxies score them
    loss, logs = method(*batch())
    loss.backward()
    assert method.loss.proxies.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.graph.parameters())
    assert {g["name"]: g.get("lr") for g in method.param_groups()}["loss"] == 0.03


def test_bgformer_in_a_hand_written_loop_with_a_pml_loss():
    """What a researcher with a loop of their own writes: BGFormer(backbone, num_classes, loss=PML loss)."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(0)
    method = BGFormer(SmallCNN(width=8), num_classes=4, embedding_dim=16, depth=1, heads=4, k=4, alpha=0.5,
                      loss=losses.MultiSimilarityLoss())
    optimizer = torch.optim.AdamW([{"params": g["params"], "lr": g.get("lr", 2e-3)} for g in method.param_groups()])
    images, labels = batch()
    first = None
    for _ in range(25):
        loss, _ = method(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.5 * first


@pytest.mark.parametrize("build", [
    lambda b: IntraBatch(b, 4, 16, heads=2),
    lambda b: BGFormer(b, 4, 16, depth=1, heads=4, k=4, alpha=0.5),
], ids=["intra_batch", "bgformer"])
def test_test_embedding_never_depends_on_the_batch(build):
    torch.manual_seed(0)
    method = build(SmallCNN(width=4)).eval()
    images, _ = batch()
    with torch.no_grad():
        whole = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(whole, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.norm(dim=1), torch.ones(len(images)))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="feature_dim"):
        MetricLearner(nn.Identity(), ContrastiveCELoss(), 16)
    with pytest.raises(ValueError, match="backbone_weight"):
        MetricLearner(SmallCNN(width=4), ContrastiveCELoss(), 16, backbone_weight=-1.0)
    with pytest.raises(ValueError, match="heads=3"):
        BGFormer(SmallCNN(width=4), 4, 16, heads=3)
