"""pygml.nn.bgformer against dense references of the authors' block written here (plain torch, float64):
per head LN → qkv → logits → top-K mask → softmax → v → projection; the semantic branch with the
normalised label matrix; the parameter-free v2 with its min-max weights and shared projection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.utils import to_torch_sparse_tensor

from pygml.checks import value_checks
from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type
from pygml.nn import BGFormerBlock, SemanticPropagation, SSAConv

KERNELS = ("dense", "sparse")
ATOL = 1e-9

# ------------------------------------------------------------------------------ references written here


def pair_counts(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """count[i, j]: the number of edges j -> i."""
    count = torch.zeros(n, n, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        count[i, j] += 1
    return count


def reference_keep(score: torch.Tensor, count: torch.Tensor, k) -> torch.Tensor:
    """keep[i, j]: j is among the k best distinct candidates of row i, by (higher score, smaller j)."""
    keep = torch.zeros(count.shape, dtype=torch.bool)
    for i in range(count.size(0)):
        candidates = sorted((j for j in range(count.size(1)) if count[i, j] > 0), key=lambda j: (-score[i, j].item(), j))
        keep[i, candidates[:k]] = True
    return keep


def reference_softmax(score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of weight · exp(score), normalised; a row without weight stays 0."""
    e = weight * torch.exp(score - score.detach().max())
    return e / e.sum(dim=1, keepdim=True).clamp_min(1e-300)


def reference_minmax(score: torch.Tensor, keep: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """count · (s − min) / (max − min) over each row's kept edges (1 for a flat row), not rescaled; the
    minimum and maximum are taken over the edges, a repeated edge once per copy."""
    rows = []
    for i in range(score.size(0)):
        edges = [j for j in range(score.size(1)) if keep[i, j] for _ in range(int(count[i, j]))]
        if not edges:
            rows.append(torch.zeros_like(score[i]))
            continue
        lo, hi = score[i, edges].amin(), score[i, edges].amax()
        w = torch.ones_like(score[i]) if hi == lo else (score[i] - lo) / (hi - lo)
        rows.append(w * count[i] * keep[i])
    return torch.stack(rows)


def authors_attention(x, qkv_weight, qkv_bias, out_weight, out_bias, heads, k, count):
    """The authors' v1 attention (k=None: every candidate) over the candidates of ``count``."""
    n, c = x.shape
    d = c // heads
    q, key, v = F.linear(x, qkv_weight, qkv_bias).split(c, dim=1)
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, sl] @ key[:, sl].t() / math.sqrt(d)
        keep = reference_keep(s.detach(), count, k)
        outs.append(reference_softmax(s, count * keep) @ v[:, sl])
    return F.linear(torch.cat(outs, dim=1), out_weight, out_bias)


def authors_v2_attention(x, k, count):
    s = x @ x.t()
    return reference_minmax(s, reference_keep(s.detach(), count, k), count) @ x


def normalised_label_matrix(y: torch.Tensor, y_includes_self: bool = True) -> torch.Tensor:
    """Â = D^-1/2 (Y + I) D^-1/2 with Y_ij = [y_i = y_j] (without its diagonal when not y_includes_self)."""
    same = (y.view(-1, 1) == y.view(1, -1)).double()
    eye = torch.eye(y.numel(), dtype=torch.float64)
    a = same + eye if y_includes_self else same
    d = a.sum(1).rsqrt()
    return d.view(-1, 1) * a * d.view(1, -1)


