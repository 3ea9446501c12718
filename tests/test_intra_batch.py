import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import to_torch_sparse_tensor

from pygml.config import load_config
from pygml.graph import VISUAL, batch_graph, edges_of_type
from pygml.methods import build_method
from pygml.methods.intra_batch import k_reciprocal_neighbours, refine
from pygml.nn import IntraBatchAttention, IntraBatchLayer, IntraBatchMPN, zero_logit_softmax

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "intra_batch").glob("*.yaml"))


# ---------------------------------------------------------------- references written here


def reference_attention(layer, x, edge_index):
    """Masked dense attention with the zero logit, from the definition: for each head,
    a_ij = c_ij exp(s_ij) / (1 + sum_j' c_ij' exp(s_ij')) with c_ij the number of edges j -> i."""
    n, h, d = x.size(0), layer.heads, layer.head_dim
    count = torch.zeros(n, n, dtype=x.dtype)
    for j, i in edge_index.t().tolist():
        count[i, j] += 1
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


# ---------------------------------------------------------------- zero_logit_softmax


def test_zero_logit_softmax_hand_computed_and_stable():
    src = torch.tensor([0.0, math.log(2.0), 1000.0, 1000.0, -3.0], dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 3])
    a = zero_logit_softmax(src, index, num_nodes=4)
    # group 0: exp(0)=1, exp(log 2)=2 -> 1/4, 2/4; group 1: two huge equal logits -> 1/2 each (the zero
    # logit underflows); group 3: e^-3 / (1 + e^-3)
    expected = torch.tensor([0.25, 0.5, 0.5, 0.5, math.exp(-3) / (1 + math.exp(-3))], dtype=torch.float64)
    assert torch.allclose(a, expected, atol=1e-12)
    ptr = torch.tensor([0, 2, 4, 4, 5])
    assert torch.allclose(zero_logit_softmax(src, ptr=ptr), expected, atol=1e-12)


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

    assert torch.allclose(zero_logit_softmax(src, index), dense(src), atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: zero_logit_softmax(s, index), (src,))
    with pytest.raises(ValueError, match="index"):
        zero_logit_softmax(src)


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
    assert torch.allclose(out, ref, atol=1e-10)
    assert ei is edge_index and alpha.shape == (edge_index.size(1), 2)
    # per-edge weights: a repeated edge shares its pair's weight equally
    count = torch.zeros(12, 12, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        count[i, j] += 1
    src, tgt = edge_index
    assert torch.allclose(alpha, ref_w[tgt, src] / count[tgt, src].unsqueeze(-1), atol=1e-10)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
    for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-10), name


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
            assert torch.allclose(sums[has_in], torch.ones_like(sums[has_in]), atol=1e-12)
        assert (sums[~has_in] == 0).all()


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_node_without_in_edges_gets_the_zero_message(kernel):
    layer = make_layer(kernel, True)
    with torch.no_grad():
        layer.lin_out.bias.normal_()
    x = torch.randn(12, 8, dtype=torch.float64)
    out = layer(x, GRAPHS["odd"])
    assert torch.equal(out[1], layer.lin_out.bias)  # node 1 has no in-edge
    assert torch.isfinite(out).all()
    empty = layer(x, torch.empty(2, 0, dtype=torch.long))
    assert torch.allclose(empty, layer.lin_out.bias.expand(12, -1))


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
        assert torch.allclose(out_p, out[perm], atol=1e-12)


