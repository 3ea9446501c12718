"""Intra-Batch Connections as a method built in Python: its two label-smoothed losses, the MPN over the
batch graph, the test embedding, and the test-time refinement over k-reciprocal neighbourhoods."""

import pytest
import torch
import torch.nn.functional as F

from pygml.graph import batch_graph
from pygml.losses import ClassifierCELoss, ContrastiveCELoss
from pygml.methods import IntraBatch, IntraBatchGraph, k_reciprocal_neighbours, refine
from pygml.models import SmallCNN
from pygml.nn import IntraBatchMPN


def tiny_method(**kw):
    kw = {"embedding_dim": 16, "heads": 2, **kw}
    return IntraBatch(SmallCNN(width=8), num_classes=4, **kw)


def tiny_batch():
    torch.manual_seed(9)
    return torch.rand(12, 3, 32, 32), torch.arange(4).repeat_interleave(3)


def _smoothed_ce(logits, labels, smoothing):
    logp = logits.log_softmax(dim=1)
    c = logits.size(1)
    target = torch.full_like(logp, smoothing / c)
    target[torch.arange(len(labels)), labels] += 1 - smoothing
    return -(target * logp).sum(dim=1).mean()


@pytest.mark.parametrize("k", [None, 2])
def test_forward_gives_a_finite_loss_and_gradients_everywhere(k):
    method = tiny_method(k=k)
    assert isinstance(method.graph, IntraBatchGraph) and method.graph.k == k
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) == {"loss", "loss_backbone", "loss_graph"}
    assert torch.allclose(logs["loss"], logs["loss_backbone"] + logs["loss_graph"])
    loss.backward()
    for name, module in (("backbone", method.backbone), ("head", method.head), ("loss", method.loss),
                         ("graph", method.graph), ("graph_loss", method.graph_loss)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    names = [g["name"] for g in method.param_groups()]
    assert names == ["backbone", "head", "loss", "graph", "graph_loss"]
    grouped = [id(p) for g in method.param_groups() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.parameters() if p.requires_grad)


def test_parts_are_the_papers():
    method = tiny_method(temperature=0.3, label_smoothing=0.2)
    assert method.head.init == "default" and isinstance(method.head.fc, torch.nn.Linear)
    assert method.head.fc.out_features == 16
    # the backbone's loss: a linear classifier with bias on the un-normalised embedding
    assert isinstance(method.loss, ClassifierCELoss) and method.loss.neck is None
    assert method.loss.classifier.bias is not None
    assert (method.loss.temperature, method.loss.label_smoothing) == (0.3, 0.2)
    # the MPN's loss: BatchNorm neck (bias frozen at 0) and a bias-free classifier drawn from N(0, 1e-3²)
    neck = method.graph_loss
    assert isinstance(neck, ClassifierCELoss) and neck is not method.loss
    assert isinstance(neck.neck, torch.nn.BatchNorm1d) and not neck.neck.bias.requires_grad
    assert neck.classifier.bias is None and neck.classifier.weight.abs().max() < 0.01
    assert (neck.temperature, neck.label_smoothing) == (0.3, 0.2)
    assert isinstance(method.graph.mpn, IntraBatchMPN)


def test_losses_are_label_smoothed_cross_entropies_over_temperature():
    method = tiny_method(temperature=0.5, dropout=0.0).eval()  # eval: no dropout, fixed BatchNorm
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    with torch.no_grad():
        z = method.features(images)
        backbone = _smoothed_ce(method.loss.classifier(z) / 0.5, labels, 0.1)
        graph = batch_graph(F.normalize(z, dim=1), labels, k=None, label_edges=False)
        h = method.graph.mpn(F.normalize(z, dim=1), graph.edge_index)
        mpn = _smoothed_ce(method.graph_loss.classifier(method.graph_loss.neck(h)) / 0.5, labels, 0.1)
    torch.testing.assert_close(logs["loss_backbone"], backbone, atol=1e-6, rtol=0)
    torch.testing.assert_close(logs["loss_graph"], mpn, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.detach(), backbone + mpn, atol=1e-6, rtol=0)


def test_without_mpn_the_backbone_loss_is_label_smoothed_cross_entropy_over_temperature():
    method = tiny_method(mpn=False, temperature=0.5)
    assert method.graph is None and method.graph_loss is None
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert set(logs) == {"loss", "loss_backbone"}
    with torch.no_grad():  # same train-mode pass: BatchNorm uses the batch statistics again
        logits = method.loss.classifier(method.features(images)) / 0.5
    assert torch.allclose(loss, _smoothed_ce(logits, labels, 0.1), atol=1e-6)
    assert [g["name"] for g in method.param_groups()] == ["backbone", "head", "loss"]


def test_concat_classifies_every_layers_output():
    method = tiny_method(layers=2, concat=True)
    assert method.graph.out_channels == 32
    assert method.graph_loss.classifier.in_features == 32 and method.graph_loss.neck.num_features == 32
    images, labels = tiny_batch()
    loss, _ = method(images, labels)
    assert torch.isfinite(loss)


def test_another_loss_replaces_both_with_a_copy_for_the_mpn():
    method = tiny_method(loss=ContrastiveCELoss(0.3))
    assert isinstance(method.loss, ContrastiveCELoss) and isinstance(method.graph_loss, ContrastiveCELoss)
    assert method.graph_loss is not method.loss
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert set(logs) == {"loss", "loss_backbone", "loss_graph"} and torch.isfinite(loss)
    own = ClassifierCELoss(4, 16)
    method = tiny_method(graph_loss=own)
    assert method.graph_loss is own and isinstance(method.loss, ClassifierCELoss)


def test_embedding_is_normalised_and_independent_of_the_batch():
    method = tiny_method().eval()
    images, _ = tiny_batch()
    with torch.no_grad():
        emb = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(12)])
    assert torch.allclose(emb.norm(dim=1), torch.ones(12), atol=1e-6)
    assert torch.allclose(emb, alone, atol=1e-5)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        IntraBatch(SmallCNN(width=4), num_classes=1)
    with pytest.raises(ValueError, match=r"heads=3 must be a positive int that divides channels=16"):
        tiny_method(heads=3)
    with pytest.raises(ValueError, match="k must be a positive int or None"):
        tiny_method(k=0)


