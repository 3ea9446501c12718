"""pygml.app.config: defaults, YAML files with bases, dotted overrides, and errors that name the key."""

import dataclasses
import time

import pytest

from pygml.app.config import (BGFormerConfig, Config, ConfigError, IntraBatchConfig, ProxyGMLConfig,
                              apply_overrides, config_class, config_from_dict, config_to_dict, config_to_yaml,
                              load_config)
from pygml.app.engine import default_out_dir
from pygml.app.registry import METHODS


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "optim.milestones=[2,5]", "model.pretrained=/tmp/w.pth"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.optim.milestones == [2, 5]
    assert cfg.model.pretrained == "/tmp/w.pth"
    assert issubclass(ConfigError, ValueError)


def test_new_keys_and_their_defaults():
    cfg = load_config(None)
    assert cfg.train.out_dir is None
    assert cfg.model.head_init is None and cfg.model.frozen_bn_affine is False
    assert cfg.optim.decoupled_weight_decay is False
    assert cfg.data.crop_scale == [0.08, 1.0] and cfg.data.interpolation == "bilinear"
    assert (cfg.loss.name, cfg.loss.lr, cfg.loss.options) == (None, None, {})
    assert (cfg.miner.name, cfg.miner.options) == (None, {})
    assert cfg.bgformer == BGFormerConfig()
    assert (cfg.bgformer.depth, cfg.bgformer.mix, cfg.bgformer.alpha) == (2, 0.3, 0.01)
    assert (cfg.bgformer.variant, cfg.bgformer.graph) == ("v1", "attention_topk")
    assert not hasattr(cfg.bgformer, "ssa")
    assert cfg.intra_batch == IntraBatchConfig() and cfg.proxygml == ProxyGMLConfig()
    cfg = load_config(None, ["loss.name=normalized_softmax", "loss.lr=0.01", "loss.options.temperature=0.1",
                             "miner.name=pml:MultiSimilarityMiner", "miner.options={epsilon: 0.2}",
                             "data.crop_scale=[0.2,1.0]", "data.interpolation=bicubic", "model.head_init=orthogonal",
                             "bgformer.variant=v2", "bgformer.graph=feature_knn"])
    assert (cfg.loss.name, cfg.loss.lr, cfg.loss.options) == ("normalized_softmax", 0.01, {"temperature": 0.1})
    assert (cfg.miner.name, cfg.miner.options) == ("pml:MultiSimilarityMiner", {"epsilon": 0.2})
    assert cfg.data.crop_scale == [0.2, 1.0] and cfg.data.interpolation == "bicubic"
    assert cfg.model.head_init == "orthogonal"
    assert (cfg.bgformer.variant, cfg.bgformer.graph) == ("v2", "feature_knn")


def test_one_section_per_registered_method():
    cls = config_class()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    fixed = {f.name for f in dataclasses.fields(Config)}
    assert fixed == {"method", "data", "model", "optim", "train", "eval", "loss", "miner"}
    assert set(fields) - fixed == {e.name for e in METHODS.entries() if e.options is not None}
    assert {"baseline", "intra_batch", "proxygml", "bgformer"} <= set(fields)
    assert issubclass(cls, Config) and config_class() is cls  # rebuilt only when a method registers


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epoch=3", "train.epoch"),
        ("train.epochs=three", "train.epochs"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("model.backbone=vgg", "model.backbone"),
        ("method=magic", "method"),
        ("data.name=mnist", "data.name"),
        ("loss.name=nosuch", "loss.name"),
        ("bgformer.ssa=learned", "bgformer.ssa"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.max_steps_per_epoch=-3", "train.max_steps_per_epoch"),
        ("train.amp=yes", "train.amp"),
        ("train.amp=fp8", "train.amp"),
        ("train.nonfinite=ignore", "train.nonfinite"),
        ("train.classes_per_batch=0", "train.classes_per_batch"),
        ("train.eval_every=0", "train.eval_every"),
        ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps"),
        ("optim.name=lbfgs", "optim.name"),
        ("optim.lr=0", "optim.lr"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay"),
        ("optim.milestones=[0,5]", "optim.milestones"),
        ("model.head_init=xavier", "model.head_init"),
        ("model.pooling=sum", "model.pooling"),
        ("model.embedding_dim=0", "model.embedding_dim"),
        ("data.augmentation=autoaugment", "data.augmentation"),
        ("data.interpolation=nearest", "data.interpolation"),
        ("data.image_size=0", "data.image_size"),
        ("data.random_erasing=1.5", "data.random_erasing"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("eval.recall_at=[0]", "eval.recall_at"),
        ("eval.metric=manhattan", "eval.metric"),
        ("eval.nprobe=0", "eval.nprobe"),
    ],
)
def test_range_checks_run_at_load(override, named):
    with pytest.raises(ConfigError, match=rf"config key '{named}' is .*; expected"):
        load_config(None, [override])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


def test_yaml_base_chain_and_unknown_key_in_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  seed: 4\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.seed) == (7, 4)
    (tmp_path / "two.yaml").write_text("base: [base.yaml, child.yaml]\nmethod: proxygml\n")
    cfg = load_config(tmp_path / "two.yaml", ["train.seed=9"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.method) == (7, 9, "proxygml")
    (tmp_path / "bad.yaml").write_text("base: base.yaml\ntrain:\n  sead: 4\n")
    with pytest.raises(ConfigError, match=r"train\.sead"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "range.yaml").write_text("train:\n  epochs: -1\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(tmp_path / "range.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dict_and_yaml_round_trip_and_apply_overrides(tmp_path):
    cfg = load_config(None, ["method=proxygml", "proxygml.r=0.1", "loss.options.margin=0.2"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    (tmp_path / "resolved.yaml").write_text(config_to_yaml(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg
    other = apply_overrides(cfg, ["data.root=/data/cub"])
    assert other.data.root == "/data/cub" and cfg.data.root is None
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        apply_overrides(cfg, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="stored in a checkpoint"):
        config_from_dict({**config_to_dict(cfg), "train": {"epochz": 1}})


def test_default_out_dir_is_a_run_directory_of_its_own():
    cfg = load_config(None, ["method=intra_batch", "data.name=digits"])
    when = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert default_out_dir(cfg, when) == "runs/intra_batch-digits-20260304-050607"
    assert default_out_dir(cfg, when + 1) != default_out_dir(cfg, when)
