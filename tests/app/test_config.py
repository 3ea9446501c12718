from pathlib import Path

import pytest

from pygml.config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "optim.milestones=[2,5]", "model.pretrained=/tmp/w.pth"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.optim.milestones == [2, 5]
    assert cfg.model.pretrained == "/tmp/w.pth"


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epoch=3", "train.epoch"),
        ("train.epochs=three", "train.epochs"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("model.backbone=vgg", "model.backbone"),
        ("method=magic", "method"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


def test_yaml_base_chain_and_unknown_key_in_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  seed: 4\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.seed) == (7, 4)
    (tmp_path / "bad.yaml").write_text("base: base.yaml\ntrain:\n  sead: 4\n")
    with pytest.raises(ConfigError, match=r"train\.sead"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dict_round_trip_and_apply_overrides():
    cfg = load_config(None, ["method=proxygml", "proxygml.r=0.1"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    other = apply_overrides(cfg, ["data.root=/data/cub"])
    assert other.data.root == "/data/cub" and cfg.data.root is None


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_shipped_config_loads(path):
    cfg = load_config(ROOT / path)
    if not path.startswith("configs/datasets/"):
        assert cfg.method == Path(path).parent.name
