"""pygml.graph: the batch graph (kNN and label edges), its homophily, and the sample-proxy subgraph of
ProxyGML (select_proxies, proxy_graph)."""

import math

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch
from torch_geometric.utils import degree, subgraph, to_networkx, to_torch_sparse_tensor

from pygml.checks import value_checks
from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type, knn_homophily, proxy_graph, select_proxies

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dense_knn(x, k):
    xn = torch.nn.functional.normalize(x, dim=1)
    s = xn @ xn.t()
    s.fill_diagonal_(-float("inf"))
    return s.topk(k, dim=1).indices


def edge_set(ei):
    return set(map(tuple, ei.t().tolist()))


def test_knn_edges_are_exact_and_point_to_the_node():
    torch.manual_seed(0)
    x = torch.randn(20, 8)
    y = torch.arange(20) % 5
    g = batch_graph(x, y, k=3, self_loops=False)
    vis = edges_of_type(g, VISUAL)
    nbr = dense_knn(x, 3)
    expected = {(int(j), i) for i in range(20) for j in nbr[i]}
    assert edge_set(vis) == expected
    assert (degree(vis[1], 20) == 3).all()  # every node has exactly k in-edges
    lab = edges_of_type(g, LABEL)
    assert edge_set(lab) == {(j, i) for i in range(20) for j in range(20) if i != j and y[i] == y[j]}
    assert torch.allclose(g.edge_attr, torch.nn.functional.cosine_similarity(x[g.edge_index[0]], x[g.edge_index[1]]),
                          atol=1e-6)


def test_fully_connected_and_k_at_least_batch():
    x = torch.randn(6, 4)
    full = batch_graph(x, k=None, label_edges=False)
    assert edge_set(full.edge_index) == {(j, i) for i in range(6) for j in range(6)}
    big = batch_graph(x, k=50, label_edges=False)
    assert edge_set(big.edge_index) == edge_set(full.edge_index)
    assert (big.edge_type == VISUAL).all()


def test_edges_sorted_by_target():
    g = batch_graph(torch.randn(15, 3), torch.arange(15) % 4, k=4)
    tgt, src = g.edge_index[1], g.edge_index[0]
    key = tgt * 15 + src
    assert torch.all(key[1:] >= key[:-1])


def test_euclidean_metric():
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    g = batch_graph(x, k=1, label_edges=False, self_loops=False, metric="euclidean")
    assert edge_set(g.edge_index) == {(1, 0), (0, 1), (1, 2), (2, 3)}
    assert torch.allclose(g.edge_attr, -(x[g.edge_index[0], 0] - x[g.edge_index[1], 0]) ** 2)


def test_single_sample_and_distinct_labels():
    g = batch_graph(torch.randn(1, 4), torch.tensor([3]), k=5)
    assert g.edge_index.tolist() == [[0], [0]]
    g = batch_graph(torch.randn(5, 4), torch.arange(5), k=2)
    assert (g.edge_type == VISUAL).all()


def test_works_with_pyg_tools():
    torch.manual_seed(1)
    x = torch.randn(12, 5)
    y = torch.arange(12) % 3
    g = batch_graph(x, y, k=3)
    g.validate(raise_on_error=True)
    G = to_networkx(g, edge_attrs=["edge_type"])
    assert isinstance(G, nx.DiGraph) and G.number_of_nodes() == 12
    # networkx keeps one edge per (j, i) pair; the batch graph may hold a visual and a label edge for it
    assert G.number_of_edges() == len(edge_set(g.edge_index))
    sub_ei, _ = subgraph(torch.arange(6), g.edge_index, num_nodes=12)
    assert ((sub_ei < 6).all())
    adj = to_torch_sparse_tensor(g.edge_index, size=12)
    assert adj.shape == (12, 12) and adj._nnz() > 0
    batch = Batch.from_data_list([g, batch_graph(torch.randn(7, 5), torch.arange(7) % 2, k=2)])
    assert batch.num_nodes == 19 and batch.edge_index.max() < 19


def test_graph_is_built_without_gradient_but_x_keeps_it():
    x = torch.randn(8, 3, requires_grad=True)
    g = batch_graph(x, torch.arange(8) % 2, k=2)
    assert g.x.requires_grad and not g.edge_attr.requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(4)), "2-D"),
        (dict(x=torch.zeros(0, 3)), "empty"),
        (dict(x=torch.tensor([[float("nan"), 0.0]])), "NaN"),
        (dict(x=torch.randn(4, 2), y=torch.zeros(3, dtype=torch.long)), r"y must have shape \(4,\)"),
        (dict(x=torch.randn(4, 2), y=torch.zeros(4)), "integer"),
        (dict(x=torch.randn(4, 2), y=None), "labels"),
        (dict(x=torch.randn(4, 2), y=torch.zeros(4, dtype=torch.long), k=0), "k must be"),
        (dict(x=torch.randn(4, 2), y=torch.zeros(4, dtype=torch.long), metric="l1"), "metric"),
        (dict(x=torch.randint(0, 3, (4, 2)), label_edges=False), "floating"),
    ],
)
def test_bad_input(kwargs, match):
    x = kwargs.pop("x")
    y = kwargs.pop("y", torch.zeros(x.shape[0] if x.dim() else 1, dtype=torch.long) if x.dim() == 2 else None)
    with value_checks(), pytest.raises(ValueError, match=match):  # the NaN case reads values: checks on
        batch_graph(x, y, **kwargs)