def authors_block(block: BGFormerBlock, x, y, count):
    """The authors' block (methods.md, section 3) with the block's parameters, written out."""
    c, mix, k = block.channels, block.mix, block.ssa_v.top_k
    xn = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias)
    semantic = normalised_label_matrix(y) @ F.linear(xn, block.ssa_s.lin.weight, block.ssa_s.lin.bias)
    if block.variant == "v1":
        a = block.ssa_v
        visual = authors_attention(xn, a.lin_qkv.weight, a.lin_qkv.bias, a.lin_out.weight, a.lin_out.bias,
                                   a.heads, k, count)
        semantic = F.linear(semantic, block.ssa_s.lin_out.weight, block.ssa_s.lin_out.bias)
        x = x + mix * visual + (1 - mix) * semantic
    else:
        proj = block.proj
        x = x + mix * proj(authors_v2_attention(xn, k, count)) + (1 - mix) * proj(semantic)
    hidden = F.gelu(F.linear(F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias),
                             block.ffn[0].weight, block.ffn[0].bias))
    return x + F.linear(hidden, block.ffn[3].weight, block.ffn[3].bias)


# ------------------------------------------------------------------------------ graphs and helpers


def tied_tokens(n: int = 12, c: int = 16, distinct: int = 5, seed: int = 0) -> torch.Tensor:
    """n tokens of which only ``distinct`` differ: the logits of repeated tokens tie exactly."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, c, generator=g, dtype=torch.float64)
    return base[torch.arange(n) % distinct]


def full_graph(n: int) -> torch.Tensor:
    """Every pair j -> i, self loops included: the authors' candidates."""
    return torch.cartesian_prod(torch.arange(n), torch.arange(n)).t().flip(0)


