"""Config → library objects: the one place where a run's config becomes datasets, a backbone, a loss, a
method, an optimiser and an evaluator. A constructor's ``ValueError`` comes out as a
:class:`~pygml.app.config.ConfigError` naming the config key it came from."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable, Optional

from torch import nn

from pygml.app import builtins  # noqa: F401  (enters the built-in parts in the registries)
from pygml.app.config import ConfigError
from pygml.app.pml import pml_loss
from pygml.app.registry import BACKBONES, DATASETS, LOSSES, METHODS
from pygml.app.reports import log
from pygml.data import ClassPassSampler, DatasetSplits, IntraBatchSampler, PKSampler, build_transforms, carve_validation
from pygml.evaluation import RetrievalEvaluator, empty_index
from pygml.models import TimmBackbone


def construct(section: str, fn: Callable[..., Any], *args: Any, keys: Optional[dict[str, str]] = None,
              **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a ``ValueError`` it raises becomes a :class:`ConfigError` naming the config key
    of the keyword argument its message names first (``section.<argument>``, or ``keys[argument]``), else
    ``section``."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        message = str(err)
        found = [(m.start(), k) for k in kwargs for m in [re.search(rf"\b{re.escape(k)}\b", message)] if m]
        name = min(found)[1] if found else None
        key = section if name is None else (keys or {}).get(name, f"{section}.{name}")
        raise ConfigError(f"config key '{key}': {message}") from None


def _accepted(fn: Callable[..., Any]) -> Optional[set[str]]:
    """The keyword names ``fn`` accepts, or ``None`` when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_options(section: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    accepted = _accepted(fn)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"config key '{section}.{unknown[0]}' is not an option of {section}; it accepts "
                          f"{', '.join(sorted(accepted))}")


def build_transforms_of(data: Any) -> tuple[Callable, Callable]:
    """The train and test transforms of a ``data`` section."""
    return construct("data", build_transforms, data.augmentation, data.image_size, resize_size=data.resize_size,
                     random_erasing=data.random_erasing, crop_scale=tuple(data.crop_scale),
                     interpolation=data.interpolation, erasing_scale=tuple(data.random_erasing_scale),
                     erasing_ratio=tuple(data.random_erasing_ratio), erasing_value=tuple(data.random_erasing_value))


def build_datasets(cfg: Any, seed: Optional[int] = None) -> DatasetSplits:
    """The splits of ``cfg.data`` with their transforms; a validation split carved from the training
    classes when ``data.val_fraction > 0`` (seeded by ``seed``, default ``train.seed``)."""
    train_tf, test_tf = build_transforms_of(cfg.data)
    splits = construct("data", DATASETS.get(cfg.data.name).obj, cfg.data, train_tf, test_tf)
    if cfg.data.val_fraction > 0:
        if splits.val is not None:
            raise ConfigError(f"dataset {cfg.data.name!r} has a validation split of its own; set data.val_fraction=0")
        fraction = cfg.data.val_fraction
        splits.train, splits.val = construct("data.val_fraction", carve_validation, splits.train, fraction,
                                             cfg.train.seed if seed is None else seed, test_tf)
    return splits


def data_record(cfg: Any, splits: DatasetSplits) -> dict[str, Any]:
    """What a run was trained and tested on: the dataset's name, root and each split's image and class
    counts (stored in checkpoints, checked when a checkpoint is evaluated)."""
    counts = {name: [len(ds), int(ds.num_classes)] for name in ("train", "query", "gallery", "val")
              if (ds := getattr(splits, name)) is not None}
    return {"name": cfg.data.name, "root": cfg.data.root, "splits": counts}


def describe_data(record: dict[str, Any]) -> str:
    """``data.name=glyphs (data.root=None: train 7,700 images / 72 classes, query ...)``."""
    parts = ", ".join(f"{k} {n:,} images / {c:,} classes" for k, (n, c) in record["splits"].items())
    return f"data.name={record['name']} (data.root={record['root']}: {parts})"


def check_data(recorded: Optional[dict[str, Any]], current: dict[str, Any], source: str) -> None:
    """A ``ValueError`` when the data built now is not the data ``source`` recorded (another dataset, or the
    same name with other images: a wrong ``data.root``)."""
    if recorded and (recorded["name"] != current["name"] or recorded["splits"] != current["splits"]):
        raise ValueError(f"{source} was trained and tested on {describe_data(recorded)}, but this config gives "
                         f"{describe_data(current)}; point data.name / data.root at the run's data")


#: ``model.backbone`` names of the form ``timm:<name>`` build :class:`~pygml.models.TimmBackbone` ``(name)``
TIMM_PREFIX = "timm:"


def build_backbone(model: Any) -> nn.Module:
    """The backbone of a ``model`` section (a registered name, or ``timm:<name>``), its weights loaded, its
    BatchNorm frozen if asked."""
    timm_name = model.backbone[len(TIMM_PREFIX):] if model.backbone.startswith(TIMM_PREFIX) else None
    factory = TimmBackbone if timm_name is not None else BACKBONES.get(model.backbone).obj
    values = {"pretrained": model.pretrained, "pooling": model.pooling,
              "grad_checkpointing": model.grad_checkpointing, "width": model.width, "input_size": model.input_size,
              "normalization": model.normalization}
    defaults = {f.name: f.default for f in dataclasses.fields(model)}
    accepted = _accepted(factory)
    kwargs = {k: v for k, v in values.items() if accepted is None or k in accepted}
    ignored = [k for k in values if k not in kwargs and values[k] != defaults[k]]
    if ignored:
        raise ConfigError(f"config key 'model.{ignored[0]}' is {values[ignored[0]]!r}, but model.backbone="
                          f"{model.backbone} takes no {ignored[0]}; leave it at its default")
    named = {"name": timm_name} if timm_name is not None else {}
    net = construct("model", factory, keys={"name": "model.backbone"}, **named, **kwargs)
    if isinstance(net, TimmBackbone):
        log.info(net.describe())
    if model.frozen_bn:
        net.freeze_batchnorm(train_affine=model.frozen_bn_affine)
    return net


