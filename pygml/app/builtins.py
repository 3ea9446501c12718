"""The parts pygml ships, entered in the registries (:mod:`pygml.app.registry`): the one place that lists
the built-in methods, backbones, losses and datasets by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from pygml.app.config import BaselineConfig, BGFormerConfig, IntraBatchConfig, ProxyGMLConfig
from pygml.app.registry import BACKBONES, DATASETS, LOSSES, METHODS
from pygml.data import (BENCHMARKS, DatasetSplits, Digits, FASHION_MNIST_ROOT, FashionMNIST, Glyphs,
                        benchmark_splits, csv_splits, folder_splits)
from pygml.losses import ClassifierCELoss, ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss
from pygml.methods import BGFormer, Baseline, IntraBatch, ProxyGML
from pygml.models import BNInception, MobileNetV2, ResNet50, SmallCNN


def _vit_small_16(pretrained: Optional[str] = None, grad_checkpointing: bool = False) -> nn.Module:
    from pygml.models.vit import ViTSmall16  # timm is an optional extra: imported when asked for

    return ViTSmall16(pretrained, grad_checkpointing=grad_checkpointing)


METHODS.register("baseline", Baseline, options=BaselineConfig)
METHODS.register("intra_batch", IntraBatch, options=IntraBatchConfig)
METHODS.register("proxygml", ProxyGML, options=ProxyGMLConfig)
METHODS.register("bgformer", BGFormer, options=BGFormerConfig)

BACKBONES.register("small_cnn", SmallCNN)
BACKBONES.register("resnet50", ResNet50)
BACKBONES.register("mobilenet_v2", MobileNetV2)
BACKBONES.register("bninception", BNInception)
BACKBONES.register("vit_s16", _vit_small_16)


def _normalized_softmax(num_classes: int, embedding_dim: int, temperature: float = 0.05) -> nn.Module:
    return NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature)


def _classifier_ce(num_classes: int, embedding_dim: int, **options: Any) -> nn.Module:
    return ClassifierCELoss(num_classes, embedding_dim, **options)


def _contrastive_ce(num_classes: int, embedding_dim: int, temperature: float = 0.2) -> nn.Module:
    return ContrastiveCELoss(temperature)


def _proxygml(num_classes: int, embedding_dim: int, **options: Any) -> nn.Module:
    return ProxyGMLLoss(num_classes, embedding_dim, **options)


LOSSES.register("normalized_softmax", _normalized_softmax)
LOSSES.register("classifier_ce", _classifier_ce)
LOSSES.register("contrastive_ce", _contrastive_ce)
LOSSES.register("proxygml", _proxygml)


def _root(data: Any) -> Path:
    """``data.root``, or ``./data/<name>`` when it is not set."""
    return Path(data.root) if data.root is not None else Path("data") / data.name


def _glyphs(data: Any, train_transform: Any, test_transform: Any, variant: str = "full") -> DatasetSplits:
    kw = dict(variant=variant, strict=data.strict_fonts)
    return DatasetSplits(train=Glyphs(_root(data), "train", train_transform, **kw),
                         query=Glyphs(_root(data), "test", test_transform, **kw))


def _glyphs_matplotlib(data: Any, train_transform: Any, test_transform: Any) -> DatasetSplits:
    return _glyphs(data, train_transform, test_transform, variant="matplotlib")


def _fashion_mnist(data: Any, train_transform: Any, test_transform: Any) -> DatasetSplits:
    root = data.root if data.root is not None else FASHION_MNIST_ROOT
    return DatasetSplits(train=FashionMNIST(root, "train", train_transform),
                         query=FashionMNIST(root, "test", test_transform))


def _digits(data: Any, train_transform: Any, test_transform: Any) -> DatasetSplits:
    return DatasetSplits(train=Digits("train", train_transform), query=Digits("test", test_transform))


def _benchmark(name: str):
    def build(data: Any, train_transform: Any, test_transform: Any) -> DatasetSplits:
        return benchmark_splits(name, _root(data), train_transform, test_transform, check_counts=data.check_counts,
                                skip_corrupt=data.skip_corrupt)

    build.__name__ = f"_{name}"
    return build


DATASETS.register("glyphs", _glyphs)
DATASETS.register("glyphs_matplotlib", _glyphs_matplotlib)
DATASETS.register("fashion_mnist", _fashion_mnist)
DATASETS.register("digits", _digits)
for _name in BENCHMARKS:
    DATASETS.register(_name, _benchmark(_name))


def _own_images(read):
    def build(data: Any, train_transform: Any, test_transform: Any) -> DatasetSplits:
        return read(_root(data), train_transform, test_transform, test_fraction=data.test_fraction,
                    seed=data.split_seed, skip_corrupt=data.skip_corrupt)

    build.__name__ = f"_{read.__name__}"
    return build


DATASETS.register("folder", _own_images(folder_splits))
DATASETS.register("csv", _own_images(csv_splits))
