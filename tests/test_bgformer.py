"""BGFormer: the layers against dense references, the loss against hand-computed values, the method."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from pygml.config import load_config
from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type
from pygml.losses import ContrastiveCELoss
from pygml.methods import build_method
from pygml.nn import BGFormerBlock, SemanticPropagation, SSAConv

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("dense", "sparse")


def _graph(n: int = 12, c: int = 16, k: int = 4, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return x, y, batch_graph(x, y, k=k)


def _adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """adj[i, j] = True for an edge j -> i."""
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edge_index[1], edge_index[0]] = True
    return adj


def dense_ssa_reference(conv: SSAConv, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Masked multi-head attention written out per head with the layer's own weights."""
    n, c = x.shape
    h = conv.heads
    d = c // h
    w, b = conv.lin_qkv.weight, conv.lin_qkv.bias
    q, k, v = (x @ w[i * c:(i + 1) * c].t() + b[i * c:(i + 1) * c] for i in range(3))
    heads = []
    for t in range(h):
        sl = slice(t * d, (t + 1) * d)
        scores = (q[:, sl] @ k[:, sl].t()) / math.sqrt(d)
        scores = scores.masked_fill(~adj, float("-inf"))
        heads.append(torch.softmax(scores, dim=1) @ v[:, sl])
    return torch.cat(heads, dim=1) @ conv.lin_out.weight.t() + conv.lin_out.bias


def dense_minmax_reference(x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Parameter-free SSA: min-max of X X^T over each row's neighbours, rescaled to sum to 1."""
    s = x @ x.t()
    rows = []
    for i in range(x.size(0)):
        nbr = adj[i].nonzero().flatten()
        si = s[i, nbr]
        w = (si - si.min()) / (si.max() - si.min())
        rows.append((w / w.sum()) @ x[nbr])
    return torch.stack(rows)


def _grads(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weight).sum(), tensors)


# ----------------------------------------------------------------------------------------- SSAConv


