"""pygml.nn.intra_batch: the attention against a dense reference written here, the layer and the network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import to_torch_sparse_tensor

from pygml.graph import VISUAL, batch_graph, edges_of_type
from pygml.nn import IntraBatchAttention, IntraBatchLayer, IntraBatchMPN

# ---------------------------------------------------------------- references written here


def pair_counts(edge_index, n):
    """count[i, j]: the number of edges j -> i."""
    count = torch.zeros(n, n, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        count[i, j] += 1
    return count


def reference_attention(layer, x, edge_index):
    """Masked dense attention with the zero logit, from the definition: for each head,
    a_ij = c_ij exp(s_ij) / (1 + sum_j' c_ij' exp(s_ij')) with c_ij the number of edges j -> i."""
    n, h, d = x.size(0), layer.heads, layer.head_dim
    count = pair_counts(edge_index, n).to(x.dtype)
    q = layer.lin_query(x).view(n, h, d)
    k = layer.lin_key(x).view(n, h, d)
    v = layer.lin_value(x).view(n, h, d)
    heads, weights = [], []
    for hh in range(h):
        s = q[:, hh] @ k[:, hh].t() / math.sqrt(d)
        e = count * s.exp()
        denom = e.sum(dim=1, keepdim=True) + (1.0 if layer.zero_logit else 0.0)
        a = torch.where(count > 0, e / denom.clamp_min(1e-300), torch.zeros_like(e))
        heads.append(a @ v[:, hh])
        weights.append(a)
    out = layer.lin_out(torch.cat(heads, dim=1))
    return out, torch.stack(weights, dim=-1)  # (N, C), (N, N, H): summed over repeated edges


def random_graphs():
    torch.manual_seed(0)
    x = torch.randn(12, 8)
    full = batch_graph(x, k=None, label_edges=False).edge_index
    knn = edges_of_type(batch_graph(x, k=3, label_edges=False), VISUAL)
    # node 0: a single in-edge; node 1: none; node 2: a self loop only; a repeated edge 4 -> 3
    odd = torch.tensor([[5, 2, 4, 4, 6, 7, 8, 9, 10, 11, 3, 0],
                        [0, 2, 3, 3, 3, 5, 5, 6, 7, 8, 9, 10]])
    return {"full": full, "knn": knn, "odd": odd}


GRAPHS = random_graphs()


def make_layer(kernel, zero_logit, channels=8, heads=2, seed=1):
    torch.manual_seed(seed)
    return IntraBatchAttention(channels, heads, dropout=0.0, zero_logit=zero_logit, kernel=kernel).double()


# ---------------------------------------------------------------- the attention layer


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("zero_logit", [True, False])
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_attention_matches_dense_reference_forward_and_gradients(kernel, zero_logit, graph):
    edge_index = GRAPHS[graph]
    layer = make_layer(kernel, zero_logit)
    ref_layer = make_layer(kernel, zero_logit)
    torch.manual_seed(2)
    x = torch.randn(12, 8, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, (ei, alpha) = layer(x1, edge_index, return_attention_weights=True)
    ref, ref_w = reference_attention(ref_layer, x2, edge_index)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    assert ei is edge_index and alpha.shape == (edge_index.size(1), 2)
    # per-edge weights: a repeated edge shares its pair's weight equally
    count = pair_counts(edge_index, 12)
    src, tgt = edge_index
    torch.testing.assert_close(alpha, ref_w[tgt, src] / count[tgt, src].unsqueeze(-1), rtol=0, atol=1e-10)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)
    for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_attention_weights_sum_below_one_with_zero_logit_and_to_one_without(kernel):
    x = torch.randn(12, 8, dtype=torch.float64)
    edge_index = GRAPHS["odd"]
    has_in = torch.zeros(12, dtype=torch.bool)
    has_in[edge_index[1]] = True
    for zero_logit in (True, False):
        _, (_, alpha) = make_layer(kernel, zero_logit)(x, edge_index, return_attention_weights=True)
        sums = torch.zeros(12, 2, dtype=torch.float64).index_add_(0, edge_index[1], alpha)
        assert (alpha > 0).all()
        if zero_logit:
            assert (sums[has_in] < 1).all() and (sums[has_in] > 0).all()
        else:
            torch.testing.assert_close(sums[has_in], torch.ones_like(sums[has_in]), rtol=0, atol=1e-12)
        assert (sums[~has_in] == 0).all()


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("zero_logit", [True, False])
def test_node_without_in_edges_gets_the_zero_message(kernel, zero_logit):
    layer = make_layer(kernel, zero_logit)
    with torch.no_grad():
        layer.lin_out.bias.normal_()
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x, GRAPHS["odd"])
    assert torch.equal(out[1], layer.lin_out.bias)  # node 1 has no in-edge
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    empty = layer(x, torch.empty(2, 0, dtype=torch.long))
    torch.testing.assert_close(empty, layer.lin_out.bias.expand(12, -1))


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_permuting_the_nodes_permutes_the_output(kernel):
    layer = make_layer(kernel, True)
    torch.manual_seed(3)
    x = torch.randn(12, 8, dtype=torch.float64)
    perm = torch.randperm(12)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(12)
    for edge_index in GRAPHS.values():
        out = layer(x, edge_index)
        out_p = layer(x[perm], inv[edge_index])  # node perm[a] of the old graph is node a now
        torch.testing.assert_close(out_p, out[perm], rtol=0, atol=1e-12)


def test_dense_and_sparse_kernels_agree_and_dropout_acts_in_training_only():
    torch.manual_seed(4)
    x = torch.randn(30, 16)
    dense = IntraBatchAttention(16, 4, kernel="dense").eval()
    sparse = IntraBatchAttention(16, 4, kernel="sparse").eval()
    sparse.load_state_dict(dense.state_dict())
    full = batch_graph(x, k=None, label_edges=False).edge_index
    knn = batch_graph(x, k=4, label_edges=False).edge_index
    shuffled = knn[:, torch.randperm(knn.size(1))]  # unsorted edges: the softmax groups by index
    for ei in (full, knn, shuffled):
        o1, (_, a1) = dense(x, ei, return_attention_weights=True)
        o2, (_, a2) = sparse(x, ei, return_attention_weights=True)
        torch.testing.assert_close(o1, o2, rtol=0, atol=1e-5)
        torch.testing.assert_close(a1, a2, rtol=0, atol=1e-6)
    assert IntraBatchAttention(16, 4).use_dense(30, full.size(1))
    dense.train()
    noisy = dense(x, full)
    assert not torch.allclose(noisy, dense.eval()(x, full))


def test_equals_torch_multihead_attention_with_a_zero_key():
    """nn.MultiheadAttention(add_zero_attn=True) appends a zero key and value: exactly the zero logit."""
    torch.manual_seed(6)
    n, c, h = 10, 16, 4
    layer = IntraBatchAttention(c, h, dropout=0.0, kernel="dense").double().eval()
    mha = torch.nn.MultiheadAttention(c, h, add_zero_attn=True, batch_first=True).double().eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([layer.lin_query.weight, layer.lin_key.weight, layer.lin_value.weight]))
        mha.in_proj_bias.copy_(torch.cat([layer.lin_query.bias, layer.lin_key.bias, layer.lin_value.bias]))
        mha.out_proj.weight.copy_(layer.lin_out.weight)
        mha.out_proj.bias.copy_(layer.lin_out.bias)
    x = torch.randn(n, c, dtype=torch.float64)
    knn = batch_graph(x, k=3, label_edges=False).edge_index
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[knn[1], knn[0]] = True
    for edge_index, mask in ((batch_graph(x, label_edges=False).edge_index, None), (knn, ~adj)):
        ref = mha(x[None], x[None], x[None], attn_mask=mask, need_weights=False)[0][0]
        for kernel in ("dense", "sparse"):
            layer.kernel = kernel
            torch.testing.assert_close(layer(x, edge_index), ref, rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr, torch.sparse_csc])
