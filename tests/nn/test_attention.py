"""pygml.nn.attention: the normalisations and the top-K selection against hand-computed and brute-force
references, the kernel rule, the graph inputs, and a forward pass that reads no tensor value."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from torch_geometric import EdgeIndex
from torch_geometric.utils import to_edge_index, to_torch_sparse_tensor

from pygml.checks import value_checks
from pygml.graph import batch_graph
from pygml.nn import BGFormerBlock, IntraBatchAttention, IntraBatchMPN, SSAConv, minmax_weights, zero_logit_softmax
from pygml.nn.attention import (
    DENSE_MAX_ENTRIES,
    DENSE_MIN_DENSITY,
    EdgeAttention,
    dense_minmax,
    dense_softmax,
    topk_dense,
    topk_edges,
)

# ---------------------------------------------------------------- zero_logit_softmax


def test_zero_logit_softmax_hand_computed_and_stable():
    src = torch.tensor([0.0, math.log(2.0), 1000.0, 1000.0, -3.0], dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 3])
    a = zero_logit_softmax(src, index, num_nodes=4)
    # group 0: exp(0)=1, exp(log 2)=2 -> 1/4, 2/4; group 1: two huge equal logits -> 1/2 each (the zero
    # logit underflows); group 3: e^-3 / (1 + e^-3)
    expected = torch.tensor([0.25, 0.5, 0.5, 0.5, math.exp(-3) / (1 + math.exp(-3))], dtype=torch.float64)
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-12)
    ptr = torch.tensor([0, 2, 4, 4, 5])
    torch.testing.assert_close(zero_logit_softmax(src, ptr=ptr), expected, rtol=0, atol=1e-12)


def test_zero_logit_softmax_multi_head_and_gradients():
    torch.manual_seed(0)
    src = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])

    def dense(s):
        out = torch.empty_like(s)
        for g in index.unique():
            m = index == g
            logits = torch.cat([s[m], s.new_zeros(1, s.size(1))])  # the explicit zero logit
            out[m] = logits.softmax(dim=0)[:-1]
        return out

    torch.testing.assert_close(zero_logit_softmax(src, index), dense(src), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: zero_logit_softmax(s, index), (src,))
    with pytest.raises(ValueError, match="index"):
        zero_logit_softmax(src)


# ---------------------------------------------------------------- min-max


def test_minmax_weights_hand_computed_without_rescaling():
    src = torch.tensor([1.0, 3.0, 2.0, 5.0, -math.inf, 4.0, 7.0, 7.0], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    # group 0: (s - 1) / 2 -> 0, 1, 0.5 (sum 1.5: not rescaled); group 1: 5 alone, the -inf entry takes no
    # part -> 1 and 0; group 2: a single entry -> 1; group 3: flat -> 1, 1
    expected = torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(minmax_weights(src, index, num_nodes=4), expected, rtol=0, atol=0)
    ptr = torch.tensor([0, 3, 5, 6, 8])
    torch.testing.assert_close(minmax_weights(src, ptr=ptr), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="index"):
        minmax_weights(src)


def test_minmax_edge_and_dense_forms_agree_with_ties_in_the_gradient():
    """Ties for the minimum and the maximum share the gradient in both forms (as torch.amax does)."""
    scores = torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, 0.5, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    count = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    rows, cols = count.nonzero(as_tuple=True)
    s1 = scores.clone().requires_grad_()
    s2 = scores.clone().requires_grad_()
    dense = dense_minmax(s1[None], count)[0]
    edge = minmax_weights(s2[rows, cols], rows, num_nodes=3)
    torch.testing.assert_close(dense[rows, cols], edge, rtol=0, atol=0)
    weight = torch.arange(1.0, 13.0, dtype=torch.float64).view(3, 4)
    (dense * weight).sum().backward()
    (edge * weight[rows, cols]).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=1e-12)


def test_dense_softmax_counts_repeated_edges_and_empties_rows_without_edges():
    score = torch.tensor([[[0.0, 1.0, 2.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]]], dtype=torch.float64)
    count = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    a = dense_softmax(score, count)[0]
    e = math.e
    torch.testing.assert_close(a[0], torch.tensor([1 / (1 + 2 * e), 2 * e / (1 + 2 * e), 0.0], dtype=torch.float64))
    assert torch.equal(a[1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(a[2], score[0, 2].softmax(0))
    z = dense_softmax(score, count, zero_logit=True)[0]
    torch.testing.assert_close(z[0], torch.tensor([1, 2 * e, 0], dtype=torch.float64) / (2 + 2 * e))
    assert torch.equal(z[1], torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------- top-K selection


def brute_force_keep(score, edges, k):
    """kept[e, h]: is edge e's source among the k best distinct sources of its target in head h, ranked by
    (higher score, smaller source)."""
    src, dst = edges.tolist()
    kept = torch.zeros(len(src), score.size(1), dtype=torch.bool)
    for h in range(score.size(1)):
        for t in set(dst):
            best = {}
            for e, (j, i) in enumerate(zip(src, dst)):
                if i == t:
                    best[j] = score[e, h].item()
            chosen = sorted(best, key=lambda j: (-best[j], j))[:k]
            for e, (j, i) in enumerate(zip(src, dst)):
                if i == t and j in chosen:
                    kept[e, h] = True
    return kept


def tied_scores(edges, heads, seed):
    """Scores with many exact ties: a function of (target, source) only, so repeated edges tie too."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 3, (16, 16, heads), generator=g).double()
    return table[edges[1], edges[0]]


