r"""BN-Inception (Inception v2 with batch normalisation; Ioffe & Szegedy, 2015), the backbone of ProxyGML.

Built with the layer names of the widely used Caffe-converted ImageNet checkpoint
(``bn_inception-52deb4733.pth`` of Cadene's ``pretrainedmodels``): ``conv1_7x7_s2``,
``conv1_7x7_s2_bn``, ..., ``inception_3a_1x1``, ..., ``inception_5b_pool_proj_bn``. Each such layer
sits in one stage of :attr:`BNInception.stages` (``stem``, ``inception_3a``, ..., ``inception_5b``),
so its key in :meth:`~torch.nn.Module.state_dict` is ``stages.<stage>.<checkpoint name>``, e.g.
``stages.inception_5b.inception_5b_pool_proj_bn.running_var``.

The weights expect Caffe-style input: BGR channel order, values in [0, 255], the per-channel mean
(104, 117, 128) subtracted and no division (std 1). :class:`BNInception` does this itself from the
[0, 1] RGB images every pygml backbone takes.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygml.models.backbones import Backbone
from pygml.models.weights import load_weights

#: BGR means of the Caffe model, on the 0-255 scale
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)

#: (name, input channels, 1x1, (3x3 reduce, 3x3), (double 3x3 reduce, double 3x3), pool, pool projection).
#: A block without 1x1 branch and projection is a grid reduction: its 3x3 convolutions and its max pool
#: have stride 2 and the pooled input is passed on as is.
BLOCKS = (
    ("inception_3a", 192, 64, (64, 64), (64, 96), "avg", 32),
    ("inception_3b", 256, 64, (64, 96), (64, 96), "avg", 64),
    ("inception_3c", 320, None, (128, 160), (64, 96), "max", None),
    ("inception_4a", 576, 224, (64, 96), (96, 128), "avg", 128),
    ("inception_4b", 576, 192, (96, 128), (96, 128), "avg", 128),
    ("inception_4c", 576, 160, (128, 160), (128, 160), "avg", 128),
    ("inception_4d", 608, 96, (128, 192), (160, 192), "avg", 128),
    ("inception_4e", 608, None, (128, 192), (192, 256), "max", None),
    ("inception_5a", 1056, 352, (192, 320), (160, 224), "avg", 128),
    ("inception_5b", 1024, 352, (192, 320), (192, 224), "max", 128),
)


class _ConvLayers(nn.Module):
    """Convolutions, each followed by its ``<name>_bn`` BatchNorm and a ReLU, registered under their
    checkpoint names."""

    def add_conv(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> str:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))
        return name

    def conv(self, name: str, x: Tensor) -> Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)), inplace=True)


class Stem(_ConvLayers):
    """conv1 7×7/2, max pool 3×3/2, conv2 1×1 and 3×3, max pool 3×3/2: (B, 3, H, W) → (B, 192, H/8, W/8)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_conv("conv1_7x7_s2", 3, 64, 7, stride=2)
        self.add_conv("conv2_3x3_reduce", 64, 64, 1)
        self.add_conv("conv2_3x3", 64, 192, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv("conv1_7x7_s2", x), 3, stride=2, ceil_mode=True)
        x = self.conv("conv2_3x3", self.conv("conv2_3x3_reduce", x))
        return F.max_pool2d(x, 3, stride=2, ceil_mode=True)


