"""ProxyGML as a method built in Python: the proxies' parameter group, the logged terms, the backbone
warm-up and a backbone with frozen BatchNorm."""

import pytest
import torch

from pygml.losses import ProxyGMLLoss
from pygml.methods import ProxyGML
from pygml.models import SmallCNN


def tiny_method(backbone=None, **kw):
    kw = {"embedding_dim": 16, "proxies_per_class": 3, "r": 0.3, **kw}
    return ProxyGML(backbone or SmallCNN(width=4), num_classes=6, **kw)


def test_method_forward_gradients_and_warmup():
    torch.manual_seed(0)
    method = tiny_method()
    assert isinstance(method.loss, ProxyGMLLoss) and method.loss.proxies.shape == (18, 16)
    images, labels = torch.rand(12, 3, 32, 32), torch.arange(4).repeat_interleave(3)
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "loss"} and groups["loss"]["lr"] == 0.03
    assert groups["loss"]["params"] == [method.loss.proxies]

    method.set_epoch(0)  # warm-up: the backbone is frozen
    method.train()
    bn = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    loss, logs = method(images, labels)
    assert torch.isfinite(loss) and set(logs) == {"loss", "loss_cls", "loss_reg"}
    torch.testing.assert_close(logs["loss"], logs["loss_cls"] + 0.3 * logs["loss_reg"])
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


def test_loss_is_proxygml_of_the_head_output():
    torch.manual_seed(1)
    method = tiny_method(lambda_reg=0.5, warmup_epochs=0).eval()
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 5, 5])
    loss, logs = method(images, labels)
    with torch.no_grad():
        expected = method.loss.terms(method.head(method.backbone(images)), labels)
    for key in ("loss", "loss_cls", "loss_reg"):
        torch.testing.assert_close(logs[key], expected[key])
    torch.testing.assert_close(loss.detach(), expected["loss"])
    assert expected["loss_reg"] > 0 and method.loss.lambda_reg == 0.5


def test_options_reach_the_loss_and_proxy_lr_none_uses_the_optimiser_s():
    method = tiny_method(use_spos=False, use_mask=False, use_reg=False, subgraph=False, regularizer="chunked",
                         chunk_size=5, proxy_lr=None)
    loss = method.loss
    assert (loss.use_spos, loss.use_mask, loss.use_reg, loss.subgraph) == (False, False, False, False)
    assert (loss.regularizer, loss.chunk_size, loss.k) == ("chunked", 5, 6)  # k = ceil(0.3 * 18)
    assert "lr" not in {g["name"]: g for g in method.param_groups()}["loss"]


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
    backbone = SmallCNN(width=4)
    backbone.freeze_batchnorm()
    method = tiny_method(backbone)
    backbone_group = {id(p) for p in method.param_groups()[0]["params"]}
    assert method.param_groups()[0]["name"] == "backbone"
    bns = [m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_params = {id(p) for m in bns for p in m.parameters()}
    assert backbone_group and not backbone_group & bn_params
    method.set_epoch(0)
    method.set_epoch(1)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert all(p.requires_grad for p in method.param_groups()[0]["params"])


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        ProxyGML(SmallCNN(width=4), num_classes=1)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        tiny_method(warmup_epochs=-1)
    with pytest.raises(ValueError, match="r must lie in"):
        tiny_method(r=1.5)