@pytest.mark.parametrize("k", [1, 2, 3, 20])
def test_topk_edges_matches_brute_force_with_ties_and_repeated_edges(k):
    g = torch.Generator().manual_seed(k)
    edges = torch.randint(0, 9, (2, 60), generator=g)  # unsorted, with repeated edges and empty targets
    score = tied_scores(edges, 3, k)
    kept = topk_edges(score, edges[1], edges[0], 9, k)
    assert torch.equal(kept, brute_force_keep(score, edges, k))


@pytest.mark.parametrize("k", [1, 3, 8, 12])
def test_topk_dense_matches_brute_force_with_ties(k):
    g = torch.Generator().manual_seed(k)
    n, heads = 10, 2
    member = torch.rand(n, n, generator=g) < 0.6
    member[3] = False  # a row without candidates
    score = torch.randint(0, 3, (heads, n, n), generator=g).double()
    rows, cols = member.nonzero(as_tuple=True)
    expected = brute_force_keep(score[:, rows, cols].t(), torch.stack([cols, rows]), k)
    keep = topk_dense(score, member, k)
    assert not (keep & ~member).any()
    assert torch.equal(keep[:, rows, cols].t(), expected)


# ---------------------------------------------------------------- the kernel rule and the inputs


class DotAttention(EdgeAttention):
    """The base with identity projections: q = k = v = x."""

    def project(self, x):
        shape = (x.size(0), self.heads, self.head_dim)
        return x.view(shape), x.view(shape), x.view(shape)


def test_kernel_rule():
    layer = DotAttention(8, 2, normalization="softmax")
    n = 100
    edges_at_threshold = math.ceil(DENSE_MIN_DENSITY * n * n)
    assert layer.use_dense(n, edges_at_threshold) and not layer.use_dense(n, edges_at_threshold - 1)
    big = math.isqrt(DENSE_MAX_ENTRIES // 2)
    assert layer.use_dense(big, big * big) and not layer.use_dense(big + 1, (big + 1) ** 2)
    assert DotAttention(8, 2, normalization="softmax", kernel="dense").use_dense(10**5, 0)
    assert not DotAttention(8, 2, normalization="softmax", kernel="sparse").use_dense(3, 9)


def test_base_errors_name_the_argument():
    with pytest.raises(ValueError, match="normalization must be one of"):
        DotAttention(8, 2, normalization="sparsemax")
    with pytest.raises(ValueError, match="top_k must be a positive int or None"):
        DotAttention(8, 2, normalization="softmax", top_k=0)
    with pytest.raises(ValueError, match=r"heads=3 must be a positive int that divides channels=8"):
        DotAttention(8, 3, normalization="softmax")
    with pytest.raises(ValueError, match="dropout"):
        DotAttention(8, 2, normalization="softmax", dropout=1.0)
    with pytest.raises(NotImplementedError):
        EdgeAttention(8, 2, normalization="softmax")(torch.randn(3, 8), torch.zeros(2, 0, dtype=torch.long))


def graph_inputs(edge_index, n):
    """The same graph in every format the layers read, edges sorted by target for the sorted formats."""
    sorted_ei = edge_index[:, torch.argsort(edge_index[1] * n + edge_index[0])]
    inputs = {
        "edge_index": edge_index,
        "edge_index int32": edge_index.int(),
        "EdgeIndex by col": EdgeIndex(sorted_ei, sparse_size=(n, n), sort_order="col"),
        "COO": to_torch_sparse_tensor(edge_index.flip(0), size=(n, n)),
        "CSR": to_torch_sparse_tensor(edge_index.flip(0), size=(n, n), layout=torch.sparse_csr),
        "CSC": to_torch_sparse_tensor(edge_index.flip(0), size=(n, n), layout=torch.sparse_csc),
    }
    try:
        import torch_sparse

        inputs["SparseTensor"] = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(n, n))
    except ImportError:
        pass
    return inputs


