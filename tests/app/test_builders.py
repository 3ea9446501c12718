"""pygml.app.builders: config sections → library objects, and a constructor's ValueError → a ConfigError
that names the config key."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pygml.app.builders import (build_backbone, build_datasets, build_evaluator, build_loss, build_method,
                                build_sampler, build_transforms_of, construct)
from pygml.app.config import ConfigError, load_config
from pygml.data import ClassPassSampler, ClassSubset, DatasetSplits, Digits, Glyphs, IntraBatchSampler, PKSampler
from pygml.evaluation import RetrievalEvaluator
from pygml.losses import (ClassifierCELoss, ContrastiveCELoss, NormalizedSoftmaxLoss, PairwiseInfoNCELoss,
                          ProxyGMLLoss)
from pygml.methods import Baseline, BGFormer, IntraBatch, ProxyGML
from pygml.models import SmallCNN

SMALL = ["model.width=4", "model.embedding_dim=16"]


def cfg_of(*overrides):
    return load_config(None, [*SMALL, *overrides])


# ---------------------------------------------------------------- construct


def test_construct_names_the_keyword_argument_the_message_names_first():
    def make(size=1, heads=1):
        if size % heads:
            raise ValueError(f"heads={heads} must divide size={size}")
        return size // heads

    assert construct("sec", make, size=8, heads=2) == 4
    with pytest.raises(ConfigError, match=r"^config key 'sec\.heads': heads=3 must divide size=8$"):
        construct("sec", make, size=8, heads=3)
    with pytest.raises(ConfigError, match=r"^config key 'model\.width': heads=3"):
        construct("sec", make, size=8, heads=3, keys={"heads": "model.width"})

    def plain(x):
        raise ValueError("something is off")

    with pytest.raises(ConfigError, match=r"^config key 'sec': something is off$"):
        construct("sec", plain, x=1)

    def already(x):
        raise ConfigError("config key 'other.key' is wrong")

    with pytest.raises(ConfigError, match=r"^config key 'other\.key' is wrong$"):
        construct("sec", already, x=1)

    def other(x):
        raise TypeError("not a ValueError: x")

    with pytest.raises(TypeError, match="not a ValueError"):
        construct("sec", other, x=1)


# ---------------------------------------------------------------- methods


@pytest.mark.parametrize("method, cls", [("baseline", Baseline), ("intra_batch", IntraBatch),
                                         ("proxygml", ProxyGML)])
def test_build_method_passes_its_section(method, cls):
    section = {"baseline": ["baseline.temperature=0.2"],
               "intra_batch": ["intra_batch.heads=4", "intra_batch.temperature=0.3", "intra_batch.k=3"],
               "proxygml": ["proxygml.proxies_per_class=2", "proxygml.r=0.4", "proxygml.proxy_lr=0.02"]}[method]
    m = build_method(cfg_of(f"method={method}", *section), num_classes=5)
    assert type(m) is cls and isinstance(m.backbone, SmallCNN) and m.backbone.out_dim == 32
    assert m.head.fc.in_features == 32 and m.head.fc.out_features == 16
    if method == "baseline":
        assert isinstance(m.loss, NormalizedSoftmaxLoss) and m.loss.temperature == 0.2
        assert m.head.init == "kaiming"
    elif method == "intra_batch":
        assert isinstance(m.loss, ClassifierCELoss) and m.loss.temperature == 0.3 and m.graph.k == 3
        assert m.graph.mpn.layers[0].attn.heads == 4 and m.head.init == "default"
    else:
        assert isinstance(m.loss, ProxyGMLLoss) and (m.loss.proxies_per_class, m.loss.k) == (2, 4)
        assert {g["name"]: g for g in m.param_groups()}["loss"]["lr"] == 0.02


def test_build_method_bgformer_section():
    m = build_method(cfg_of("method=bgformer", "model.width=8", "bgformer.heads=4", "bgformer.k=5",
                            "bgformer.depth=1", "bgformer.alpha=0.4", "bgformer.block_lr=0.002"), num_classes=5)
    assert type(m) is BGFormer and len(m.graph.blocks) == 1 and m.graph.k == 5
    assert (m.backbone_weight, m.graph_weight) == (0.4, 0.6) and m.head.init == "orthogonal"
    assert {g["name"]: g for g in m.param_groups()}["graph"]["lr"] == 0.002


def test_build_method_model_and_loss_sections():
    m = build_method(cfg_of("model.head_init=orthogonal", "loss.name=contrastive_ce",
                            "loss.options.temperature=0.3"), num_classes=5)
    assert m.head.init == "orthogonal"
    assert isinstance(m.loss, ContrastiveCELoss) and m.loss.temperature == 0.3
    m = build_method(cfg_of("loss.lr=0.01"), num_classes=5)
    assert {g["name"]: g for g in m.param_groups()}["loss"]["lr"] == 0.01
    m = build_method(cfg_of("method=intra_batch", "intra_batch.heads=2", "loss.name=classifier_ce",
                            "loss.options={temperature: 0.5, label_smoothing: 0.2}"), num_classes=5)
    assert isinstance(m.loss, ClassifierCELoss) and (m.loss.temperature, m.loss.label_smoothing) == (0.5, 0.2)
    assert isinstance(m.graph_loss, ClassifierCELoss) and m.graph_loss is not m.loss
    backbone = SmallCNN(width=2)
    assert build_method(cfg_of(), num_classes=5, backbone=backbone).backbone is backbone


@pytest.mark.parametrize("overrides, key", [
    (["method=intra_batch", "intra_batch.heads=3"], "intra_batch.heads"),
    (["method=proxygml", "proxygml.r=1.5"], "proxygml.r"),
    (["method=proxygml", "proxygml.warmup_epochs=-1"], "proxygml.warmup_epochs"),
    (["method=proxygml", "proxygml.regularizer=dense"], "proxygml.regularizer"),
    (["method=bgformer", "model.width=8", "bgformer.heads=5"], "bgformer.heads"),
    (["method=bgformer", "model.width=8", "bgformer.heads=4", "bgformer.k=0"], "bgformer.k"),
    (["method=bgformer", "model.width=8", "bgformer.heads=4", "bgformer.graph=radius"], "bgformer.graph"),
    (["method=bgformer", "model.width=8", "bgformer.heads=4", "bgformer.alpha=2.0"], "bgformer.alpha"),
    (["loss.name=contrastive_ce", "loss.options.temperature=0"], "loss.options.temperature"),
    (["loss.name=contrastive_ce", "loss.options.margin=1"], "loss.options.margin"),
    (["method=proxygml", "loss.name=contrastive_ce"], "loss.name"),
    (["method=proxygml", "loss.lr=0.1"], "loss.lr"),
    (["miner.name=pml:MultiSimilarityMiner"], "miner.name"),
])
def test_constructor_errors_name_the_config_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        build_method(cfg_of(*overrides), num_classes=5)


def test_a_method_needs_two_classes():
    with pytest.raises(ConfigError, match="at least 2 training classes; data.name=glyphs gives 1"):
        build_method(cfg_of(), num_classes=1)


# ---------------------------------------------------------------- backbones and losses


def test_build_backbone_frozen_batchnorm_with_and_without_affine():
    for affine in (False, True):
        net = build_backbone(cfg_of("model.frozen_bn=true", f"model.frozen_bn_affine={str(affine).lower()}").model)
        bns = [m for m in net.train().modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(not m.training for m in bns)
        assert all(p.requires_grad == affine for m in bns for p in m.parameters())
    net = build_backbone(cfg_of("model.pooling=max", "model.grad_checkpointing=true").model)
    assert isinstance(net, SmallCNN) and net.pool.mode == "max" and net.grad_checkpointing and not net.frozen_bn


def test_build_backbone_refuses_keys_the_backbone_does_not_take(tmp_path):
    with pytest.raises(ConfigError, match="config key 'model.pretrained' is '/x.pth', but model.backbone=small_cnn "
                                          "takes no pretrained"):
        build_backbone(cfg_of("model.pretrained=/x.pth").model)
    with pytest.raises(ConfigError, match="config key 'model.pooling' is 'max', but model.backbone=vit_s16 takes no "
                                          "pooling"):
        build_backbone(load_config(None, ["model.backbone=vit_s16", "model.pooling=max"]).model)
    with pytest.raises(ConfigError, match="config key 'model.width' is 4, but model.backbone=resnet50 takes no width"):
        build_backbone(cfg_of("model.backbone=resnet50").model)
    missing = tmp_path / "none.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_backbone(load_config(None, ["model.backbone=resnet50", f"model.pretrained={missing}"]).model)


def test_build_loss():
    cfg = cfg_of()
    assert build_loss(cfg.loss, cfg.miner, 5, 16) is None  # the method keeps its own
    cfg = cfg_of("loss.name=proxygml", "loss.options={proxies_per_class: 2, r: 0.5}")
    loss = build_loss(cfg.loss, cfg.miner, 5, 16)
    assert isinstance(loss, ProxyGMLLoss) and loss.proxies.shape == (10, 16) and loss.k == 5
    cfg = cfg_of("loss.name=normalized_softmax", "loss.options.temperature=0.1")
    loss = build_loss(cfg.loss, cfg.miner, 7, 16)
    assert isinstance(loss, NormalizedSoftmaxLoss) and loss.weight.shape == (7, 16) and loss.temperature == 0.1
    cfg = cfg_of("loss.name=pairwise_infonce", "loss.options={temperature: 0.1, views: 4}")
    loss = build_loss(cfg.loss, cfg.miner, 7, 16)
    assert isinstance(loss, PairwiseInfoNCELoss) and loss.temperature == 0.1 and loss.views == 4


# ---------------------------------------------------------------- samplers

@pytest.mark.parametrize("name, cls", [("pk", PKSampler), ("intra_batch", IntraBatchSampler),
                                       ("class_pass", ClassPassSampler)])
def test_build_sampler_reads_the_train_section(name, cls):
    labels = np.repeat(np.arange(12), 7)
    cfg = cfg_of(f"train.sampler={name}", "train.classes_per_batch=4", "train.samples_per_class=3", "train.seed=5")
    sampler = build_sampler(cfg.train, labels, rank=1, world_size=2)
    assert type(sampler) is cls and (sampler.seed, sampler.rank, sampler.world_size) == (5, 1, 2)
    batches = list(sampler)
    assert len(batches) == sampler.num_batches > 0
    for batch in batches:  # every class of a batch with K images (the official sampler: K per chunk)
        _, counts = np.unique(labels[batch], return_counts=True)
        assert len(batch) == 12 and (counts % 3 == 0).all()


def test_build_sampler_redraw_pk_and_its_errors():
    labels = np.repeat(np.arange(30), 11)
    cfg = cfg_of("train.sampler=intra_batch", "train.redraw_pk=true", "train.classes_per_batch=6",
                 "train.samples_per_class=4")
    sampler = build_sampler(cfg.train, labels)
    lengths = set()
    for epoch in range(8):  # a new P×K every epoch, and with it the epoch's number of batches
        sampler.set_epoch(epoch)
        lengths.add(sampler.num_batches)
        assert all(len(b) == 24 for b in sampler)
    assert len(lengths) > 1
    with pytest.raises(ConfigError, match=r"config key 'train.redraw_pk' .*unless train.sampler=intra_batch"):
        cfg_of("train.redraw_pk=true")
    with pytest.raises(ConfigError, match=r"config key 'train.sampler'"):
        cfg_of("train.sampler=official")
    with pytest.raises(ConfigError, match=r"config key 'train.reshuffle_classes'"):
        cfg_of("train.reshuffle_classes=false")
    fixed = build_sampler(cfg_of("train.sampler=class_pass", "train.reshuffle_classes=false",
                                 "train.classes_per_batch=6").train, labels)
    orders = []
    for epoch in range(3):  # the same classes share a batch in every epoch
        fixed.set_epoch(epoch)
        orders.append([sorted(set(labels[b])) for b in fixed])
    assert orders[0] == orders[1] == orders[2]
    with pytest.raises(ConfigError, match=r"config key 'train.classes_per_batch'"):
        build_sampler(cfg_of("train.sampler=class_pass", "train.classes_per_batch=40").train, labels)


# ---------------------------------------------------------------- data and transforms


def test_build_transforms_of_reads_the_data_section():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    train, test = build_transforms_of(cfg_of("data.augmentation=imagenet", "data.image_size=24",
                                             "data.resize_size=30", "data.interpolation=bicubic").data)
    assert train(image).shape == test(image).shape == (3, 24, 24)
    resized = np.asarray(image.resize((36, 30), Image.BICUBIC), dtype=np.float32) / 255
    centre = torch.from_numpy(resized[3:27, 6:30]).permute(2, 0, 1)
    assert (test(image) - centre).abs().max() < 0.01
    for overrides, key in ((["data.augmentation=imagenet", "data.image_size=227", "data.resize_size=200"],
                            "data.resize_size"),
                           (["data.augmentation=imagenet", "data.crop_scale=[0.5,0.1]"], "data.crop_scale")):
        with pytest.raises(ConfigError, match=rf"config key '{key}'"):
            build_transforms_of(cfg_of(*overrides).data)


def test_random_erasing_parameters_come_from_the_data_section():
    train, _ = build_transforms_of(cfg_of("data.random_erasing=1.0", "data.random_erasing_scale=[0.3,0.35]",
                                          "data.random_erasing_ratio=[1.0,1.0]",
                                          "data.random_erasing_value=[0.25,0.5,0.75]").data)
    erase = train.transforms[-1]
    assert erase.scale == (0.3, 0.35) and erase.ratio == (1.0, 1.0) and erase.value == [0.25, 0.5, 0.75]
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    out = train(image)
    erased = (out > 0).all(dim=0)  # an opaque square of 30–35 % of the image, filled per channel
    assert 0.28 <= erased.float().mean() <= 0.37
    torch.testing.assert_close(out[:, erased].mean(dim=1), torch.tensor([0.25, 0.5, 0.75]))
    for key, value in (("random_erasing_scale", "[0.5,0.2]"), ("random_erasing_ratio", "[0,1]"),
                       ("random_erasing_value", "[0.1,0.2]")):
        with pytest.raises(ConfigError, match=rf"config key 'data.{key}'"):
            cfg_of(f"data.{key}={value}")


def test_build_datasets_digits_with_validation(tiny_config):
    splits = build_datasets(tiny_config("data.val_fraction=0.4"))
    assert isinstance(splits, DatasetSplits) and splits.gallery is None
    assert splits.train.num_classes == 3 and splits.val.num_classes == 2 and splits.query.num_classes == 5
    x, y = splits.val[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16)
    torch.manual_seed(0)
    a = splits.val[5][0]
    torch.manual_seed(1)
    assert torch.equal(a, splits.val[5][0]), "validation images get the deterministic test transform"
    torch.manual_seed(0)
    b = splits.train[5][0]
    torch.manual_seed(1)
    assert not torch.equal(b, splits.train[5][0]), "training images get the augmenting transform"


def test_the_validation_classes_are_seeded_by_train_seed(tiny_config):
    held_out = {s: tuple(build_datasets(tiny_config("data.val_fraction=0.4", f"train.seed={s}")).val.class_names)
                for s in range(6)}
    assert len(set(held_out.values())) > 1
    cfg = tiny_config("data.val_fraction=0.4", "train.seed=3")
    assert tuple(build_datasets(cfg, seed=5).val.class_names) == held_out[5]
    with pytest.raises(ConfigError, match="config key 'data.val_fraction'"):
        build_datasets(tiny_config("data.val_fraction=0.9"))


def test_build_datasets_glyphs_matplotlib(tmp_path):
    splits = build_datasets(load_config(None, ["data.name=glyphs_matplotlib", f"data.root={tmp_path}"]))
    assert isinstance(splits.train, Glyphs) and splits.train.variant == "matplotlib"
    assert splits.query.split == "test" and splits.val is None
    assert splits.train[0][0].shape == (3, 32, 32)
    assert list(tmp_path.glob("glyphs-matplotlib-*.npz"))


def test_build_datasets_digits_and_an_unregistered_name(tiny_config):
    cfg = tiny_config()
    splits = build_datasets(cfg)
    assert isinstance(splits.train, Digits) and isinstance(splits.query, Digits) and splits.val is None
    assert not isinstance(splits.train, ClassSubset)
    cfg.data.name = "mnist"  # past the config's own check
    with pytest.raises(KeyError, match="data.name='mnist' is not a registered dataset"):
        build_datasets(cfg)


def _cub_tree(base: Path) -> None:
    """A CUB-200-2011 tree with two images of each of classes 1, 2 (train) and 101, 102 (test)."""
    lines, labels = [], []
    for i, c in enumerate([1, 1, 2, 2, 101, 101, 102, 102], start=1):
        rel = f"{c:03d}.Bird/{i}.jpg"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (c, 0, 0)).save(base / "images" / rel)
        lines.append(f"{i} {rel}\n")
        labels.append(f"{i} {c}\n")
    (base / "images.txt").write_text("".join(lines))
    (base / "image_class_labels.txt").write_text("".join(labels))


def test_a_benchmark_root_defaults_to_data_slash_its_name(tmp_path, monkeypatch):
    _cub_tree(tmp_path / "data" / "cub" / "CUB_200_2011")
    monkeypatch.chdir(tmp_path)
    splits = build_datasets(load_config(None, ["data.name=cub", "data.check_counts=false"]))
    assert (len(splits.train), len(splits.query)) == (4, 4) and splits.gallery is None
    assert splits.train.class_names == ["001.Bird", "002.Bird"]
    with pytest.raises(ValueError, match="expected 5,864 images of 100 classes, found 4 images of 2 classes"):
        build_datasets(load_config(None, ["data.name=cub"]))
    other = tmp_path / "elsewhere"
    _cub_tree(other / "CUB_200_2011")
    splits = build_datasets(load_config(None, ["data.name=cub", "data.check_counts=false", f"data.root={other}"]))
    assert Path(splits.train.paths[0]).is_relative_to(other)


# ---------------------------------------------------------------- evaluator


def test_build_evaluator():
    evaluator = build_evaluator(cfg_of("eval.recall_at=[1,3]", "eval.metric=euclidean", "eval.nmi=false"))
    assert isinstance(evaluator, RetrievalEvaluator) and evaluator.recall_at == (1, 3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 4)).astype(np.float32), np.arange(30) % 3
    assert set(evaluator(x, y)) == {"recall@1", "recall@3", "precision_at_1", "r_precision",
                                    "mean_average_precision_at_r"}
    with pytest.raises(ConfigError, match=r"config key 'eval\.search': search='IVF4,PQ3' is not a faiss index"):
        build_evaluator(cfg_of("eval.search=IVF4,PQ3"))


def test_model_normalization_reaches_the_vit_and_is_refused_elsewhere():
    pytest.importorskip("timm")
    vit = ["model.backbone=vit_s16", "model.width=32"]
    net = build_backbone(cfg_of(*vit, "model.normalization=half").model)
    assert net.mean.flatten().tolist() == net.std.flatten().tolist() == [0.5, 0.5, 0.5]
    net = build_backbone(cfg_of(*vit).model)
    torch.testing.assert_close(net.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ConfigError, match=r"config key 'model.normalization'.*one of imagenet, half"):
        build_backbone(cfg_of(*vit, "model.normalization=inception").model)
    with pytest.raises(ConfigError, match=r"config key 'model.normalization' is 'half', but model.backbone=small_cnn"):
        build_backbone(cfg_of("model.normalization=half").model)