def candidate_graph(n: int, seed: int = 0) -> torch.Tensor:
    """A random graph with repeated edges, a node without in-edges (n - 1) and unsorted edges."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, 5 * n), generator=g)
    edges = edges[:, edges[1] != n - 1]
    return torch.cat([edges, edges[:, :6]], dim=1)


def in_formats(edge_index: torch.Tensor, n: int) -> dict:
    """The graph as an edge_index, torch.sparse COO and CSR adjacencies and a SparseTensor, each with the
    multiplicities the layer sees: torch.sparse coalesces repeated edges into one."""
    count = pair_counts(edge_index, n)
    formats = {"edge_index": (edge_index, count),
               "COO": (to_torch_sparse_tensor(edge_index.flip(0), size=(n, n)), (count > 0).double()),
               "CSR": (to_torch_sparse_tensor(edge_index.flip(0), size=(n, n), layout=torch.sparse_csr),
                       (count > 0).double())}
    try:
        import torch_sparse

        formats["SparseTensor"] = (torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0],
                                                             sparse_sizes=(n, n)), count)
    except ImportError:
        pass
    return formats


def grads(out: torch.Tensor, tensors: list) -> list:
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weight).sum(), tensors, retain_graph=True)


def assert_same(out, ref, params, ref_params=None):
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    for a, b in zip(grads(out, params), grads(ref, ref_params or params)):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial biases and norms, so that every parameter enters the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def boundary_ties(score: torch.Tensor, count: torch.Tensor, k: int) -> bool:
    """Whether some row has equal scores at ranks k and k + 1 of its distinct candidates."""
    for i in range(count.size(0)):
        ranked = sorted((score[i, j].item() for j in range(count.size(1)) if count[i, j] > 0), reverse=True)
        if len(ranked) > k and ranked[k - 1] == ranked[k]:
            return True
    return False


# ------------------------------------------------------------------------------ SSAConv with top_k


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("k", [1, 3, 7, 40])
@pytest.mark.parametrize("graph", ["full", "candidates"])
def test_top_k_ssa_is_the_authors_attention(kernel, k, graph):
    n = 12
    x = tied_tokens(n).requires_grad_()
    edge_index = full_graph(n) if graph == "full" else candidate_graph(n)
    torch.manual_seed(0)
    conv = perturb(SSAConv(16, heads=4, top_k=k, kernel=kernel).double())
    params = [x, *conv.parameters()]
    for name, (adj, count) in in_formats(edge_index, n).items():
        ref = authors_attention(x, conv.lin_qkv.weight, conv.lin_qkv.bias, conv.lin_out.weight, conv.lin_out.bias,
                                4, k, count)
        assert_same(conv(x, adj), ref, params)
    if graph == "full" and k in (3, 7):  # the tie rule is exercised: equal logits straddle the K-th rank
        q, key, _ = conv.lin_qkv(x).detach().split(16, dim=1)
        assert any(boundary_ties(q[:, h * 4:(h + 1) * 4] @ key[:, h * 4:(h + 1) * 4].t() / 2.0, count, k)
                   for h in range(4))


@pytest.mark.parametrize("kernel", KERNELS)
def test_top_k_at_least_the_in_degree_keeps_every_edge(kernel):
    n = 12
    x = tied_tokens(n)
    edge_index = candidate_graph(n)
    every = SSAConv(16, heads=4, kernel=kernel).double()
    top = SSAConv(16, heads=4, top_k=n, kernel=kernel).double()
    top.load_state_dict(every.state_dict())
    out, (_, alpha) = every(x, edge_index, return_attention_weights=True)
    out_k, (ei, alpha_k, kept) = top(x, edge_index, return_attention_weights=True)
    torch.testing.assert_close(out_k, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha_k, alpha, rtol=0, atol=1e-12)
    assert ei is edge_index and kept.all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("k", [1, 4, 40])
@pytest.mark.parametrize("graph", ["full", "candidates"])
def test_parameter_free_ssa_is_the_authors_v2_attention(kernel, k, graph):
    n = 12
    x = tied_tokens(n).requires_grad_()
    edge_index = full_graph(n) if graph == "full" else candidate_graph(n)
    conv = SSAConv(16, top_k=k, parameter_free=True, kernel=kernel)
    assert list(conv.parameters()) == []
    for adj, count in in_formats(edge_index, n).values():
        assert_same(conv(x, adj), authors_v2_attention(x, k, count), [x])


@pytest.mark.parametrize("kernel", KERNELS)
def test_top_k_weights_tell_which_edges_each_head_kept(kernel):
    torch.manual_seed(1)
    n, k = 10, 3
    x = torch.randn(n, 16, dtype=torch.float64)
    edge_index = full_graph(n)
    conv = SSAConv(16, heads=4, top_k=k, kernel=kernel).double()
    _, (ei, alpha, kept) = conv(x, edge_index, return_attention_weights=True)
    assert ei is edge_index and alpha.shape == kept.shape == (n * n, 4) and kept.dtype == torch.bool
    per_target = torch.zeros(n, 4, dtype=torch.long).index_add_(0, edge_index[1], kept.long())
    assert (per_target == k).all()
    assert (alpha[~kept] == 0).all() and (alpha[kept] > 0).all()
    sums = torch.zeros(n, 4, dtype=torch.float64).index_add_(0, edge_index[1], alpha)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert not torch.equal(kept[:, 0], kept[:, 1])  # every head chooses its own neighbours
    # v2: the weakest kept neighbour has weight 0, so the mask is not alpha > 0
    _, (_, alpha2, kept2) = SSAConv(16, top_k=k, parameter_free=True, kernel=kernel)(
        x, edge_index, return_attention_weights=True)
    lowest = torch.full((n, 1), 2.0, dtype=torch.float64).scatter_reduce(
        0, edge_index[1].view(-1, 1), alpha2.masked_fill(~kept2, 2.0), "amin")
    assert (lowest == 0).all() and (alpha2[~kept2] == 0).all()


@pytest.mark.parametrize("parameter_free", [False, True])
@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_kernels_agree_with_repeated_edges_and_isolated_nodes(parameter_free, top_k):
    torch.manual_seed(3)
    n = 9
    x = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    # node 8 has no in-edge; 2 -> 0 appears twice; edges are not sorted by target
    edges = torch.tensor([[1, 2, 2, 0, 3, 4, 5, 6, 7, 1, 3, 0],
                          [0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 3]])
    heads = 1 if parameter_free else 2
    dense = SSAConv(8, heads, top_k=top_k, parameter_free=parameter_free, kernel="dense").double()
    sparse = SSAConv(8, heads, top_k=top_k, parameter_free=parameter_free, kernel="sparse").double()
    sparse.load_state_dict(dense.state_dict())
    o1, w1 = dense(x, edges, return_attention_weights=True)
    o2, w2 = sparse(x, edges, return_attention_weights=True)
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)
    for a, b in zip(w1[1:], w2[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads(o1, [x, *dense.parameters()]), grads(o2, [x, *sparse.parameters()])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    dup = ((edges[0] == 2) & (edges[1] == 0)).nonzero().flatten()
    torch.testing.assert_close(w1[1][dup[0]], w1[1][dup[1]])  # the copies carry equal weights
    if top_k is not None:
        assert torch.equal(w1[2][dup[0]], w1[2][dup[1]])  # and are kept or dropped together
    if not parameter_free:
        torch.testing.assert_close(o1[8], dense.lin_out.bias)  # the isolated node: only the output bias


# ------------------------------------------------------------------------------ SSAConv over given edges


def dense_ssa_reference(conv: SSAConv, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Masked multi-head attention over every given edge, written out per head with the layer's weights."""
    return authors_attention(x, conv.lin_qkv.weight, conv.lin_qkv.bias, conv.lin_out.weight, conv.lin_out.bias,
                             conv.heads, None, adj.double())