@pytest.mark.parametrize("kernel", KERNELS)
def test_ssa_matches_dense_masked_attention_forward_and_gradients(kernel):
    torch.manual_seed(0)
    x, _, g = _graph()
    x.requires_grad_(True)
    edges = edges_of_type(g, VISUAL)
    conv = SSAConv(16, heads=4, kernel=kernel).double()
    params = [x, *conv.parameters()]
    out = conv(x, edges)
    ref = dense_ssa_reference(conv, x, _adjacency(edges, 12))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for a, b in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_parameter_free_ssa_matches_dense_minmax_reference(kernel):
    x, _, g = _graph(seed=1)
    x.requires_grad_(True)
    edges = edges_of_type(g, VISUAL)
    conv = SSAConv(16, parameter_free=True, kernel=kernel)
    assert list(conv.parameters()) == []
    out = conv(x, edges)
    ref = dense_minmax_reference(x, _adjacency(edges, 12))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(_grads(out, [x])[0], _grads(ref, [x])[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("parameter_free", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_attention_lives_on_the_knn_edges_and_sums_to_one(kernel, parameter_free):
    x, _, g = _graph(n=20, k=5)
    edges = edges_of_type(g, VISUAL)
    conv = SSAConv(16, 1 if parameter_free else 4, parameter_free=parameter_free, kernel=kernel).double()
    out, (ret_edges, alpha) = conv(x, edges, return_attention_weights=True)
    assert torch.equal(ret_edges, edges)
    assert alpha.shape == (edges.size(1), conv.heads)
    assert (alpha >= 0).all()
    sums = torch.zeros(20, conv.heads, dtype=alpha.dtype).index_add_(0, edges[1], alpha)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    # every node's in-edges are its K = 5 nearest rows (cosine) plus itself
    sim = F.normalize(x, dim=1) @ F.normalize(x, dim=1).t()
    for i in range(20):
        nbr = set(edges[0, edges[1] == i].tolist())
        knn = set(sim[i].masked_fill(torch.arange(20) == i, -2).topk(5).indices.tolist())
        assert nbr == knn | {i}
    # and nothing else reaches it: moving a row that is not an in-neighbour of i leaves i unchanged
    i = 0
    outsider = next(j for j in range(20) if j not in set(edges[0, edges[1] == i].tolist()))
    x2 = x.clone()
    x2[outsider] += 10.0
    torch.testing.assert_close(conv(x2, edges)[i], out[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("parameter_free", [False, True])
def test_dense_and_sparse_kernels_agree_with_duplicates_and_isolated_nodes(parameter_free):
    torch.manual_seed(3)
    n = 9
    x = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    # node 8 has no in-edge; 2 -> 0 appears twice; edges are not sorted by target
    edges = torch.tensor([[1, 2, 2, 0, 3, 4, 5, 6, 7, 1, 3, 0],
                          [0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 3]])
    heads = 1 if parameter_free else 2
    dense = SSAConv(8, heads, parameter_free=parameter_free, kernel="dense").double()
    sparse = SSAConv(8, heads, parameter_free=parameter_free, kernel="sparse").double()
    sparse.load_state_dict(dense.state_dict())
    o1, (_, a1) = dense(x, edges, return_attention_weights=True)
    o2, (_, a2) = sparse(x, edges, return_attention_weights=True)
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-12)
    params = [x, *dense.parameters()]
    for a, b in zip(_grads(o1, params), _grads(o2, [x, *sparse.parameters()])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    if not parameter_free:
        # the isolated node aggregates nothing: only the output bias is left
        torch.testing.assert_close(o1[8], dense.lin_out.bias)
        # the duplicated edge carries two equal weights
        dup = ((edges[0] == 2) & (edges[1] == 0)).nonzero().flatten()
        torch.testing.assert_close(a1[dup[0]], a1[dup[1]])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_index_and_sparse_adjacency_inputs_agree(kernel):
    x, _, g = _graph()
    edges = edges_of_type(g, VISUAL)
    conv = SSAConv(16, 4, kernel=kernel).double()
    ref, (_, alpha) = conv(x, edges, return_attention_weights=True)
    dense_alpha = torch.zeros(12, 12, 4, dtype=x.dtype)
    dense_alpha[edges[1], edges[0]] = alpha
    ones = torch.ones(edges.size(1), dtype=x.dtype)
    coo_t = torch.sparse_coo_tensor(edges.flip(0), ones, (12, 12))  # adj_t[i, j]: edge j -> i
    for adj_t in (coo_t, coo_t.to_sparse_csr()):
        out, adj_alpha = conv(x, adj_t, return_attention_weights=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(adj_alpha.to_dense(), dense_alpha, rtol=0, atol=1e-12)


def test_sparse_tensor_input_agrees():
    torch_sparse = pytest.importorskip("torch_sparse")
    x, _, g = _graph()
    edges = edges_of_type(g, VISUAL)
    conv = SSAConv(16, 4).double()
    ref, (_, alpha) = conv(x, edges, return_attention_weights=True)
    adj_t = torch_sparse.SparseTensor(row=edges[1], col=edges[0], sparse_sizes=(12, 12))
    out, adj_alpha = conv(x, adj_t, return_attention_weights=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    row, col, value = adj_alpha.coo()
    dense_alpha = torch.zeros(12, 12, 4, dtype=x.dtype)
    dense_alpha[edges[1], edges[0]] = alpha
    torch.testing.assert_close(value, dense_alpha[row, col], rtol=0, atol=1e-12)
    sem = SemanticPropagation(16).double()
    label = edges_of_type(g, LABEL)
    label_t = torch_sparse.SparseTensor(row=label[1], col=label[0], sparse_sizes=(12, 12))
    torch.testing.assert_close(sem(x, label_t), sem(x, label), rtol=0, atol=1e-12)


def test_return_attention_weights_is_read_as_a_bool():
    x, _, g = _graph()
    conv = SSAConv(16, 4).double()
    edges = edges_of_type(g, VISUAL)
    assert isinstance(conv(x, edges, return_attention_weights=False), torch.Tensor)
    assert isinstance(conv(x, edges), torch.Tensor)
    assert isinstance(conv(x, edges, return_attention_weights=True), tuple)


def test_ssa_reset_parameters_and_repr():
    conv = SSAConv(16, 4)
    before = conv.lin_qkv.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_qkv.weight)
    assert torch.equal(conv.lin_out.bias, torch.zeros(16))
    assert repr(conv) == "SSAConv(16, heads=4, kernel='auto')"
    assert "parameter_free=True" in repr(SSAConv(16, parameter_free=True))


def test_ssa_errors_name_the_problem():
    with pytest.raises(ValueError, match="heads=5 must divide channels=16"):
        SSAConv(16, 5)
    with pytest.raises(ValueError, match="single head"):
        SSAConv(16, 4, parameter_free=True)
    with pytest.raises(ValueError, match="kernel"):
        SSAConv(16, 4, kernel="flash")
    conv = SSAConv(16, 4)
    x = torch.randn(5, 16)
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        conv(x, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        conv(x, torch.tensor([[0, 7], [1, 1]]))
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        conv(torch.randn(5, 8), torch.tensor([[0], [1]]))


# --------------------------------------------------------------------------- SemanticPropagation


@pytest.mark.parametrize("y_includes_self", [True, False])
def test_semantic_propagation_matches_dense_normalised_label_graph(y_includes_self):
    x, y, g = _graph(n=14, classes=4)
    x.requires_grad_(True)
    sem = SemanticPropagation(16, y_includes_self=y_includes_self).double()
    out = sem(x, edges_of_type(g, LABEL))
    same = (y.view(-1, 1) == y.view(1, -1)).double()  # Y with its diagonal
    eye = torch.eye(14, dtype=torch.float64)
    a = same + eye if y_includes_self else same  # Y + I, or Y without its diagonal + I
    d = a.sum(1).rsqrt()
    a_hat = d.view(-1, 1) * a * d.view(1, -1)
    ref = a_hat @ (x @ sem.lin.weight.t()) @ sem.lin_out.weight.t() + sem.lin_out.bias
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    params = [x, *sem.parameters()]
    for p, q in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    if not y_includes_self:
        # A = Y: each row of Â X is its class mean
        hx = x @ sem.lin.weight.t()
        means = torch.stack([hx[y == c].mean(0) for c in y.tolist()])
        torch.testing.assert_close(a_hat @ hx, means)


def test_semantic_propagation_ignores_self_loops_in_its_input():
    x, _, g = _graph()
    sem = SemanticPropagation(16).double()
    label = edges_of_type(g, LABEL)
    loops = torch.arange(12).repeat(2, 1)
    torch.testing.assert_close(sem(x, torch.cat([label, loops], 1)), sem(x, label))


# ------------------------------------------------------------------------------------- the block


def test_block_is_the_pre_norm_formula():
    x, _, g = _graph()
    block = BGFormerBlock(16, 4, mix=0.3).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    visual, label = edges_of_type(g, VISUAL), edges_of_type(g, LABEL)
    h = block.norm1(x)
    mid = x + 0.3 * block.ssa_v(h, visual) + 0.7 * block.ssa_s(h, label)
    ref = mid + block.ffn[3](F.gelu(block.ffn[0](block.norm2(mid))))
    torch.testing.assert_close(block(g), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(block(x, visual, label), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("parameter_free", [False, True])
def test_block_is_permutation_equivariant(parameter_free):
    x, y, g = _graph(n=18, k=5, classes=5)
    block = BGFormerBlock(16, 4, parameter_free=parameter_free).double()
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(1))
    out = block(g)
    out_perm = block(batch_graph(x[perm], y[perm], k=5))
    torch.testing.assert_close(out_perm, out[perm], rtol=0, atol=1e-12)


def test_block_with_every_label_distinct_has_identity_semantic_graph():
    x, _, _ = _graph()
    y = torch.arange(12)
    g = batch_graph(x, y, k=4)
    assert (g.edge_type == LABEL).sum() == 0
    block = BGFormerBlock(16, 4).double()
    out = block(g)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, block(x, edges_of_type(g, VISUAL), None), rtol=0, atol=1e-12)
    h = block.norm1(x)
    torch.testing.assert_close(block.ssa_s(h, edges_of_type(g, LABEL)), block.ssa_s.lin_out(block.ssa_s.lin(h)))


def test_block_with_k_at_least_the_batch_attends_everywhere():
    x, y, _ = _graph(n=7, classes=3)
    g = batch_graph(x, y, k=50)
    visual = edges_of_type(g, VISUAL)
    assert visual.size(1) == 49  # every pair, self included
    block = BGFormerBlock(16, 4).double()
    out = block(g)
    assert out.shape == (7, 16) and torch.isfinite(out).all()
    adj = torch.ones(7, 7, dtype=torch.bool)
    torch.testing.assert_close(block.ssa_v(x, visual), dense_ssa_reference(block.ssa_v, x, adj), rtol=0, atol=1e-10)


def test_block_errors():
    with pytest.raises(ValueError, match="mix"):
        BGFormerBlock(16, 4, mix=1.5)
    block = BGFormerBlock(16, 4)
    with pytest.raises(ValueError, match="visual_edge_index"):
        block(torch.randn(3, 16))
    x, _, g = _graph()
    with pytest.raises(ValueError, match="edge_type"):
        block(Data(x=x.float(), edge_index=g.edge_index))


# ------------------------------------------------------------------------------------------- loss


def test_contrastive_ce_hand_computed():
    # three unit vectors at 0, 90 and 180 degrees; labels 0, 0, 1; tau = 0.5
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    loss = ContrastiveCELoss(temperature=0.5)(e, y)
    # anchor 0: s01 = 0, s02 = -1 -> -log(e^0 / (e^0 + e^-2)); anchor 1: s10 = 0, s12 = 0 -> log 2;
    # anchor 2 has no positive and is left out
    l0 = math.log(1 + math.exp(-2.0))
    l1 = math.log(2.0)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-12)


def test_contrastive_ce_averages_over_positives():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    tau = 0.25
    loss = ContrastiveCELoss(tau)(e, y)
    z = F.normalize(e, dim=1)
    s = (z @ z.t()).tolist()

    def anchor(i: int) -> float:
        others = [j for j in range(4) if j != i]
        log_z = math.log(sum(math.exp(s[i][j] / tau) for j in others))
        pos = [j for j in others if y[j] == y[i]]
        return -sum(s[i][p] / tau - log_z for p in pos) / len(pos)

    assert loss.item() == pytest.approx(sum(anchor(i) for i in range(3)) / 3, abs=1e-12)


def test_contrastive_ce_matches_pml_supcon():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(0)
    e = torch.randn(24, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (24,), generator=g)
    ours = ContrastiveCELoss(0.2)(e, y)
    ref = losses.SupConLoss(temperature=0.2)(e, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)


def test_contrastive_ce_without_positives_is_zero_with_gradient():
    e = torch.randn(5, 4, requires_grad=True)
    loss = ContrastiveCELoss()(e, torch.arange(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))
    one = torch.randn(1, 4, requires_grad=True)
    ContrastiveCELoss()(one, torch.tensor([3])).backward()
    assert torch.isfinite(one.grad).all()


def test_contrastive_ce_gradcheck_and_errors():
    e = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 3])
    assert torch.autograd.gradcheck(lambda t: ContrastiveCELoss(0.3)(t, y), (e,))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveCELoss(0.0)
    with pytest.raises(ValueError, match="labels"):
        ContrastiveCELoss()(e, torch.zeros(5, dtype=torch.long))


# ----------------------------------------------------------------------------------------- method


def _method_cfg(*overrides: str):
    return load_config(None, ["method=bgformer", "model.backbone=small_cnn", "model.width=8",
                              "model.embedding_dim=16", "bgformer.heads=4", "bgformer.k=4", *overrides])


def test_method_forward_trains_backbone_head_and_blocks():
    torch.manual_seed(0)
    method = build_method(_method_cfg("bgformer.depth=2"), num_classes=4)
    images = torch.rand(12, 3, 32, 32)
    labels = torch.arange(4).repeat_interleave(3)
    loss, logs = method(images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"loss", "loss_backbone", "loss_blocks"} <= set(logs)
    torch.testing.assert_close(loss.detach(), 0.5 * logs["loss_backbone"] + 0.5 * logs["loss_blocks"])
    loss.backward()
    for part in (method.backbone, method.head, method.blocks):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for p in method.blocks.parameters()))
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "blocks"}
    assert groups["blocks"]["lr"] == 1e-4 and "lr" not in groups["backbone"]
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len([p for p in method.parameters() if p.requires_grad])


def test_method_alpha_one_has_no_blocks():
    method = build_method(_method_cfg("bgformer.alpha=1.0"), num_classes=4)
    assert len(method.blocks) == 0
    assert [g["name"] for g in method.param_groups()] == ["backbone", "head"]
    loss, logs = method(torch.rand(8, 3, 32, 32), torch.arange(4).repeat_interleave(2))
    assert "loss_blocks" not in logs
    torch.testing.assert_close(loss.detach(), logs["loss_backbone"])


def test_method_parameter_free_variant_runs():
    method = build_method(_method_cfg("bgformer.ssa=parameter_free", "bgformer.heads=3"), num_classes=4)
    loss, _ = method(torch.rand(8, 3, 32, 32), torch.arange(4).repeat_interleave(2))
    loss.backward()
    assert torch.isfinite(loss)


def test_method_embedding_is_normalised_and_independent_of_the_batch():
    torch.manual_seed(0)
    method = build_method(_method_cfg(), num_classes=4).eval()
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        emb = method.embed(images)
        alone = torch.cat([method.embed(images[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(alone, emb, rtol=0, atol=1e-5)


def test_method_rejects_heads_that_do_not_divide_the_features():
    with pytest.raises(ValueError, match="bgformer.heads=5"):
        build_method(_method_cfg("bgformer.heads=5"), num_classes=4)


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop", "glyphs"])
def test_configs_load(name):
    cfg = load_config(ROOT / "configs" / "bgformer" / f"{name}.yaml")
    assert cfg.method == "bgformer"
    assert cfg.optim.name == "adamw"
    assert cfg.bgformer.temperature == 0.2
    if name != "glyphs":
        assert cfg.train.classes_per_batch * cfg.train.samples_per_class == 405
        assert cfg.model.embedding_dim == 128 and cfg.bgformer.k == 30
    assert cfg.bgformer.k < cfg.train.classes_per_batch * cfg.train.samples_per_class


# -------------------------------------------------------------------------------------------- ViT


def test_vit_small_features_and_errors(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from pygml.vit import ViTSmall16

    torch.manual_seed(0)
    net = ViTSmall16().eval()
    assert net.out_dim == 384
    with torch.no_grad():
        assert net(torch.rand(2, 3, 40, 40)).shape == (2, 384)
    weights = tmp_path / "vit_s16.pth"
    torch.save({**net.net.state_dict(), "head.weight": torch.zeros(1000, 384)}, weights)
    loaded = ViTSmall16(str(weights)).eval()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), net(images))
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ViTSmall16(str(missing))
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install pygml\[vit\]"):
        ViTSmall16()

