"""Every shipped YAML (pygml/configs, ``configs/`` of a clone) loads, holds the values its comments cite,
and builds its method (with the shipped backbone where it is cheap, a small CNN standing in for ResNet-50
and BN-Inception)."""

from pathlib import Path

import pytest

from pygml.app.builders import build_backbone, build_method
from pygml.app.config import PACKAGED_CONFIGS, SPACE_SUFFIX, load_config, shipped_configs
from pygml.data.glyphs import variant_manifest
from pygml.models import BNInception, ResNet50, SmallCNN

CONFIGS = [str(p.relative_to(PACKAGED_CONFIGS)) for p in shipped_configs()]
#: training classes of each dataset (what a method's classifier or proxies are sized by)
TRAIN_CLASSES = {"cub": 100, "cars": 98, "sop": 11318, "inshop": 3997, "fashion_mnist": 5,
                 "glyphs": sum(c["split"] == "train" for c in variant_manifest("full")["classes"])}
CHEAP_BACKBONES = {"small_cnn"}


def configs_of(method):
    return sorted(p for p in (PACKAGED_CONFIGS / method).glob("*.yaml") if not p.name.endswith(SPACE_SUFFIX))


def test_every_method_and_dataset_has_its_configs():
    for method in ("baseline", "intra_batch", "proxygml", "bgformer"):
        assert {p.stem for p in configs_of(method)} == {"cub", "cars", "sop", "inshop", "glyphs"}, method
    assert {p.stem for p in configs_of("datasets")} == {"cub", "cars", "sop", "inshop", "glyphs", "fashion_mnist"}


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_loads_and_builds_its_method(path):
    cfg = load_config(PACKAGED_CONFIGS / path)
    assert load_config(Path(path).with_suffix("")) == cfg  # the short name finds the same file
    if not path.startswith("datasets/"):
        assert cfg.method == Path(path).parent.name
        assert cfg.data.name == Path(path).stem
    num_classes = TRAIN_CLASSES[cfg.data.name]
    cheap = cfg.model.backbone in CHEAP_BACKBONES
    backbone = None if cheap else SmallCNN(width=8)
    method = build_method(cfg, num_classes, backbone=backbone)
    assert method.head.fc.out_features == cfg.model.embedding_dim
    if cheap:
        assert isinstance(method.backbone, SmallCNN) and method.backbone.out_dim == 8 * cfg.model.width
    assert sum(p.numel() for g in method.param_groups() for p in g["params"]) > 0


@pytest.mark.parametrize("name, cls", [("intra_batch", ResNet50), ("proxygml", BNInception)])
def test_the_paper_configs_model_section_builds_its_backbone(name, cls):
    cfg = load_config(PACKAGED_CONFIGS / name / "cub.yaml", ["model.pretrained=null"])
    net = build_backbone(cfg.model)
    assert isinstance(net, cls) and net.pool.mode == cfg.model.pooling
    if cfg.model.frozen_bn:  # statistics fixed; the affine parameters train as in the official --freeze_BN
        bn = [p.requires_grad for n, p in net.named_parameters() if "_bn." in n]
        assert net.frozen_bn and bn and all(r == cfg.model.frozen_bn_affine for r in bn)


@pytest.mark.parametrize("path", configs_of("intra_batch"), ids=lambda p: p.stem)
def test_intra_batch_configs(path):
    cfg = load_config(path)
    assert cfg.method == "intra_batch"
    assert cfg.optim.name == "radam"
    if path.stem != "glyphs":
        assert cfg.model.pooling == "max" and cfg.model.embedding_dim == 512 and cfg.train.epochs == 70
        assert cfg.optim.milestones == [31, 51] and not cfg.optim.cumulative and cfg.data.random_erasing == 0.5


def test_intra_batch_paper_table_values():
    table = {"cub": (6, 9, 1.5637e-4, 6.06e-6, 0.2, 1, 2), "cars": (10, 7, 3.6683e-4, 2.55e-9, 0.1111, 2, 8),
             "sop": (15, 6, 2.4725e-4, 2.8e-13, 0.6047, 1, 8), "inshop": (14, 4, 1.1266e-4, 1.06e-7, 0.1859, 1, 4)}
    for name, (p, k, lr, wd, t, layers, heads) in table.items():
        cfg = load_config(f"intra_batch/{name}")
        got = (cfg.train.classes_per_batch, cfg.train.samples_per_class, cfg.optim.lr, cfg.optim.weight_decay,
               cfg.intra_batch.temperature, cfg.intra_batch.layers, cfg.intra_batch.heads)
        assert got == (p, k, lr, wd, t, layers, heads), name


@pytest.mark.parametrize("path", configs_of("proxygml"), ids=lambda p: p.stem)
def test_proxygml_configs(path):
    cfg = load_config(path)
    assert cfg.method == "proxygml"
    if path.stem != "glyphs":
        assert cfg.model.backbone == "bninception" and cfg.model.embedding_dim == 512
        assert cfg.train.classes_per_batch * cfg.train.samples_per_class == 32
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay) == ("adam", 1e-4, 0.01, 1e-4)
        assert list(cfg.optim.milestones) == [20, 40] and cfg.train.epochs == 50


#: the BGFormer release's λ, α, block learning rate and epochs per dataset
RELEASE = {"cub": (0.3, 0.01, 8.5e-4, 50), "cars": (0.1, 0.07, 1e-3, 150), "sop": (0.7, 0.07, 1e-4, 30),
           "inshop": (0.3, 0.01, 1e-4, 50)}


@pytest.mark.parametrize("path", configs_of("bgformer"), ids=lambda p: p.stem)
def test_bgformer_configs(path):
    cfg = load_config(path)
    assert cfg.method == "bgformer"
    assert cfg.optim.name == "adamw"
    assert cfg.bgformer.temperature == 0.2
    if path.stem != "glyphs":  # the release's values (methods.md section 3, docs/fidelity.md)
        assert cfg.train.classes_per_batch * cfg.train.samples_per_class == 405 and cfg.train.sampler == "class_pass"
        assert cfg.model.embedding_dim == 128 and cfg.bgformer.k == (20 if path.stem == "inshop" else 30)
        mix, alpha, block_lr, epochs = RELEASE[path.stem]
        assert (cfg.bgformer.mix, cfg.bgformer.alpha, cfg.bgformer.block_lr, cfg.train.epochs) == \
            (mix, alpha, block_lr, epochs)
        assert (cfg.bgformer.depth, cfg.bgformer.heads, cfg.bgformer.variant, cfg.bgformer.graph) == \
            (2, 8, "v1", "attention_topk")
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.milestones, cfg.optim.clip_grad_norm) == \
            (3e-5, 5e-5, [], 3.0)
        assert (cfg.loss.name, cfg.model.head_init, cfg.data.crop_scale, cfg.data.interpolation) == \
            ("pairwise_infonce", "orthogonal", [0.2, 1.0], "bicubic")
    assert cfg.bgformer.k < cfg.train.classes_per_batch * cfg.train.samples_per_class