def test_knn_homophily_counts_same_class_edges():
    x = torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.5]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # k=1: 0<-1, 1<-0, 2<-3, 3<-2, 4<-3: only node 4 (class 0) has a class-1 nearest neighbour
    assert knn_homophily(x, y, 1) == pytest.approx(4 / 5)


# ---------------------------------------------------------------- properties over random batches


@st.composite
def batches(draw, max_n=12, max_classes=3):
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
def test_batch_graph_rejects_nan_with_value_checks_on(batch):
    x, y = batch
    x = x.clone()
    x[0, 0] = math.nan
    with value_checks(), pytest.raises(ValueError, match="NaN"):
        batch_graph(x, y, k=2)


# ---------------------------------------------------------------- ProxyGML's sample-proxy subgraph


def test_own_proxies_are_kept_even_when_least_similar():
    C, N, k = 6, 2, 4
    proxy_labels = torch.arange(C).repeat_interleave(N)
    labels = torch.tensor([0, 3, 5])
    sim = torch.rand(3, C * N)
    sim[proxy_labels.view(1, -1) == labels.view(-1, 1)] = -0.9  # own proxies: the least similar
    idx = select_proxies(sim, labels, proxy_labels, k)
    for i in range(3):
        own = set(torch.nonzero(proxy_labels == labels[i]).flatten().tolist())
        kept = idx[i].tolist()
        assert own <= set(kept) and len(set(kept)) == k
        others = sorted((j for j in range(C * N) if j not in own), key=lambda j: -sim[i, j].item())
        assert set(kept) - own == set(others[: k - N])
    plain = select_proxies(sim, labels, proxy_labels, k, keep_own=False)
    assert torch.equal(plain, sim.topk(k, dim=1).indices)


def test_more_own_proxies_than_k_keeps_the_most_similar_own():
    proxy_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sim = torch.tensor([[0.1, 0.5, -0.2, 0.3, 0.9, 0.8, 0.7, 0.6]])
    idx = select_proxies(sim, torch.tensor([0]), proxy_labels, 2)
    assert idx.tolist() == [[1, 3]]
    assert sorted(select_proxies(sim, torch.tensor([0]), proxy_labels, 4)[0].tolist()) == [0, 1, 2, 3]
    assert sorted(select_proxies(sim, torch.tensor([0]), proxy_labels, 5)[0].tolist()) == [0, 1, 2, 3, 4]
    assert select_proxies(sim, torch.tensor([0]), proxy_labels, 100).shape == (1, 8)


def test_rows_with_different_numbers_of_own_proxies():
    proxy_labels = torch.tensor([0, 1, 1, 1, 2])
    sim = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.9], [0.9, 0.1, 0.2, 0.3, 0.8], [0.5, 0.1, 0.2, 0.3, 0.4]])
    idx = select_proxies(sim, torch.tensor([0, 1, 7]), proxy_labels, 3)
    assert [sorted(r) for r in idx.tolist()] == [[0, 3, 4], [1, 2, 3], [0, 3, 4]]


def test_proxy_graph_is_valid_pyg_data_and_differentiable():
    torch.manual_seed(0)
    C, N, k, B, d = 5, 3, 4, 6, 8
    x = torch.randn(B, d, requires_grad=True)
    proxies = torch.randn(C * N, d, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 4, 2, 0])
    proxy_labels = torch.arange(C).repeat_interleave(N)
    data = proxy_graph(x, proxies, labels, proxy_labels, k)
    data.validate(raise_on_error=True)
    edge = data["proxy", "to", "sample"]
    src, dst = edge.edge_index
    assert (degree(dst, B) == k).all()
    sim = F.normalize(x, dim=1) @ F.normalize(proxies, dim=1).t()
    torch.testing.assert_close(edge.edge_attr, sim[dst, src])
    assert torch.equal(src.view(B, k), select_proxies(sim.detach(), labels, proxy_labels, k))
    for i in range(B):
        assert set(torch.nonzero(proxy_labels == labels[i]).flatten().tolist()) <= set(src[dst == i].tolist())
    homo = data.to_homogeneous()
    assert homo.num_nodes == B + C * N and homo.edge_index.size(1) == B * k
    assert (degree(homo.edge_index[1], homo.num_nodes)[homo.node_type == 0] == k).all()
    edge.edge_attr.sum().backward()
    assert x.grad.abs().sum() > 0 and proxies.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels"):
        proxy_graph(x, proxies[:, :3], labels, proxy_labels, k)
    with pytest.raises(ValueError, match="proxy_labels"):
        proxy_graph(x, proxies, labels, proxy_labels[:-1], k)
