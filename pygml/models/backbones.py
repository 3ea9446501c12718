"""Backbones: images → pooled features.

Every backbone takes RGB images with values in [0, 1], shape (B, 3, H, W), and returns pooled
features (B, ``out_dim``). The input normalisation a backbone's weights expect (ImageNet mean/std,
Caffe-style BGR×255 for BN-Inception) lives inside the backbone, so data pipelines never need to know
which backbone they feed.

Nothing downloads: ImageNet weights come from a local file (``pretrained``), read by
:mod:`pygml.models.weights`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint_sequential

from pygml.models.weights import load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the global poolings of :class:`GlobalPool`
POOLINGS = ("avg", "max", "avgmax")


class GlobalPool(nn.Module):
    """Global average, max, or average + max pooling of a (B, C, H, W) map to (B, C)."""

    def __init__(self, mode: str = "avg") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3))
        if self.mode == "max":
            return x.amax(dim=(2, 3))
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    def extra_repr(self) -> str:
        return self.mode


class Backbone(nn.Module):
    """Image → pooled features. Subclasses set ``out_dim`` and build ``self.stages`` (an ``nn.Sequential``
    of the feature extractor, whose output is a (B, C, H, W) map) and ``self.pool``."""

    out_dim: int

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale: float = 1.0, bgr: bool = False,
                 pooling: str = "avg", grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.scale = scale
        self.bgr = bgr
        self.pool = GlobalPool(pooling)
        self.grad_checkpointing = grad_checkpointing
        self.frozen_bn = False

    def freeze_batchnorm(self, train_affine: bool = False) -> None:
        """Keep every BatchNorm in eval mode (running statistics fixed); its affine parameters are fixed
        too unless ``train_affine`` (what ProxyGML's official "freeze BN" does: statistics fixed, scale
        and shift still trained)."""
        self.frozen_bn = True
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(train_affine)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"a backbone takes images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.bgr:
            images = images.flip(1)
        return (images * self.scale - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            segments = min(4, len(self.stages))
            return checkpoint_sequential(self.stages, segments, x, use_reentrant=False)
        return self.stages(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.features(self.preprocess(images)))


class SmallCNN(Backbone):
    """A four-stage CNN sized for 32×32 images on a CPU (≈0.3 M parameters at width 32)."""

    def __init__(self, width: int = 32, pooling: str = "avg", grad_checkpointing: bool = False) -> None:
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pooling=pooling,
                         grad_checkpointing=grad_checkpointing)

        def stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                      nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        w = width
        self.stages = nn.Sequential(stage(3, w, True), stage(w, 2 * w, True), stage(2 * w, 4 * w, True),
                                    stage(4 * w, 8 * w, False))
        self.out_dim = 8 * w


class ResNet50(Backbone):
    """torchvision ResNet-50 without its classifier; 2048-d pooled features."""

    def __init__(self, pretrained: Optional[str] = None, pooling: str = "avg", grad_checkpointing: bool = False) -> None:
        super().__init__(pooling=pooling, grad_checkpointing=grad_checkpointing)
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        if pretrained:
            load_weights(net, pretrained, "torchvision ResNet-50")
        self.stages = nn.Sequential(
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.out_dim = 2048


class MobileNetV2(Backbone):
    """torchvision MobileNetV2 without its classifier; 1280-d pooled features."""

    def __init__(self, pretrained: Optional[str] = None, pooling: str = "avg", grad_checkpointing: bool = False) -> None:
        super().__init__(pooling=pooling, grad_checkpointing=grad_checkpointing)
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None)
        if pretrained:
            load_weights(net, pretrained, "torchvision MobileNetV2")
        self.stages = net.features
        self.out_dim = 1280


__all__ = ["Backbone", "GlobalPool", "IMAGENET_MEAN", "IMAGENET_STD", "MobileNetV2", "POOLINGS", "ResNet50",
           "SmallCNN"]
