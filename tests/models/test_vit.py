"""ViT-S/16 (BGFormer's backbone) through the optional timm extra: features, local weights, errors."""

import sys

import pytest
import torch

from pygml.models.vit import ViTSmall16


def test_vit_small_features_and_errors(tmp_path, monkeypatch):
    pytest.importorskip("timm")
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
    with pytest.raises(ImportError, match=r"pip install 'pygml\[vit\]'"):
        ViTSmall16()