def test_dense_and_sparse_kernels_agree_and_auto_picks_by_density():
    torch.manual_seed(4)
    x = torch.randn(30, 16)
    dense = IntraBatchAttention(16, 4, kernel="dense").eval()
    sparse = IntraBatchAttention(16, 4, kernel="sparse").eval()
    sparse.load_state_dict(dense.state_dict())
    full = batch_graph(x, k=None, label_edges=False).edge_index
    knn = batch_graph(x, k=4, label_edges=False).edge_index
    shuffled = knn[:, torch.randperm(knn.size(1))]  # unsorted edges: the softmax falls back to index
    for ei in (full, knn, shuffled):
        o1, (_, a1) = dense(x, ei, return_attention_weights=True)
        o2, (_, a2) = sparse(x, ei, return_attention_weights=True)
        assert torch.allclose(o1, o2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-6)
    auto = IntraBatchAttention(16, 4)  # dense from 3% of the N² pairs
    assert auto._dense(full.size(1), 30) and auto._dense(27, 30) and not auto._dense(26, 30)
    assert not IntraBatchAttention(16, 4, dense_threshold=0.5)._dense(knn.size(1), 30)
    dense.train()  # dropout on the attention weights acts in training mode only
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
            assert torch.allclose(layer(x, edge_index), ref, atol=1e-10)


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
        assert torch.allclose(out_s, out, atol=1e-12)
        dense_alpha = adj_alpha.to_dense()  # (N, N, H): [target, source]
        assert torch.allclose(dense_alpha[edge_index[1], edge_index[0]], alpha, atol=1e-12)


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
        assert torch.allclose(out_s, out, atol=1e-12)
        dense_alpha = adj_alpha.to_dense()
        assert torch.allclose(dense_alpha[edge_index[1], edge_index[0]], alpha, atol=1e-12)


def test_return_attention_weights_is_honoured_as_a_bool():
    layer = make_layer("sparse", True)
    x = torch.randn(12, 8, dtype=torch.float64)
    assert isinstance(layer(x, GRAPHS["full"], return_attention_weights=False), torch.Tensor)
    assert isinstance(layer(x, GRAPHS["full"]), torch.Tensor)
    assert isinstance(layer(x, GRAPHS["full"], return_attention_weights=True), tuple)


def test_attention_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple of heads"):
        IntraBatchAttention(10, 3)
    with pytest.raises(ValueError, match="kernel"):
        IntraBatchAttention(8, 2, kernel="fast")
    layer = IntraBatchAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        layer(torch.randn(5, 7), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        layer(torch.randn(5, 8), torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        layer(torch.randn(5, 8), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(5, 8), to_torch_sparse_tensor(torch.tensor([[0], [1]]), size=(6, 6)))


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
    assert torch.allclose(layer(x, ei), expected, atol=1e-10)


def test_mpn_heads_and_initialisation():
    torch.manual_seed(8)
    mpn = IntraBatchMPN(32, 64, num_classes=500, layers=2, heads=4)
    assert not mpn.neck.bias.requires_grad and mpn.neck.weight.requires_grad
    assert mpn.classifier.bias is None
    assert abs(mpn.classifier.weight.std().item() - 1e-3) < 1e-4
    x = torch.randn(20, 32)
    ei = batch_graph(x, label_edges=False).edge_index
    h, logits = mpn(x, ei)
    assert h.shape == (20, 64) and logits.shape == (20, 500)
    mpn.eval()
    h, _ = mpn(x, ei)
    assert torch.allclose(mpn.features(x, ei), h)
    cat = IntraBatchMPN(32, 64, num_classes=5, layers=2, heads=4, concat=True).eval()
    h, logits = cat(x, ei)
    assert h.shape == (20, 128) and logits.shape == (20, 5)
    assert torch.allclose(h[:, 64:], cat.features(x, ei))
    with pytest.raises(ValueError, match="layers"):
        IntraBatchMPN(32, 64, num_classes=5, layers=0)


# ---------------------------------------------------------------- the method


def tiny_cfg(*overrides):
    return load_config(None, ["method=intra_batch", "model.backbone=small_cnn", "model.width=8",
                              "model.embedding_dim=16", "intra_batch.heads=2", *overrides])


def tiny_batch():
    torch.manual_seed(9)
    return torch.rand(12, 3, 32, 32), torch.arange(4).repeat_interleave(3)


@pytest.mark.parametrize("k", [None, 2])
def test_forward_gives_a_finite_loss_and_gradients_everywhere(k):
    method = build_method(tiny_cfg(f"intra_batch.k={'null' if k is None else k}"), num_classes=4)
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) == {"loss", "loss_backbone", "loss_mpn"}
    assert torch.allclose(logs["loss"], logs["loss_backbone"] + logs["loss_mpn"])
    loss.backward()
    for name, module in (("backbone", method.backbone), ("head", method.head), ("classifier", method.classifier),
                         ("mpn", method.mpn)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    names = [g["name"] for g in method.param_groups()]
    assert names == ["backbone", "head", "mpn"]
    grouped = {id(p) for g in method.param_groups() for p in g["params"]}
    assert grouped == {id(p) for p in method.parameters() if p.requires_grad}


def test_backbone_loss_is_label_smoothed_cross_entropy_over_temperature():
    method = build_method(tiny_cfg("intra_batch.mpn=false", "intra_batch.temperature=0.5"), num_classes=4)
    assert method.mpn is None
    images, labels = tiny_batch()
    loss, logs = method(images, labels)
    assert set(logs) == {"loss", "loss_backbone"}
    with torch.no_grad():  # same train-mode pass: BatchNorm uses the batch statistics again
        logits = method.classifier(method.features(images)) / 0.5
    logp = logits.log_softmax(dim=1)
    target = torch.full_like(logp, 0.1 / 4)
    target[torch.arange(12), labels] += 0.9
    assert torch.allclose(loss, -(target * logp).sum(dim=1).mean(), atol=1e-6)


def test_embedding_is_normalised_and_independent_of_the_batch():
    method = build_method(tiny_cfg(), num_classes=4).eval()
    images, _ = tiny_batch()
    with torch.no_grad():
        emb = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(12)])
    assert torch.allclose(emb.norm(dim=1), torch.ones(12), atol=1e-6)
    assert torch.allclose(emb, alone, atol=1e-5)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_load(path):
    cfg = load_config(path)
    assert cfg.method == "intra_batch"
    assert cfg.optim.name == "radam"
    if path.stem != "glyphs":
        assert cfg.model.pooling == "max" and cfg.model.embedding_dim == 512 and cfg.train.epochs == 70
        assert cfg.optim.milestones == [31, 51] and not cfg.optim.cumulative and cfg.data.random_erasing == 0.5