def test_edge_index_and_torch_sparse_adjacency_agree(layout):
    layer = make_layer("sparse", True)
    x = torch.randn(12, 8, dtype=torch.float64)
    edge_index = GRAPHS["knn"]
    out, (_, alpha) = layer(x, edge_index, return_attention_weights=True)
    adj_t = to_torch_sparse_tensor(edge_index.flip(0), size=(12, 12), layout=layout)  # adj_t[target, source]
    for kernel in ("dense", "sparse"):
        layer.kernel = kernel
        out_s, adj_alpha = layer(x, adj_t, return_attention_weights=True)
        torch.testing.assert_close(out_s, out, rtol=0, atol=1e-12)
        dense_alpha = adj_alpha.to_dense()  # (N, N, H): [target, source]
        torch.testing.assert_close(dense_alpha[edge_index[1], edge_index[0]], alpha, rtol=0, atol=1e-12)


def test_edge_index_and_sparse_tensor_agree():
    torch_sparse = pytest.importorskip("torch_sparse")
    layer = make_layer("sparse", True)
    x = torch.randn(12, 8, dtype=torch.float64)
    edge_index = GRAPHS["knn"]
    out, (_, alpha) = layer(x, edge_index, return_attention_weights=True)
    adj_t = torch_sparse.SparseTensor.from_edge_index(edge_index, sparse_sizes=(12, 12)).t()
    for kernel in ("dense", "sparse"):
        layer.kernel = kernel
        out_s, adj_alpha = layer(x, adj_t, return_attention_weights=True)
        torch.testing.assert_close(out_s, out, rtol=0, atol=1e-12)
        dense_alpha = adj_alpha.to_dense()
        torch.testing.assert_close(dense_alpha[edge_index[1], edge_index[0]], alpha, rtol=0, atol=1e-12)


