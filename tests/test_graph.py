import networkx as nx
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import degree, subgraph, to_networkx, to_torch_sparse_tensor

from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type


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
    with pytest.raises(ValueError, match=match):
        batch_graph(x, y, **kwargs)


def test_knn_homophily_counts_same_class_edges():
    from pygml.graph import knn_homophily

    x = torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.5]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # k=1: 0<-1, 1<-0, 2<-3, 3<-2, 4<-3: only node 4 (class 0) has a class-1 nearest neighbour
    assert knn_homophily(x, y, 1) == pytest.approx(4 / 5)