# ---------------------------------------------------------------- test-time refinement


def clustered(seed=11):
    torch.manual_seed(seed)
    centres = torch.randn(3, 16) * 4
    x = torch.cat([centres[c] + torch.randn(5, 16) for c in range(3)])
    outlier = torch.randn(1, 16) * 0.01 - centres.sum(0, keepdim=True)
    return torch.cat([x, outlier])  # 15 clustered rows and one far from everything


def test_k_reciprocal_neighbours_by_brute_force():
    x = clustered()
    n, k = x.size(0), 4
    nbr, rec = k_reciprocal_neighbours(x, k, chunk_size=5)
    xn = F.normalize(x, dim=1)
    sim = xn @ xn.t()
    sim.fill_diagonal_(-float("inf"))
    knn = [set(sim[i].topk(k).indices.tolist()) for i in range(n)]
    for i in range(n):
        assert set(nbr[i].tolist()) == knn[i]
        assert {j for j, r in zip(nbr[i].tolist(), rec[i].tolist()) if r} == {j for j in knn[i] if i in knn[j]}
    with pytest.raises(ValueError, match="k must be"):
        k_reciprocal_neighbours(x, n)


def test_refine_runs_the_mpn_over_each_reciprocal_neighbourhood():
    torch.manual_seed(12)
    mpn = IntraBatchMPN(16, 16, heads=2).train()
    f = clustered() * 3.0  # un-normalised
    k = 4
    out = refine(mpn, f, k)
    assert out.shape == (16, 16) and mpn.training
    assert torch.allclose(out.norm(dim=1), torch.ones(16), atol=1e-6)
    assert torch.allclose(refine(mpn, F.normalize(f, dim=1), k), out, atol=1e-6)
    assert torch.allclose(refine(mpn, f, k, max_edges=1), out, atol=1e-5)  # one neighbourhood per call
    nbr, rec = k_reciprocal_neighbours(f, k)
    mpn.eval()
    xn = F.normalize(f, dim=1)
    isolated = 0
    with torch.no_grad():
        for i in range(16):
            nodes = torch.cat([torch.tensor([i]), nbr[i][rec[i]]])
            full = batch_graph(xn[nodes], label_edges=False).edge_index
            expected = F.normalize(mpn.features(xn[nodes], full)[0], dim=0)
            assert torch.allclose(out[i], expected, atol=1e-5), i
            isolated += int(not rec[i].any())
    assert isolated >= 1  # the outlier is refined on its own, in the same space as the others


def test_refine_with_k_zero_is_the_plain_embedding():
    mpn = IntraBatchMPN(16, 16, heads=2)
    f = clustered()
    assert torch.equal(refine(mpn, f, 0), F.normalize(f, dim=1))
    with pytest.raises(ValueError, match="k must be"):
        refine(mpn, f, -1)
    one = refine(mpn, f[:1], 5)  # a single row: k is capped at N - 1 = 0
    assert torch.equal(one, F.normalize(f[:1], dim=1))


def test_method_refine_uses_its_mpn_and_needs_it():
    f = clustered()
    with_mpn = IntraBatch(SmallCNN(width=4), num_classes=4, embedding_dim=16, heads=2)
    refined = with_mpn.refine(f, 3)
    assert refined.shape == (16, 16)
    torch.testing.assert_close(refined, refine(with_mpn.graph.mpn, f, 3))
    without = IntraBatch(SmallCNN(width=4), num_classes=4, embedding_dim=16, heads=2, mpn=False)
    with pytest.raises(ValueError, match="mpn=False"):
        without.refine(f, 3)
