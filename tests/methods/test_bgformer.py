"""BGFormer as a method built in Python: backbone + embedding head + BGFormer blocks over the batch, and
``α · L(head(f)) + (1 − α) · L(head(blocks(f)))``."""

import pytest
import torch

from pygml.losses import ContrastiveCELoss
from pygml.methods import BGFormer, BGFormerGraph
from pygml.models import SmallCNN


def tiny_method(**kw):
    kw = {"embedding_dim": 16, "heads": 4, "k": 4, **kw}
    return BGFormer(SmallCNN(width=8), num_classes=4, **kw)


def tiny_batch(n_per_class=3):
    torch.manual_seed(0)
    return torch.rand(4 * n_per_class, 3, 32, 32), torch.arange(4).repeat_interleave(n_per_class)


def test_method_forward_trains_backbone_head_and_blocks():
    torch.manual_seed(0)
    method = tiny_method(depth=2, alpha=0.3, block_lr=1e-4)
    assert isinstance(method.graph, BGFormerGraph) and len(method.graph.blocks) == 2
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) == {"loss", "loss_backbone", "loss_graph"}
    torch.testing.assert_close(loss.detach(), 0.3 * logs["loss_backbone"] + 0.7 * logs["loss_graph"])
    loss.backward()
    for part in (method.backbone, method.head, method.graph):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for p in method.graph.parameters()))
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "graph"}
    assert groups["graph"]["lr"] == 1e-4 and "lr" not in groups["backbone"] and "lr" not in groups["head"]
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len([p for p in method.parameters() if p.requires_grad])


def test_defaults_and_the_two_losses():
    method = tiny_method().eval()  # eval: the same network in both passes
    assert (method.backbone_weight, method.graph_weight) == (0.01, 0.99)  # α = 0.01
    assert len(method.graph.blocks) == 2 and method.graph.graph == "attention_topk"
    assert method.head.init == "orthogonal" and isinstance(method.loss, ContrastiveCELoss)
    assert method.loss.temperature == 0.2
    assert "lr" not in {g["name"]: g for g in method.param_groups()}["graph"]  # block_lr None: the optimiser's
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    with torch.no_grad():
        f = method.backbone(images)
        backbone = method.loss(method.head(f), labels)
        graph = method.loss(method.head(method.graph(f, labels)), labels)
    torch.testing.assert_close(logs["loss_backbone"], backbone)
    torch.testing.assert_close(logs["loss_graph"], graph)
    torch.testing.assert_close(loss.detach(), 0.01 * backbone + 0.99 * graph)


def test_method_alpha_one_has_no_blocks():
    method = tiny_method(alpha=1.0)
    assert method.graph is None
    assert [g["name"] for g in method.param_groups()] == ["backbone", "head"]
    loss, logs = method(*tiny_batch(2))
    assert "loss_graph" not in logs
    torch.testing.assert_close(loss.detach(), logs["loss_backbone"])


@pytest.mark.parametrize("variant, graph, heads", [("v2", "attention_topk", 3), ("v1", "feature_knn", 4),
                                                   ("v2", "feature_knn", 1)])
def test_variants_and_graphs_train(variant, graph, heads):
    method = tiny_method(variant=variant, graph=graph, heads=heads, depth=1, alpha=0.5)
    assert method.graph.graph == graph
    loss, logs = method(*tiny_batch(2))
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss", "loss_backbone", "loss_graph"}
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_method_embedding_is_normalised_and_independent_of_the_batch():
    torch.manual_seed(0)
    method = tiny_method().eval()
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        emb = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(alone, emb, rtol=0, atol=1e-5)


def test_constructor_errors():
    with pytest.raises(ValueError, match="heads=5 must divide the backbone's feature size 64"):
        tiny_method(heads=5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        tiny_method(alpha=1.5)
    with pytest.raises(ValueError, match="graph must be one of attention_topk, feature_knn"):
        tiny_method(graph="radius")
    with pytest.raises(ValueError, match="k must be a positive int"):
        tiny_method(k=0)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        tiny_method(depth=0)
