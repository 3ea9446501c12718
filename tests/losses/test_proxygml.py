"""ProxyGMLLoss against a dense reference written from the equations, hand-computed cases, the chunked and
batch regularisers, and the benchmark's own reference."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from pygml.checks import value_checks
from pygml.losses import ProxyGMLLoss


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
    with value_checks(), pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):  # reads the labels
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


def test_warns_when_the_subgraph_keeps_only_the_own_class():
    with pytest.warns(UserWarning, match=r"L_cls is 0"):
        ProxyGMLLoss(5, 8, proxies_per_class=12, r=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProxyGMLLoss(100, 8, proxies_per_class=12, r=0.05)