def build_loss(loss: Any, miner: Any, num_classes: int, embedding_dim: int) -> Optional[nn.Module]:
    """The loss a ``loss`` section names, with the ``miner`` of a pytorch-metric-learning loss (``None``
    when it names none: the method keeps its own)."""
    if miner.name is not None and not (loss.name or "").startswith("pml:"):
        raise ConfigError(f"config key 'miner.name' is {miner.name!r}, but a miner needs a pytorch-metric-learning "
                          f"loss (loss.name=pml:<Class>); loss.name is {loss.name!r}")
    if loss.name is None:
        return None
    options = dict(loss.options)
    if loss.name.startswith("pml:"):
        return pml_loss(loss.name, num_classes, embedding_dim, options, miner.name, dict(miner.options))
    factory = LOSSES.get(loss.name).obj
    _check_options("loss.options", factory, options)
    return construct("loss.options", factory, num_classes, embedding_dim, **options)


def build_method(cfg: Any, num_classes: int, backbone: Optional[nn.Module] = None) -> nn.Module:
    """The method ``cfg.method`` for ``num_classes`` training classes, with its config section as keyword
    arguments, the model's embedding size and head initialisation, and the base loss of ``cfg.loss``."""
    if num_classes < 2:
        raise ConfigError(f"a method needs at least 2 training classes; data.name={cfg.data.name} gives {num_classes}")
    entry = METHODS.get(cfg.method)
    options = dataclasses.asdict(getattr(cfg, cfg.method)) if entry.options is not None else {}
    kwargs: dict[str, Any] = {"embedding_dim": cfg.model.embedding_dim, **options}
    if cfg.model.head_init is not None:
        kwargs["head_init"] = cfg.model.head_init
    loss = build_loss(cfg.loss, cfg.miner, num_classes, cfg.model.embedding_dim)
    if loss is not None:
        kwargs["loss"] = loss
    if cfg.loss.lr is not None:
        kwargs["loss_lr"] = cfg.loss.lr
    keys = {"embedding_dim": "model.embedding_dim", "head_init": "model.head_init", "loss": "loss.name",
            "loss_lr": "loss.lr"}
    accepted = _accepted(entry.obj)
    for key in ("head_init", "loss", "loss_lr"):
        if key in kwargs and accepted is not None and key not in accepted:
            raise ConfigError(f"config key '{keys[key]}' is set, but method {cfg.method} takes no {key}")
    backbone = backbone if backbone is not None else build_backbone(cfg.model)
    return construct(cfg.method, entry.obj, backbone, num_classes, keys=keys, **kwargs)


#: ``train.sampler`` → batch sampler class (all take labels, P, K, seed, rank, world_size)
SAMPLERS = {"pk": PKSampler, "intra_batch": IntraBatchSampler, "class_pass": ClassPassSampler}


def build_sampler(train: Any, labels: Any, rank: int = 0, world_size: int = 1) -> Any:
    """The batch sampler of a ``train`` section over the training ``labels``."""
    options = ({"redraw_pk": train.redraw_pk} if train.sampler == "intra_batch" else
               {"reshuffle": train.reshuffle_classes} if train.sampler == "class_pass" else {})
    return construct("train", SAMPLERS[train.sampler], labels, classes_per_batch=train.classes_per_batch,
                     samples_per_class=train.samples_per_class, seed=train.seed, rank=rank, world_size=world_size,
                     **options)


def check_recall_at(cfg: Any, splits: DatasetSplits) -> None:
    """``eval.recall_at`` against the galleries the run will search (checked before training, not after)."""
    galleries = {}
    if splits.query is not None:
        galleries["test"] = len(splits.gallery) if splits.gallery is not None else len(splits.query) - 1
    if splits.val is not None:
        galleries["validation"] = len(splits.val) - 1
    for split, size in galleries.items():
        if max(cfg.eval.recall_at) > size:
            raise ConfigError(f"config key 'eval.recall_at' asks for K={max(cfg.eval.recall_at)}, but the {split} "
                              f"gallery of data.name={cfg.data.name} has {size} images; use K <= {size}")


def build_evaluator(cfg: Any) -> RetrievalEvaluator:
    """The shared evaluator with a run's ``eval`` settings; a bad ``eval.search`` is an error here, before
    any training."""
    if cfg.eval.search != "exact":
        construct("eval.search", empty_index, cfg.eval.search, cfg.model.embedding_dim, cfg.eval.metric)
    return construct("eval", RetrievalEvaluator, recall_at=tuple(cfg.eval.recall_at), metric=cfg.eval.metric,
                     nmi=cfg.eval.nmi, search=cfg.eval.search, nprobe=cfg.eval.nprobe)


__all__ = ["SAMPLERS", "build_backbone", "build_datasets", "build_evaluator", "build_loss", "build_method", "build_sampler",
           "build_transforms_of", "check_data", "check_recall_at", "construct", "data_record", "describe_data"]