@pytest.mark.parametrize("kernel", KERNELS)
def test_ssa_without_top_k_is_masked_attention_over_the_given_edges(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64, requires_grad=True)
    edges = edges_of_type(batch_graph(x.detach(), k=4, label_edges=False), VISUAL)
    conv = perturb(SSAConv(16, heads=4, kernel=kernel).double())
    assert_same(conv(x, edges), dense_ssa_reference(conv, x, pair_counts(edges, 12) > 0), [x, *conv.parameters()])


@pytest.mark.parametrize("kernel", KERNELS)
def test_attention_lives_on_the_given_edges_and_sums_to_one(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 16, generator=g, dtype=torch.float64)
    edges = edges_of_type(batch_graph(x, k=5, label_edges=False), VISUAL)
    conv = SSAConv(16, 4, kernel=kernel).double()
    out, (ret_edges, alpha) = conv(x, edges, return_attention_weights=True)
    assert ret_edges is edges and alpha.shape == (edges.size(1), 4) and (alpha >= 0).all()
    sums = torch.zeros(20, 4, dtype=alpha.dtype).index_add_(0, edges[1], alpha)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    # nothing else reaches a node: moving a row that is not an in-neighbour of 0 leaves 0 unchanged
    outsider = next(j for j in range(20) if j not in set(edges[0, edges[1] == 0].tolist()))
    x2 = x.clone()
    x2[outsider] += 10.0
    torch.testing.assert_close(conv(x2, edges)[0], out[0], rtol=0, atol=1e-12)


def test_return_attention_weights_is_read_as_a_bool():
    x = torch.randn(6, 16)
    edges = full_graph(6)
    for conv in (SSAConv(16, 4), SSAConv(16, 4, top_k=2)):
        assert isinstance(conv(x, edges, return_attention_weights=False), torch.Tensor)
        assert isinstance(conv(x, edges), torch.Tensor)
        assert isinstance(conv(x, edges, return_attention_weights=True), tuple)


def test_ssa_reset_parameters_repr_and_state_dict():
    conv = SSAConv(16, 4, top_k=30)
    before = conv.lin_qkv.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_qkv.weight)
    assert torch.equal(conv.lin_out.bias, torch.zeros(16))
    assert sorted(conv.state_dict()) == ["lin_out.bias", "lin_out.weight", "lin_qkv.bias", "lin_qkv.weight"]
    assert repr(conv) == "SSAConv(16, heads=4, top_k=30, kernel='auto')"
    assert repr(SSAConv(16)) == "SSAConv(16, heads=1, kernel='auto')"
    assert "parameter_free=True" in repr(SSAConv(16, parameter_free=True))