def test_paper_table_values():
    table = {"cub": (6, 9, 1.5637e-4, 6.06e-6, 0.2, 1, 2), "cars": (10, 7, 3.6683e-4, 2.55e-9, 0.1111, 2, 8),
             "sop": (15, 6, 2.4725e-4, 2.8e-13, 0.6047, 1, 8), "inshop": (14, 4, 1.1266e-4, 1.06e-7, 0.1859, 1, 4)}
    for name, (p, k, lr, wd, t, layers, heads) in table.items():
        cfg = load_config(CONFIGS[0].parent / f"{name}.yaml")
        got = (cfg.train.classes_per_batch, cfg.train.samples_per_class, cfg.optim.lr, cfg.optim.weight_decay,
               cfg.intra_batch.temperature, cfg.intra_batch.layers, cfg.intra_batch.heads)
        assert got == (p, k, lr, wd, t, layers, heads), name


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
    mpn = IntraBatchMPN(16, 16, num_classes=3, heads=2).train()
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
    mpn = IntraBatchMPN(16, 16, num_classes=3, heads=2)
    f = clustered()
    assert torch.equal(refine(mpn, f, 0), F.normalize(f, dim=1))
    with pytest.raises(ValueError, match="k must be"):
        refine(mpn, f, -1)
    one = refine(mpn, f[:1], 5)  # a single row: k is capped at N - 1 = 0
    assert torch.equal(one, F.normalize(f[:1], dim=1))


def test_method_refine_needs_the_mpn():
    f = clustered()
    with_mpn = build_method(tiny_cfg(), num_classes=4)
    assert with_mpn.refine(f, 3).shape == (16, 16)
    without = build_method(tiny_cfg("intra_batch.mpn=false"), num_classes=4)
    with pytest.raises(ValueError, match="mpn=false"):
        without.refine(f, 3)


# ---------------------------------------------------------------- benchmark


def test_bench_quick_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(CONFIGS[0].parents[2]))  # the repository root holds bench/
    from bench.bench_intra_batch import run

    rows = run(quick=True)
    assert rows and all(r["ours"] > 0 and r["reference"] > 0 for r in rows)