def test_return_attention_weights_is_honoured_as_a_bool():
    layer = make_layer("sparse", True)
    x = torch.randn(12, 8, dtype=torch.float64)
    assert isinstance(layer(x, GRAPHS["full"], return_attention_weights=False), torch.Tensor)
    assert isinstance(layer(x, GRAPHS["full"]), torch.Tensor)
    assert isinstance(layer(x, GRAPHS["full"], return_attention_weights=True), tuple)


def test_attention_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"heads=3 must be a positive int that divides channels=10"):
        IntraBatchAttention(10, 3)
    with pytest.raises(ValueError, match="kernel must be one of auto, dense, sparse, got 'fast'"):
        IntraBatchAttention(8, 2, kernel="fast")
    layer = IntraBatchAttention(8, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8\), got \(5, 7\)"):
        layer(torch.randn(5, 7), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        layer(torch.randn(5, 8), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="edge_index must hold integer node indices, got torch.float32"):
        layer(torch.randn(5, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"edge_index is a sparse adjacency of size \(6, 6\); expected \(5, 5\)"):
        layer(torch.randn(5, 8), to_torch_sparse_tensor(torch.tensor([[0], [1]]), size=(6, 6)))


def test_attention_reset_parameters_and_repr():
    layer = IntraBatchAttention(16, 4, dropout=0.1)
    before = layer.lin_query.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.lin_query.weight)
    assert torch.equal(layer.lin_key.bias, torch.zeros(16))
    assert repr(layer) == "IntraBatchAttention(16, heads=4, dropout=0.1, zero_logit=True, kernel='auto')"
    assert sorted(layer.state_dict()) == sorted(f"lin_{n}.{p}" for n in ("query", "key", "value", "out")
                                                for p in ("weight", "bias"))


# ---------------------------------------------------------------- layer and network


def test_layer_is_post_norm_attention_then_ffn():
    torch.manual_seed(7)
    layer = IntraBatchLayer(16, 4, dropout=0.0).double().eval()
    x = torch.randn(9, 16, dtype=torch.float64)
    ei = batch_graph(x, label_edges=False).edge_index
    h = F.layer_norm(x + reference_attention(layer.attn, x, ei)[0], (16,), layer.norm1.weight, layer.norm1.bias)
    ffn = layer.lin2(torch.relu(layer.lin1(h)))
    expected = F.layer_norm(h + ffn, (16,), layer.norm2.weight, layer.norm2.bias)
    assert layer.lin1.out_features == 64
    torch.testing.assert_close(layer(x, ei), expected, rtol=0, atol=1e-10)


def test_mpn_returns_the_node_features():
    torch.manual_seed(8)
    mpn = IntraBatchMPN(32, 64, layers=2, heads=4).eval()
    assert mpn.out_channels == 64
    assert not any(name.startswith(("neck", "classifier")) for name in mpn.state_dict())
    x = torch.randn(20, 32)
    ei = batch_graph(x, label_edges=False).edge_index
    h = mpn(x, ei)
    assert h.shape == (20, 64)
    expected = mpn.layers[1](mpn.layers[0](mpn.lin_in(x), ei), ei)
    torch.testing.assert_close(h, expected, rtol=0, atol=0)
    torch.testing.assert_close(mpn.features(x, ei), h, rtol=0, atol=0)
    cat = IntraBatchMPN(32, 64, layers=2, heads=4, concat=True).eval()
    h = cat(x, ei)
    assert h.shape == (20, 128) and cat.out_channels == 128
    torch.testing.assert_close(h[:, :64], cat.layers[0](cat.lin_in(x), ei), rtol=0, atol=0)
    torch.testing.assert_close(h[:, 64:], cat.features(x, ei), rtol=0, atol=0)
    with pytest.raises(ValueError, match="layers must be a positive int, got 0"):
        IntraBatchMPN(32, 64, layers=0)


def test_mpn_reset_parameters():
    mpn = IntraBatchMPN(8, 8, layers=2, heads=2)
    before = [p.detach().clone() for p in mpn.parameters()]
    mpn.reset_parameters()
    changed = [not torch.equal(a, b) for a, b in zip(before, mpn.parameters()) if a.dim() == 2]
    assert all(changed)