def test_ssa_errors_name_the_problem():
    with pytest.raises(ValueError, match="heads=5 must be a positive int that divides channels=16"):
        SSAConv(16, 5)
    with pytest.raises(ValueError, match="single head; got heads=4"):
        SSAConv(16, 4, parameter_free=True)
    with pytest.raises(ValueError, match="kernel must be one of auto, dense, sparse, got 'flash'"):
        SSAConv(16, 4, kernel="flash")
    with pytest.raises(ValueError, match="top_k must be a positive int or None .*, got 0"):
        SSAConv(16, 4, top_k=0)
    conv = SSAConv(16, 4)
    x = torch.randn(5, 16)
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        conv(x, torch.zeros(3, 4, dtype=torch.long))
    with value_checks(), pytest.raises(ValueError, match=r"\[0, 5\)"):
        conv(x, torch.tensor([[0, 7], [1, 1]]))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16\), got \(5, 8\)"):
        conv(torch.randn(5, 8), torch.tensor([[0], [1]]))


# ------------------------------------------------------------------------------ SemanticPropagation


@pytest.mark.parametrize("y_includes_self", [True, False])
@pytest.mark.parametrize("project", [True, False])
def test_semantic_propagation_matches_dense_normalised_label_graph(y_includes_self, project):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(14, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(14) % 4
    sem = perturb(SemanticPropagation(16, y_includes_self=y_includes_self, project=project).double())
    label = edges_of_type(batch_graph(x.detach(), y, k=3), LABEL)
    a_hat = normalised_label_matrix(y, y_includes_self)
    ref = a_hat @ F.linear(x, sem.lin.weight, sem.lin.bias)
    if project:
        ref = F.linear(ref, sem.lin_out.weight, sem.lin_out.bias)
    assert sem.lin.bias is not None and (sem.lin_out is not None) == project
    assert_same(sem(x, label), ref, [x, *sem.parameters()])
    if not y_includes_self:  # A = Y: each row of Â X is its class mean
        hx = F.linear(x, sem.lin.weight, sem.lin.bias)
        means = torch.stack([hx[y == c].mean(0) for c in y.tolist()])
        torch.testing.assert_close(a_hat @ hx, means)


def test_semantic_propagation_ignores_self_loops_and_reads_sparse_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64)
    sem = SemanticPropagation(16).double()
    label = edges_of_type(batch_graph(x, torch.arange(12) % 4, k=3), LABEL)
    loops = torch.arange(12).repeat(2, 1)
    ref = sem(x, label)
    torch.testing.assert_close(sem(x, torch.cat([label, loops], 1)), ref)
    for adj, _ in in_formats(label, 12).values():
        torch.testing.assert_close(sem(x, adj), ref, rtol=0, atol=1e-12)
    assert repr(sem) == "SemanticPropagation(16, y_includes_self=True)"


# ------------------------------------------------------------------------------ the block


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("k", [3, 40])
def test_block_is_the_authors_block(kernel, variant, k):
    n = 12
    x = tied_tokens(n).requires_grad_()
    y = torch.arange(n) % 4
    g = batch_graph(x.detach(), y, k=None)  # the authors' candidates: every row, self included
    block = perturb(BGFormerBlock(16, 4, top_k=k, mix=0.3, variant=variant, kernel=kernel).double())
    ref = authors_block(block, x, y, pair_counts(full_graph(n), n))
    params = [x, *block.parameters()]
    assert_same(block(Data(x=x, y=y, edge_index=g.edge_index, edge_type=g.edge_type)), ref, params)
    _, visual, label = block.split_relations(g)
    for adj, _ in in_formats(visual, n).values():
        assert_same(block(x, adj, label), ref, params)


