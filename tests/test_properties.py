"""Property-based tests over random shapes, dtypes and label patterns (fixed budget, CI-friendly):
each call returns a correct result or raises a ValueError naming the argument."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pygml.evaluation import evaluate
from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type
from pygml.losses import ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss
from pygml.nn import BGFormerBlock, IntraBatchAttention, SSAConv

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, max_n=12, max_classes=None):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 6))
    pattern = draw(st.sampled_from(["one class", "all distinct", "random"]))
    if pattern == "one class":
        y = [0] * n
    elif pattern == "all distinct":
        y = list(range(n))
    else:
        y = draw(st.lists(st.integers(0, max_classes or 3), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x, torch.tensor(y, dtype=torch.long)


@SETTINGS
@given(batches(), st.one_of(st.none(), st.integers(1, 15)), st.booleans())
def test_batch_graph_degrees_and_label_edges(batch, k, self_loops):
    x, y = batch
    n = x.size(0)
    g = batch_graph(x, y, k=k, self_loops=self_loops)
    vis, lab = edges_of_type(g, VISUAL), edges_of_type(g, LABEL)
    per_node = (n - 1 if k is None else min(k, n - 1)) + int(self_loops)
    assert torch.equal(torch.bincount(vis[1], minlength=n), torch.full((n,), per_node))
    same = (y.view(-1, 1) == y.view(1, -1)).sum() - n
    assert lab.size(1) == int(same)
    assert bool((y[lab[0]] == y[lab[1]]).all()) and bool((lab[0] != lab[1]).all())
    assert torch.isfinite(g.edge_attr).all()


@SETTINGS
@given(batches())
def test_batch_graph_rejects_nan(batch):
    x, y = batch
    x = x.clone()
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        batch_graph(x, y, k=2)


@SETTINGS
@given(batches(), st.one_of(st.none(), st.integers(1, 15)))
def test_layers_on_any_batch_graph(batch, k):
    x, y = batch
    x = x.float()
    channels = 4
    h = torch.nn.functional.pad(x, (0, max(channels - x.size(1), 0)))[:, :channels]
    g = batch_graph(h, y, k=k)
    vis = edges_of_type(g, VISUAL)
    torch.manual_seed(0)
    for layer in (IntraBatchAttention(channels, heads=2, dropout=0.0), SSAConv(channels, heads=2)):
        out, (ei, alpha) = layer(h, vis, return_attention_weights=True)
        assert out.shape == h.shape and torch.isfinite(out).all()
        sums = torch.zeros(h.size(0), 2).index_add_(0, ei[1], alpha)
        if isinstance(layer, SSAConv):
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        else:
            assert bool((sums < 1).all())
    block = BGFormerBlock(channels, heads=2)
    assert torch.isfinite(block(g)).all()


def test_layers_reject_bad_shapes():
    for layer in (IntraBatchAttention(4, heads=2), SSAConv(4, heads=2)):
        with pytest.raises(ValueError, match="x"):
            layer(torch.randn(3, 5), torch.tensor([[0], [1]]))
        with pytest.raises(ValueError, match="edge_index"):
            layer(torch.randn(3, 4), torch.tensor([[0, 1, 2]]))
        with pytest.raises(ValueError, match="edge_index"):
            layer(torch.randn(3, 4), torch.tensor([[0], [7]]))


@SETTINGS
@given(batches(max_classes=4))
def test_losses_are_finite_with_finite_gradients(batch):
    x, y = batch
    emb = x.float().requires_grad_(True)
    d, c = emb.size(1), int(y.max()) + 1
    losses = [NormalizedSoftmaxLoss(c, d), ContrastiveCELoss(), ProxyGMLLoss(c, d, proxies_per_class=2, r=0.3)]
    for loss_fn in losses:
        loss = loss_fn(emb, y)
        assert loss.dim() == 0 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, emb, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()


@SETTINGS
@given(batches(max_classes=4))
def test_losses_reject_nan_and_bad_labels(batch):
    x, y = batch
    d, c = x.size(1), int(y.max()) + 1
    bad = x.float().clone()
    bad[-1, 0] = math.inf
    for loss_fn in (NormalizedSoftmaxLoss(c, d), ContrastiveCELoss(), ProxyGMLLoss(c, d, proxies_per_class=2)):
        with pytest.raises(ValueError, match="NaN or inf"):
            loss_fn(bad, y)
        with pytest.raises(ValueError, match="labels"):
            loss_fn(x.float(), y[:-1] if y.numel() > 1 else y.repeat(2))


@SETTINGS
@given(batches(max_n=40, max_classes=6), st.sampled_from(["cosine", "euclidean"]))
def test_evaluator_in_range_or_clear_error(batch, metric):
    x, y = batch
    n = x.size(0)
    if n < 2 or len(set(y.tolist())) == n:
        with pytest.raises(ValueError):
            evaluate(x, y, recall_at=(1,), metric=metric, nmi=False)
        return
    m = evaluate(x, y, recall_at=(1,), metric=metric, nmi=n > 2)
    for key, value in m.items():
        assert 0.0 <= value <= 1.0 + 1e-9, (key, value)
    assert m["recall@1"] == pytest.approx(m["precision_at_1"])
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, y, recall_at=(1,), metric=metric, nmi=False)
    with pytest.raises(ValueError):
        evaluate(x, y, recall_at=(n,), metric=metric, nmi=False)  # K larger than the gallery (n - 1)
    with pytest.raises(ValueError):
        evaluate(x, np.asarray(y)[:-1], recall_at=(1,), nmi=False)


@SETTINGS
@given(batches(max_n=40, max_classes=6), st.sampled_from(["cosine", "euclidean"]))
def test_exhaustive_index_search_equals_the_exact_evaluator(batch, metric):
    """search="Flat" reads the metrics from a faiss kNN list: on rows without near-ties it must give
    the exact evaluator's numbers, for any shape and label pattern, or the same clear error."""
    x, y = batch
    assume(metric == "euclidean" or x.size(1) > 1)  # 1-D rows normalise to ±1: ties at the list's cut
    n = x.size(0)
    ks = (1, max(1, min(3, n - 1)))
    try:
        exact = evaluate(x, y, recall_at=ks, metric=metric, nmi=False)
    except ValueError as err:
        with pytest.raises(ValueError, match=str(err)[:30].replace("(", r"\(").replace(")", r"\)")):
            evaluate(x, y, recall_at=ks, metric=metric, nmi=False, search="Flat")
        return
    approx = evaluate(x, y, recall_at=ks, metric=metric, nmi=False, search="Flat")
    assert approx.keys() == exact.keys()
    for key in exact:
        assert approx[key] == pytest.approx(exact[key], abs=1e-9), key