class InceptionBlock(_ConvLayers):
    """One BN-Inception block: the concatenation of a 1x1 branch, a 3x3 branch, a double-3x3 branch
    and a pooling branch (see :data:`BLOCKS`)."""

    def __init__(self, name: str, cin: int, c1x1: Optional[int], c3x3: tuple[int, int],
                 cdouble: tuple[int, int], pool: str, proj: Optional[int]) -> None:
        super().__init__()
        self.reduction = c1x1 is None
        self.pool = pool
        stride = 2 if self.reduction else 1
        self.branches: list[list[str]] = []
        if c1x1 is not None:
            self.branches.append([self.add_conv(f"{name}_1x1", cin, c1x1, 1)])
        self.branches.append([self.add_conv(f"{name}_3x3_reduce", cin, c3x3[0], 1),
                              self.add_conv(f"{name}_3x3", c3x3[0], c3x3[1], 3, stride)])
        self.branches.append([self.add_conv(f"{name}_double_3x3_reduce", cin, cdouble[0], 1),
                              self.add_conv(f"{name}_double_3x3_1", cdouble[0], cdouble[1], 3),
                              self.add_conv(f"{name}_double_3x3_2", cdouble[1], cdouble[1], 3, stride)])
        self.proj = None if proj is None else self.add_conv(f"{name}_pool_proj", cin, proj, 1)
        self.out_channels = (c1x1 or 0) + c3x3[1] + cdouble[1] + (cin if proj is None else proj)

    def _pool(self, x: Tensor) -> Tensor:
        if self.reduction:
            return F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        if self.pool == "max":
            return F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        return F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for branch in self.branches:
            h = x
            for name in branch:
                h = self.conv(name, h)
            outs.append(h)
        pooled = self._pool(x)
        outs.append(pooled if self.proj is None else self.conv(self.proj, pooled))
        return torch.cat(outs, dim=1)


def checkpoint_name(key: str) -> str:
    """The converted checkpoint's name of a :class:`BNInception` state-dict key
    (``stages.inception_3a.inception_3a_1x1.weight`` → ``inception_3a_1x1.weight``)."""
    return key.split(".", 2)[2]


class BNInception(Backbone):
    """BN-Inception features, globally pooled: images (B, 3, H, W) in [0, 1] RGB → (B, 1024).

    Args:
        pretrained: path of a local copy of the converted ImageNet checkpoint
            (``bn_inception-52deb4733.pth``), or ``None`` for random weights. Nothing is downloaded;
            a missing file is a :class:`FileNotFoundError` naming the path.
        pooling: ``avg`` (the papers'), ``max`` or ``avgmax``.
        grad_checkpointing: recompute the stages' activations in the backward pass.

    BatchNorm layers use PyTorch's default momentum (0.1); the converted model file sets 0.9,
    PyTorch's convention read as Caffe's (weight of the old statistic). It matters only where BN is
    trained, not with ``model.frozen_bn``.
    """

    def __init__(self, pretrained: Optional[str] = None, pooling: str = "avg",
                 grad_checkpointing: bool = False) -> None:
        super().__init__(mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0), scale=255.0, bgr=True, pooling=pooling,
                         grad_checkpointing=grad_checkpointing)
        stages: OrderedDict[str, nn.Module] = OrderedDict(stem=Stem())
        for name, *spec in BLOCKS:
            stages[name] = InceptionBlock(name, *spec)
        self.stages = nn.Sequential(stages)
        self.out_dim = stages["inception_5b"].out_channels
        if pretrained:
            self.load_checkpoint(pretrained)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load the converted ImageNet weights (or a state dict of this module) from a local file.

        Keys may be this module's or the checkpoint's names, with an optional ``module.`` prefix; the
        classifier (``last_linear.*``) is dropped; BatchNorm vectors stored as (1, C), as in the
        converted file, are flattened; ``num_batches_tracked`` may be absent. Any other missing,
        unexpected or misshapen key is a :class:`ValueError` naming the file.
        """
        own = self.state_dict()
        by_name = {checkpoint_name(k): k for k in own}

        def to_own(key: str, value: Tensor) -> tuple[str, Tensor]:
            target = key if key in own else by_name.get(key, key)
            if value.dim() == 2 and value.size(0) == 1 and target in own and own[target].dim() == 1:
                value = value.view(-1)
            return target, value

        load_weights(self, path, "BN-Inception (the converted bn_inception-52deb4733.pth)", key_map=to_own,
                     ignore_prefixes=("last_linear.",))


__all__ = ["BNInception", "CAFFE_BGR_MEAN", "checkpoint_name"]