@pytest.mark.parametrize("kernel", KERNELS)
def test_feature_knn_block_attends_over_every_given_visual_edge(kernel):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(12) % 4
    graph = batch_graph(x.detach(), y, k=4)
    block = perturb(BGFormerBlock(16, 4, top_k=None, mix=0.6, kernel=kernel).double())
    visual = edges_of_type(graph, VISUAL)
    ref = authors_block(block, x, y, pair_counts(visual, 12))  # top_k None: every given edge
    assert_same(block(graph.update({"x": x})), ref, [x, *block.parameters()])


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_block_is_permutation_equivariant(variant):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(18, 16, generator=g, dtype=torch.float64)
    y = torch.arange(18) % 5
    block = BGFormerBlock(16, 4, top_k=5, variant=variant).double()
    perm = torch.randperm(18, generator=g)
    out = block(batch_graph(x, y, k=None))
    torch.testing.assert_close(block(batch_graph(x[perm], y[perm], k=None)), out[perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_a_branch_of_weight_zero_is_not_computed(mix, monkeypatch):
    x = tied_tokens(8)
    y = torch.arange(8) % 2
    block = perturb(BGFormerBlock(16, 4, top_k=3, mix=mix, variant="v2").double())
    ref = authors_block(block, x, y, pair_counts(full_graph(8), 8))
    skipped = block.ssa_s if mix == 1.0 else block.ssa_v
    monkeypatch.setattr(skipped, "forward", lambda *a, **k: pytest.fail("a branch of weight 0 was computed"))
    torch.testing.assert_close(block(batch_graph(x, y, k=None)), ref, rtol=0, atol=ATOL)


def test_block_with_every_label_distinct_has_identity_semantic_graph():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64)
    graph = batch_graph(x, torch.arange(12), k=None)
    assert (graph.edge_type == LABEL).sum() == 0
    block = BGFormerBlock(16, 4).double()
    torch.testing.assert_close(block(graph), block(x, edges_of_type(graph, VISUAL), None), rtol=0, atol=1e-12)
    h = block.norm1(x)
    torch.testing.assert_close(block.ssa_s(h, edges_of_type(graph, LABEL)), block.ssa_s.lin_out(block.ssa_s.lin(h)))


def test_block_parameters_reset_and_repr():
    v1, v2 = BGFormerBlock(16, 4), BGFormerBlock(16, 4, variant="v2")
    assert {"ssa_v.lin_qkv.bias", "ssa_v.lin_out.weight", "ssa_s.lin.bias", "ssa_s.lin_out.weight"} <= set(v1.state_dict())
    assert v1.proj is None and v2.ssa_s.lin_out is None and v2.ssa_v.lin_qkv is None
    assert {"proj.weight", "proj.bias", "ssa_s.lin.weight", "ssa_s.lin.bias"} <= set(v2.state_dict())
    before = v2.proj.weight.detach().clone()
    v2.reset_parameters()
    assert not torch.equal(before, v2.proj.weight)
    assert repr(v1) == "BGFormerBlock(16, heads=4, top_k=30, mix=0.5, mlp_ratio=4, variant='v1')"


def test_block_errors():
    with pytest.raises(ValueError, match=r"mix \(λ\) must lie in \[0, 1\], got 1.5"):
        BGFormerBlock(16, 4, mix=1.5)
    with pytest.raises(ValueError, match="variant must be one of v1, v2, got 'v3'"):
        BGFormerBlock(16, 4, variant="v3")
    with pytest.raises(ValueError, match="mlp_ratio must be a positive int, got 0"):
        BGFormerBlock(16, 4, mlp_ratio=0)
    block = BGFormerBlock(16, 4)
    with pytest.raises(ValueError, match="visual_edge_index"):
        block(torch.randn(3, 16))
    x = torch.randn(12, 16)
    g = batch_graph(x, torch.arange(12) % 3, k=4)
    with pytest.raises(ValueError, match="edge_type"):
        block(Data(x=x, edge_index=g.edge_index))
    with pytest.raises(ValueError, match="not both"):
        block(g, g.edge_index)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16\), got \(12, 8\)"):
        block(torch.randn(12, 8), g.edge_index)
