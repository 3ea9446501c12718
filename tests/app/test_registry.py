"""pygml.app.registry: one list of names per kind of part, the built-ins entered by pygml.app.builtins, and
what registering a method does to the config."""

from dataclasses import dataclass

import pytest
import torch

import pygml.app  # noqa: F401  (enters the built-in parts)
from pygml.app import register_backbone, register_dataset, register_loss, register_method
from pygml.app.config import ConfigError, config_class, load_config
from pygml.app.registry import BACKBONES, DATASETS, LOSSES, METHODS, Registry
from pygml.methods import BGFormer, Baseline, IntraBatch, ProxyGML
from pygml.models import SmallCNN


def test_builtins_are_registered():
    assert METHODS.names() == ["baseline", "bgformer", "intra_batch", "proxygml"]
    assert {e.name: e.obj for e in METHODS.entries()} == {"baseline": Baseline, "bgformer": BGFormer,
                                                          "intra_batch": IntraBatch, "proxygml": ProxyGML}
    assert all(e.options is not None for e in METHODS.entries())
    assert {"small_cnn", "resnet50", "mobilenet_v2", "bninception", "vit_s16"} <= set(BACKBONES.names())
    assert BACKBONES.get("small_cnn").obj is SmallCNN
    assert {"normalized_softmax", "classifier_ce", "contrastive_ce", "proxygml"} <= set(LOSSES.names())
    assert {"glyphs", "glyphs_matplotlib", "fashion_mnist", "digits", "cub", "cars", "sop", "inshop"} <= \
        set(DATASETS.names())
    assert (METHODS.key, BACKBONES.key, LOSSES.key, DATASETS.key) == ("method", "model.backbone", "loss.name",
                                                                     "data.name")


def test_register_get_contains_and_decorator():
    reg = Registry("widget", "widget.name")
    version = reg.version
    reg.register("a", int)

    @reg.register("b", options=dict, colour="red")
    def make_b():
        return "b"

    assert make_b() == "b", "the decorator returns what it decorates"
    assert reg.names() == ["a", "b"] and "a" in reg and "c" not in reg
    entry = reg.get("b")
    assert (entry.name, entry.obj, entry.options, entry.meta) == ("b", make_b, dict, {"colour": "red"})
    assert reg.version == version + 2
    assert "widget: a, b" in repr(reg)
    with pytest.raises(KeyError, match=r"widget\.name='c' is not a registered widget; registered: a, b"):
        reg.get("c")


def test_a_taken_name_needs_replace_and_names_are_identifiers():
    reg = Registry("widget", "widget.name")
    reg.register("a", int)
    reg.register("a", int)  # the same object again: nothing to replace
    with pytest.raises(ValueError, match="widget 'a' is registered already .*replace=True"):
        reg.register("a", float)
    reg.register("a", float, replace=True)
    assert reg.get("a").obj is float
    for bad in ("my-widget", "2d", "", None):
        with pytest.raises(ValueError, match="must be an identifier"):
            reg.register(bad, int)


@dataclass
class MineConfig:
    margin: float = 0.2
    scale: int = 3


def test_a_registered_method_gets_a_config_section(restore_registries):
    before = config_class()

    @register_method("mine", options=MineConfig)
    class Mine(Baseline):
        def __init__(self, backbone, num_classes, embedding_dim=128, margin=0.2, scale=3, **kw):
            super().__init__(backbone, num_classes, embedding_dim, **kw)
            self.margin, self.scale = margin, scale

    assert METHODS.get("mine").obj is Mine
    cls = config_class()
    assert cls is not before and "mine" in cls.__dataclass_fields__
    cfg = load_config(None, ["method=mine", "mine.margin=0.5"])
    assert cfg.mine == MineConfig(margin=0.5, scale=3)
    with pytest.raises(ConfigError, match=r"mine\.margn"):
        load_config(None, ["method=mine", "mine.margn=0.5"])


def test_the_registration_is_undone_for_the_next_test():
    assert "mine" not in METHODS and "mine" not in config_class().__dataclass_fields__
    with pytest.raises(ConfigError, match="config key 'method' is 'mine'"):
        load_config(None, ["method=mine"])


def test_a_method_named_like_a_fixed_section_is_refused(restore_registries):
    register_method("train", Baseline, options=MineConfig)
    with pytest.raises(ConfigError, match=r"methods \['train'\] are named like a fixed config section"):
        config_class()


def test_other_kinds_register_and_are_accepted_by_the_config(restore_registries):
    @register_backbone("tiny_cnn")
    def tiny_cnn(width: int = 2):
        return SmallCNN(width=width)

    @register_loss("my_loss")
    def my_loss(num_classes, embedding_dim, scale: float = 1.0):
        return torch.nn.Identity()

    @register_dataset("my_data")
    def my_data(data, train_transform, test_transform):
        raise NotImplementedError

    cfg = load_config(None, ["model.backbone=tiny_cnn", "loss.name=my_loss", "data.name=my_data"])
    assert (cfg.model.backbone, cfg.loss.name, cfg.data.name) == ("tiny_cnn", "my_loss", "my_data")
    assert BACKBONES.get("tiny_cnn").obj is tiny_cnn and LOSSES.get("my_loss").obj is my_loss
    assert DATASETS.get("my_data").obj is my_data