def dense_weights(weights, n):
    """(alpha, kept), each (N, N, H) with [i, j] for the edge j -> i, from what a top-K layer returns in any
    graph format: ``(edge_index, alpha, kept)`` or ``(adj_t, kept)``."""
    *graph, kept = weights
    if len(graph) == 2:
        ei, alpha = graph
        ei = ei.as_tensor() if isinstance(ei, EdgeIndex) else ei
        dst, src = ei[1].long(), ei[0].long()
    else:
        (dst, src), alpha = to_edge_index(graph[0])  # the adjacency's own order, which kept follows
    shape = (n, n, alpha.size(1))
    return (alpha.new_zeros(shape).index_put_((dst, src), alpha),
            torch.zeros(shape, dtype=torch.bool).index_put_((dst, src), kept))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_every_input_format_gives_the_same_numbers(kernel):
    torch.manual_seed(0)
    n = 10
    x = torch.randn(n, 8, dtype=torch.float64)
    edge_index = torch.randint(0, n, (2, 40)).unique(dim=1)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1))]
    layer = DotAttention(8, 2, normalization="zero_logit_softmax", top_k=2, kernel=kernel)
    ref, weights = layer(x, edge_index, return_attention_weights=True)
    assert weights[0] is edge_index
    ref_alpha, ref_kept = dense_weights(weights, n)
    assert ref_kept.sum() > 0 and not ref_kept.all()
    for name, graph in graph_inputs(edge_index, n).items():
        out, weights = layer(x, graph, return_attention_weights=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12, msg=name)
        alpha, kept = dense_weights(weights, n)
        torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-12, msg=name)
        assert torch.equal(kept, ref_kept), name


def test_index_range_is_a_value_check():
    layer = SSAConv(8, 2)
    x = torch.randn(5, 8)
    with value_checks(), pytest.raises(ValueError, match=r"edge_index has node indices in \[0, 7\], outside \[0, 5\)"):
        layer(x, torch.tensor([[0, 7], [1, 1]]))


# ---------------------------------------------------------------- no host reads on the forward path


@contextmanager
def no_host_reads(monkeypatch):
    """Reading a tensor's value on the host (a GPU→CPU copy and a wait on a GPU) raises inside."""

    def read(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host during the forward or backward pass")

    with monkeypatch.context() as m:
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            m.setattr(torch.Tensor, name, read)
        yield


def test_the_guard_catches_a_read(monkeypatch):
    t = torch.ones(2)
    with no_host_reads(monkeypatch):
        for read in (lambda: bool(t.all()), lambda: t.sum().item(), lambda: int(t[0]), lambda: t.tolist()):
            with pytest.raises(AssertionError, match="read on the host"):
                read()
    assert bool(t.all())


def _modules():
    return {
        "IntraBatchAttention": lambda kernel: IntraBatchAttention(16, 4, kernel=kernel),
        "SSAConv": lambda kernel: SSAConv(16, 4, kernel=kernel),
        "SSAConv top_k": lambda kernel: SSAConv(16, 4, top_k=3, dropout=0.1, kernel=kernel),
        "SSAConv parameter_free top_k": lambda kernel: SSAConv(16, top_k=3, parameter_free=True, kernel=kernel),
    }


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("name", list(_modules()))
def test_forward_and_backward_read_no_tensor_value(monkeypatch, name, kernel):
    torch.manual_seed(0)
    layer = _modules()[name](kernel).train()
    x = torch.randn(12, 16, requires_grad=True)
    graphs = graph_inputs(batch_graph(x.detach(), k=4, label_edges=False).edge_index, 12)
    for graph in graphs.values():
        with no_host_reads(monkeypatch):
            out, _ = layer(x, graph, return_attention_weights=True)
            out.square().sum().backward()


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_block_and_network_read_no_tensor_value(monkeypatch, variant):
    torch.manual_seed(0)
    x = torch.randn(12, 16, requires_grad=True)
    y = torch.arange(12) % 3
    g = batch_graph(x.detach(), y, k=None)
    block = BGFormerBlock(16, 4, top_k=5, variant=variant, dropout=0.1)
    _, visual, label = block.split_relations(g)
    mpn = IntraBatchMPN(16, 16, layers=2, heads=4, concat=True)
    with no_host_reads(monkeypatch):
        (block(x, visual, label).square().sum() + mpn(x, visual).square().sum()).backward()
