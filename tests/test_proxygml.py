"""ProxyGML: proxy subgraph, loss against a dense reference, BN-Inception, the method and its configs."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import degree

from pygml.bninception import BNInception, checkpoint_name
from pygml.config import load_config
from pygml.graph import proxy_graph, select_proxies
from pygml.losses import ProxyGMLLoss
from pygml.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "proxygml").glob("*.yaml"))


def dense_reference(x, proxies, labels, C, N, k, *, use_spos=True, use_mask=True, use_reg=True, lam=0.3,
                    reg_rows=None):
    """ProxyGML written straight from the equations with dense matrices (methods.md section 2)."""
    B, CN = x.size(0), C * N
    xn = x / x.norm(dim=1, keepdim=True)
    pn = proxies / proxies.norm(dim=1, keepdim=True)
    S = xn @ pn.t()
    proxy_class = torch.arange(CN) // N
    Yp = F.one_hot(proxy_class, C).to(x.dtype)
    S_pos = labels.view(-1, 1) == proxy_class.view(1, -1)
    mask = torch.zeros(B, CN, dtype=x.dtype)
    for i in range(B):
        own_first = S_pos[i] if use_spos else torch.zeros(CN, dtype=torch.bool)
        order = sorted(range(CN), key=lambda j: (not own_first[j], -S[i, j].item()))
        mask[i, order[:k]] = 1
    W = mask * S
    Z = W @ Yp
    M = (mask @ Yp > 0).to(x.dtype) if use_mask else torch.ones(B, C, dtype=x.dtype)
    E = M * torch.exp(Z)
    P = E / E.sum(dim=1, keepdim=True)
    p_y = P[torch.arange(B), labels]
    log_p_y = torch.where(p_y > 0, torch.log(torch.where(p_y > 0, p_y, 1.0)), 0.0)
    loss_cls = -log_p_y.sum() / B
    if not use_reg or lam == 0:
        return loss_cls, P
    ce = F.cross_entropy((pn @ pn.t()) @ Yp, proxy_class, reduction="none")
    rows = torch.arange(CN) if reg_rows is None else reg_rows
    return loss_cls + lam * ce[rows].mean(), P


def make_case(C=5, N=3, B=7, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    return x, labels


def loss_and_grads(loss_fn, x, labels):
    x = x.clone().requires_grad_(True)
    loss_fn.zero_grad()
    value = loss_fn(x, labels)
    value.backward()
    return value.detach(), x.grad, loss_fn.proxies.grad.clone()


def reference_and_grads(loss_fn, x, labels, **kw):
    x = x.clone().requires_grad_(True)
    proxies = loss_fn.proxies.detach().clone().requires_grad_(True)
    value, _ = dense_reference(x, proxies, labels, loss_fn.num_classes, loss_fn.proxies_per_class, loss_fn.k, **kw)
    value.backward()
    return value.detach(), x.grad, proxies.grad


def assert_close(a, b):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- subgraph


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


# ---------------------------------------------------------------- loss against the dense reference


@pytest.mark.parametrize("C, N, r", [(5, 3, 0.3), (4, 3, 0.1), (6, 1, 0.5), (3, 2, 1.0)])
@pytest.mark.parametrize("flags", [
    {}, {"use_spos": False}, {"use_mask": False}, {"use_reg": False},
    {"use_spos": False, "use_mask": False, "use_reg": False},
])
def test_loss_matches_dense_reference(C, N, r, flags):
    torch.manual_seed(C * 10 + N)
    x, labels = make_case(C, N)
    loss = ProxyGMLLoss(C, x.size(1), N, r, 0.3, **flags).double()
    assert loss.k == min(math.ceil(round(r * C * N, 9)), C * N)
    assert_close(loss_and_grads(loss, x, labels), reference_and_grads(loss, x, labels, **flags))


def test_k_is_ceil_of_r_c_n_and_clamped():
    assert ProxyGMLLoss(100, 4, 12, 0.05).k == 60          # CUB: 0.05 · 1200
    assert ProxyGMLLoss(98, 4, 12, 0.05).k == 59           # Cars: ⌈58.8⌉
    assert ProxyGMLLoss(11318, 4, 1, 0.05).k == 566        # SOP: ⌈565.9⌉
    assert ProxyGMLLoss(25, 4, 4, 0.07).k == 7             # 0.07 · 100 is 7.000000000000001 in floats
    assert ProxyGMLLoss(4, 4, 3, 1.0).k == 12
    assert ProxyGMLLoss(4, 4, 3, 1e-6).k == 1


def test_keeping_every_proxy_equals_no_subgraph():
    x, labels = make_case(4, 3)
    full = ProxyGMLLoss(4, x.size(1), 3, 1.0).double()
    plain = ProxyGMLLoss(4, x.size(1), 3, 0.05, subgraph=False).double()
    plain.load_state_dict(full.state_dict())
    assert_close(loss_and_grads(full, x, labels), loss_and_grads(plain, x, labels))
    ref = reference_and_grads(full, x, labels)  # k = CN in the dense reference
    assert_close(loss_and_grads(plain, x, labels), ref)


def test_classes_without_kept_proxy_get_zero_probability():
    # C = 3, N = 1, k = 2: the sample keeps its own proxy (class 0) and the closer other (class 1).
    proxies = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0])
    s0, s1 = 0.8, 0.48 + 0.48
    loss = ProxyGMLLoss(3, 2, 1, 2 / 3, use_reg=False).double()
    loss.proxies.data.copy_(proxies)
    expected = -math.log(math.exp(s0) / (math.exp(s0) + math.exp(s1)))
    assert loss(x, labels).item() == pytest.approx(expected, abs=1e-12)
    _, P = dense_reference(x, proxies, labels, 3, 1, 2, use_reg=False)
    assert P[0, 2] == 0 and P[0, :2].sum().item() == pytest.approx(1.0)
    # moving the dropped proxy (still not kept) changes nothing and receives no gradient
    loss.proxies.data[2] = torch.tensor([0.0, -1.0], dtype=torch.float64)
    _, _, grad = loss_and_grads(loss, x, labels)
    assert loss(x, labels).item() == pytest.approx(expected, abs=1e-12) and grad[2].abs().max() == 0
    unmasked = ProxyGMLLoss(3, 2, 1, 2 / 3, use_reg=False, use_mask=False).double()
    unmasked.proxies.data.copy_(proxies)
    expected = -math.log(math.exp(s0) / (math.exp(s0) + math.exp(s1) + 1.0))
    assert unmasked(x, labels).item() == pytest.approx(expected, abs=1e-12)


def test_each_switch_changes_only_its_part():
    x, labels = make_case(6, 2, B=9)
    base = ProxyGMLLoss(6, x.size(1), 2, 0.25).double()
    t = base.terms(x, labels)
    assert t["loss"].item() == pytest.approx((t["loss_cls"] + 0.3 * t["loss_reg"]).item())
    for flag in ("use_spos", "use_mask", "subgraph"):
        other = ProxyGMLLoss(6, x.size(1), 2, 0.25, **{flag: False}).double()
        other.load_state_dict(base.state_dict())
        u = other.terms(x, labels)
        assert u["loss_reg"].item() == t["loss_reg"].item()       # L_p untouched
        assert u["loss_cls"].item() != t["loss_cls"].item()       # L_cls changed
    no_reg = ProxyGMLLoss(6, x.size(1), 2, 0.25, use_reg=False).double()
    no_reg.load_state_dict(base.state_dict())
    assert no_reg(x, labels).item() == t["loss_cls"].item()
    zero_lambda = ProxyGMLLoss(6, x.size(1), 2, 0.25, lambda_reg=0.0).double()
    zero_lambda.load_state_dict(base.state_dict())
    assert zero_lambda(x, labels).item() == t["loss_cls"].item()


def test_chunked_regulariser_equals_full():
    x, labels = make_case(7, 3, B=10)
    full = ProxyGMLLoss(7, x.size(1), 3, 0.2).double()
    for chunk in (1, 4, 5, 100):
        chunked = ProxyGMLLoss(7, x.size(1), 3, 0.2, regularizer="chunked", chunk_size=chunk).double()
        chunked.load_state_dict(full.state_dict())
        assert_close(loss_and_grads(chunked, x, labels), loss_and_grads(full, x, labels))
    auto = ProxyGMLLoss(7, x.size(1), 3, 0.2, regularizer="chunked").double()
    auto.load_state_dict(full.state_dict())
    assert_close(loss_and_grads(auto, x, labels), loss_and_grads(full, x, labels))


def test_batch_regulariser_uses_the_proxies_of_the_batch_classes():
    x, labels = make_case(6, 2, B=5)
    labels = torch.tensor([4, 1, 1, 4, 0])
    batch = ProxyGMLLoss(6, x.size(1), 2, 0.25, regularizer="batch").double()
    rows = torch.tensor([0, 1, 2, 3, 8, 9])  # proxies of classes 0, 1 and 4
    assert_close(loss_and_grads(batch, x, labels), reference_and_grads(batch, x, labels, reg_rows=rows))


def test_benchmark_reference_computes_the_same_loss(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_proxygml import dense_reference as bench_reference

    for C, N, lam in ((20, 3, 0.3), (30, 1, 0.0)):
        x, labels = make_case(C, N, B=8, d=16, seed=C)
        loss = ProxyGMLLoss(C, 16, N, 0.1, lam).double()
        label_matrix = F.one_hot(loss.proxy_labels, C).double()
        expected = bench_reference(x, loss.proxies, labels, label_matrix, loss.k, lam)
        torch.testing.assert_close(loss(x, labels), expected)


def test_large_summed_similarities_do_not_overflow():
    # 100 proxies per class all equal to the sample: Z = 100 for its class; exp(100) overflows float32
    d = 4
    loss = ProxyGMLLoss(3, d, 100, 0.5, use_reg=False)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    loss.proxies.data[:100] = x[0]
    loss.proxies.data[100:200] = x[1]
    loss.proxies.data[200:] = -x[0]
    value = loss(x, torch.tensor([0, 1]))
    assert torch.isfinite(value) and value.item() < 1e-6


def test_loss_errors_are_clear():
    loss = ProxyGMLLoss(4, 8, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(torch.randn(3, 8), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="embedding_size=8"):
        loss(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="regularizer"):
        ProxyGMLLoss(4, 8, regularizer="dense")
    with pytest.raises(ValueError, match="r must lie"):
        ProxyGMLLoss(4, 8, r=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        ProxyGMLLoss(0, 8)


def test_proxy_init_scale_and_labels():
    loss = ProxyGMLLoss(50, 16, 4)
    bound = 1 / math.sqrt(200)
    assert loss.proxies.shape == (200, 16) and loss.proxies.abs().max() <= bound
    assert loss.proxies.abs().max() > 0.9 * bound
    assert torch.equal(loss.proxy_labels[:9], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2]))


# ---------------------------------------------------------------- BN-Inception

# names of the converted checkpoint bn_inception-52deb4733.pth (pretrainedmodels)
CHECKPOINT_KEYS = [
    "conv1_7x7_s2.weight", "conv1_7x7_s2.bias", "conv1_7x7_s2_bn.weight", "conv1_7x7_s2_bn.running_mean",
    "conv2_3x3_reduce.weight", "conv2_3x3_bn.running_var", "inception_3a_1x1.weight", "inception_3a_pool_proj_bn.bias",
    "inception_3c_double_3x3_2.weight", "inception_4e_3x3_bn.weight", "inception_5a_double_3x3_1_bn.running_mean",
    "inception_5b_pool_proj.weight", "inception_5b_pool_proj_bn.running_var",
]


def test_bninception_names_shape_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = BNInception(None).eval()
    names = [checkpoint_name(k) for k in net.state_dict()]
    assert set(CHECKPOINT_KEYS) <= set(names)
    # 3 in the stem, 7 per block, 5 per grid reduction (3c, 4e): 69 convolutions, each with its BatchNorm
    assert len([n for n in names if n.endswith("_bn.running_var")]) == 69
    assert dict(net.state_dict())["stages.stem.conv2_3x3.weight"].shape == (192, 64, 3, 3)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 224, 224)).shape == (1, 1024) and net.out_dim == 1024
        x = torch.rand(2, 3, 32, 32)
        out = net(x)
    # the converted file's layout: checkpoint names, BN vectors as (1, C), a classifier, no num_batches_tracked
    state = {checkpoint_name(k): (v.view(1, -1) if "_bn." in k else v) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["last_linear.weight"], state["last_linear.bias"] = torch.randn(1000, 1024), torch.randn(1000)
    torch.save(state, tmp_path / "bn_inception.pth")
    torch.save(net.state_dict(), tmp_path / "own.pth")
    for file in ("bn_inception.pth", "own.pth"):
        other = BNInception(str(tmp_path / file)).eval()
        with torch.no_grad():
            torch.testing.assert_close(other(x), out)
    del state["inception_4a_1x1.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="inception_4a_1x1.bias"):
        BNInception(str(tmp_path / "broken.pth"))


def test_bninception_caffe_preprocessing_and_missing_file(tmp_path):
    net = BNInception(None)
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0] = 1.0  # pure red
    pre = net.preprocess(img)
    assert pre[0, :, 0, 0].tolist() == [-104.0, -117.0, 255.0 - 128.0]  # BGR, ×255, Caffe means
    missing = tmp_path / "bn_inception-52deb4733.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        BNInception(str(missing))


# ---------------------------------------------------------------- the method and configs


def tiny_method(**overrides):
    items = ["method=proxygml", "model.backbone=small_cnn", "model.width=4", "model.embedding_dim=16",
             "proxygml.proxies_per_class=3", "proxygml.r=0.3"] + [f"{k}={v}" for k, v in overrides.items()]
    return build_method(load_config(None, items), num_classes=6)


def test_method_forward_gradients_and_warmup():
    torch.manual_seed(0)
    method = tiny_method()
    images, labels = torch.rand(12, 3, 32, 32), torch.arange(4).repeat_interleave(3)
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "proxies"} and groups["proxies"]["lr"] == 0.03
    assert groups["proxies"]["params"] == [method.loss.proxies]

    method.set_epoch(0)  # warm-up: the backbone is frozen
    method.train()
    bn = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    loss, logs = method(images, labels)
    assert torch.isfinite(loss) and set(logs) == {"loss_cls", "loss_reg"}
    loss.backward()
    assert all(p.grad is None for p in method.backbone.parameters())
    assert method.head.fc.weight.grad.abs().sum() > 0 and method.loss.proxies.grad.abs().sum() > 0
    assert not bn.training and torch.equal(bn.running_mean, before)

    method.zero_grad()
    method.set_epoch(1)
    method.train()
    assert bn.training
    loss, _ = method(images, labels)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    assert len(groups["backbone"]["params"]) == len(list(method.backbone.parameters()))


def test_embed_is_normalised_and_row_independent():
    torch.manual_seed(0)
    method = tiny_method().eval()
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        emb = method.embed(images)
        rows = torch.cat([method.embed(images[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(emb, rows, atol=1e-5, rtol=1e-5)


def test_frozen_bn_backbone_is_left_out_of_the_backbone_group():
    method = tiny_method(**{"model.frozen_bn": "true"})
    backbone = {id(p) for p in method.param_groups()[0]["params"]}
    bns = [m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_params = {id(p) for m in bns for p in m.parameters()}
    assert backbone and not backbone & bn_params
    method.set_epoch(0)
    method.set_epoch(1)
    assert all(not p.requires_grad for m in bns for p in m.parameters())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_load(path):
    cfg = load_config(path)
    assert cfg.method == "proxygml"
    if path.stem != "glyphs":
        assert cfg.model.backbone == "bninception" and cfg.model.embedding_dim == 512
        assert cfg.train.classes_per_batch * cfg.train.samples_per_class == 32
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay) == ("adam", 1e-4, 0.01, 1e-4)
        assert list(cfg.optim.milestones) == [20, 40] and cfg.train.epochs == 50


def test_all_configs_present():
    assert {p.stem for p in CONFIGS} == {"cub", "cars", "sop", "inshop", "glyphs"}


def test_warns_when_the_subgraph_keeps_only_the_own_class():
    import warnings as _w

    with pytest.warns(UserWarning, match=r"L_cls is 0"):
        ProxyGMLLoss(5, 8, proxies_per_class=12, r=0.05)
    with _w.catch_warnings():
        _w.simplefilter("error")
        ProxyGMLLoss(100, 8, proxies_per_class=12, r=0.05)
