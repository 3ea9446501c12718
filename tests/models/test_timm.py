"""timm backbones by name: timm's declared preprocessing inside the backbone, local weights, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm", reason="timm backbones need the optional timm extra")

from pygml.models import TimmBackbone, WeightsMismatchError  # noqa: E402

NAME = "test_resnet"  # one of timm's tiny test models: 0.4 M parameters, declared input 160 px, mean = std = 0.5


def reference(net: torch.nn.Module, images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    config = timm.data.resolve_data_config({}, model=net)
    x = F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    return net((x - mean) / std)


def test_preprocessing_is_the_one_timm_declares():
    torch.manual_seed(0)
    backbone = TimmBackbone(NAME).eval()
    config = timm.data.resolve_data_config({}, model=backbone.net)
    assert backbone.input_size == tuple(config["input_size"][1:]) == (160, 160)
    assert backbone.mean.flatten().tolist() == pytest.approx(config["mean"])
    assert backbone.std.flatten().tolist() == pytest.approx(config["std"])
    images = torch.rand(3, 3, 40, 56)
    with torch.no_grad():
        out = backbone(images)
        want = reference(backbone.net, images, (160, 160), config["interpolation"])
    assert out.shape == (3, backbone.out_dim) and torch.allclose(out, want, atol=1e-5)
    assert "resized to 160×160" in backbone.describe() and "crop_pct 0.95" in backbone.describe()


def test_input_size_override_and_no_resizing():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    kept = TimmBackbone(NAME, input_size=0).eval()
    with torch.no_grad():
        assert kept.input_size is None
        assert torch.allclose(kept(images), kept.net((images - 0.5) / 0.5), atol=1e-6)
        assert TimmBackbone(NAME, input_size=48).eval()(images).shape == (2, kept.out_dim)
    with pytest.raises(ValueError, match="input_size must be a positive side"):
        TimmBackbone(NAME, input_size=-1)


def test_local_weights_load_and_the_classifier_is_ignored(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(NAME, pretrained=False, num_classes=7).eval()  # a checkpoint with its classifier
    torch.save(source.state_dict(), tmp_path / "w.pth")
    backbone = TimmBackbone(NAME, pretrained=str(tmp_path / "w.pth"), input_size=0).eval()
    source.reset_classifier(0)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(images), source((images - 0.5) / 0.5), atol=1e-6)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsMismatchError, match="other.pth does not fit"):
        TimmBackbone(NAME, pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(FileNotFoundError, match="pygml never downloads weights"):
        TimmBackbone(NAME, pretrained=str(tmp_path / "missing.pth"))


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ValueError, match="name 'test_resne' is not a timm model; similar names: .*test_resnet"):
        TimmBackbone("test_resne")


def test_trains_with_frozen_batchnorm_and_gradient_checkpointing():
    torch.manual_seed(0)
    backbone = TimmBackbone(NAME, grad_checkpointing=True, input_size=32)
    backbone.freeze_batchnorm()
    backbone.train()
    bn = next(m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    backbone(torch.rand(4, 3, 32, 32)).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert any(p.grad is not None for p in backbone.parameters())


def test_config_names_a_timm_backbone():
    from pygml.app.builders import build_backbone, build_method
    from pygml.app.config import ConfigError, load_config

    cfg = load_config(None, [f"model.backbone=timm:{NAME}", "model.input_size=32", "model.embedding_dim=8"])
    method = build_method(cfg, 3)
    assert isinstance(method.backbone, TimmBackbone) and method.backbone.input_size == (32, 32)
    loss, _ = method(torch.rand(6, 3, 24, 24), torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert method.embed(torch.rand(2, 3, 24, 24)).shape == (2, 8)
    with pytest.raises(ConfigError, match="config key 'model.backbone': name 'no_such_net' is not a timm model"):
        build_backbone(load_config(None, ["model.backbone=timm:no_such_net"]).model)
    with pytest.raises(ConfigError, match="'model.pooling' is 'max', but model.backbone=timm:test_resnet takes no"):
        build_backbone(load_config(None, [f"model.backbone=timm:{NAME}", "model.pooling=max"]).model)
    with pytest.raises(ConfigError, match="'model.input_size' is 16, but model.backbone=small_cnn takes no"):
        build_backbone(load_config(None, ["model.input_size=16"]).model)
    with pytest.raises(ConfigError, match="'model.input_size' is -2"):
        load_config(None, ["model.input_size=-2"])
