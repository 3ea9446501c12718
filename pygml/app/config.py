"""Typed run configuration: dataclasses filled from YAML and dotted command-line overrides.

A run is described by one config object. ``load_config`` merges, in order, the dataclass defaults, a
YAML file and ``key.sub=value`` overrides with OmegaConf's structured configs, so an unknown key or a
value of the wrong type is an error that names the key.

The sections ``data``, ``model``, ``optim``, ``train``, ``eval``, ``loss`` and ``miner`` are fixed; each
registered method adds a section of its own named after it (``intra_batch``, ``proxygml``, ``bgformer``,
``baseline``, or a user method registered with ``options=``), holding its keyword arguments; ``method``
selects which one is used. The names the config accepts for methods, backbones, datasets and losses are
the registries' (:mod:`pygml.app.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pygml.app.optim import OPTIMIZERS
from pygml.app.registry import BACKBONES, DATASETS, LOSSES, METHODS
from pygml.data.transforms import AUGMENTATIONS, INTERPOLATIONS
from pygml.evaluation import METRICS
from pygml.models.backbones import POOLINGS
from pygml.models.heads import INITS


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


def _require(section: str, checks: list[tuple[bool, str, str]], obj: Any) -> None:
    """Raise a :class:`ConfigError` for the first failed ``(ok, key, what is expected)``."""
    for ok, key, expected in checks:
        if not ok:
            value = getattr(obj, key)
            note = (" (YAML reads yes/no/on/off/true/false as a boolean: write one of the names)"
                    if value in ("True", "False") else "")
            raise ConfigError(f"config key '{section}.{key}' is {value!r}{note}; expected {expected}")


@dataclass
class DataConfig:
    #: a registered dataset: glyphs | glyphs_matplotlib | fashion_mnist | digits | cub | cars | sop | inshop |
    #: folder (your images, one folder per class) | csv (your images, listed by a manifest) | ...
    name: str = "glyphs"
    #: where the dataset lives (benchmarks, folder), is cached (glyphs), or the manifest file (csv: a CSV or
    #: parquet file path,label[,split]); ``null`` = ``./data/<name>``
    root: Optional[str] = None
    #: train-time augmentation: ``small`` (grey images, light affine jitter) or ``imagenet``
    #: (RandomResizedCrop + flip [+ RandomErasing], the papers' recipes)
    augmentation: str = "small"
    #: side of the square images the network sees
    image_size: int = 32
    #: test-time resize before the centre crop (``imagenet`` augmentation only)
    resize_size: int = 256
    #: RandomErasing probability (train time)
    random_erasing: float = 0.0
    #: RandomErasing: range of the erased area (fraction of the image), of its aspect ratio, and the value it is
    #: filled with on [0, 1] images (1 value, or 3: one per channel)
    random_erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    random_erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    random_erasing_value: list[float] = field(default_factory=lambda: [0.0])
    #: area range of RandomResizedCrop (``imagenet`` augmentation)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    #: resizing filter: bilinear | bicubic
    interpolation: str = "bilinear"
    #: skip unreadable images (counted and reported) instead of failing
    skip_corrupt: bool = False
    #: glyphs: a font missing or differing from the manifest is an error (``false``: build without it)
    strict_fonts: bool = True
    #: check the benchmarks' image counts against the published ones (``false`` for a subset)
    check_counts: bool = True
    #: fraction of the *training classes* held out as a validation split (0 = none)
    val_fraction: float = 0.0
    #: folder / csv without a test split: fraction of the classes held out as test classes
    test_fraction: float = 0.5
    #: folder / csv without a test split: seed of that split of the classes (numpy ``default_rng``); separate
    #: from ``train.seed``, so runs of several training seeds test on the same classes
    split_seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require("data", [
            (self.augmentation in AUGMENTATIONS, "augmentation", f"one of {', '.join(AUGMENTATIONS)}"),
            (self.interpolation in INTERPOLATIONS, "interpolation", f"one of {', '.join(INTERPOLATIONS)}"),
            (self.image_size >= 1, "image_size", "a positive number of pixels"),
            (0.0 <= self.random_erasing <= 1.0, "random_erasing", "a probability in [0, 1]"),
            (len(self.random_erasing_scale) == 2 and 0 < self.random_erasing_scale[0] <= self.random_erasing_scale[1] < 1,
             "random_erasing_scale", "[low, high] with 0 < low <= high < 1"),
            (len(self.random_erasing_ratio) == 2 and 0 < self.random_erasing_ratio[0] <= self.random_erasing_ratio[1],
             "random_erasing_ratio", "[low, high] with 0 < low <= high"),
            (len(self.random_erasing_value) in (1, 3), "random_erasing_value", "1 value, or 3 (one per channel)"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)"),
            (0.0 < self.test_fraction < 1.0, "test_fraction", "a fraction in (0, 1)"),
            (self.num_workers >= 0, "num_workers", "a number of worker processes >= 0"),
        ], self)


@dataclass
class ModelConfig:
    #: a registered backbone: small_cnn | resnet50 | mobilenet_v2 | bninception | vit_s16 | ..., or any timm model
    #: as ``timm:<name>`` (e.g. ``timm:convnext_tiny``; needs the timm extra)
    backbone: str = "small_cnn"
    #: path to a local checkpoint of ImageNet weights; ``null`` = random init
    pretrained: Optional[str] = None
    #: global pooling of the backbone's feature map: avg | max | avgmax
    pooling: str = "avg"
    embedding_dim: int = 128
    #: initialisation of the embedding layer: kaiming | default | orthogonal; ``null`` = the method's own
    head_init: Optional[str] = None
    #: keep every BatchNorm of the backbone in eval mode (running statistics fixed)
    frozen_bn: bool = False
    #: with ``frozen_bn``: still train BatchNorm's affine scale and shift (ProxyGML's official "freeze BN")
    frozen_bn_affine: bool = False
    #: recompute backbone activations in the backward pass to save memory
    grad_checkpointing: bool = False
    #: width of the small CNN (channels of its first stage)
    width: int = 32
    #: ``timm:<name>`` backbones: the side the backbone resizes its images to; ``null`` = the input size timm
    #: declares for the model, 0 = no resizing (models that take any size)
    input_size: Optional[int] = None
    #: input normalisation of backbones that offer a choice (vit_s16: imagenet | half, mean = std = 0.5 as
    #: timm's ViT weights and the BGFormer release); ``null`` = the backbone's own
    normalization: Optional[str] = None

    def __post_init__(self) -> None:
        _require("model", [
            (self.pooling in POOLINGS, "pooling", f"one of {', '.join(POOLINGS)}"),
            (self.head_init is None or self.head_init in INITS, "head_init", f"null or one of {', '.join(INITS)}"),
            (self.embedding_dim >= 1, "embedding_dim", "a positive size"),
            (self.width >= 1, "width", "a positive number of channels"),
            (self.input_size is None or self.input_size >= 0, "input_size", "null (timm's), 0 (no resizing) or a side"),
        ], self)


@dataclass
class OptimConfig:
    #: adam | adamw | radam | sgd
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: RAdam: weight decay decoupled from the gradient (AdamW-style), as the Intra-Batch official optimiser
    decoupled_weight_decay: bool = False
    eps: float = 1e-8
    momentum: float = 0.9
    #: epochs (1-based, as in the papers) from which the lr is multiplied by ``gamma``
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    #: ``true``: lr0·gamma^(milestones passed); ``false``: lr0·gamma after the first milestone
    #: (Intra-Batch's "lr set to lr0/10 at epochs 31 and 51")
    cumulative: bool = True
    #: clip the global gradient norm (0 = off)
    clip_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        _require("optim", [
            (self.name in OPTIMIZERS, "name", f"one of {', '.join(OPTIMIZERS)}"),
            (self.lr > 0, "lr", "a positive learning rate"),
            (self.weight_decay >= 0, "weight_decay", "a value >= 0"),
            (self.clip_grad_norm >= 0, "clip_grad_norm", "a norm >= 0 (0 = off)"),
            (all(m >= 1 for m in self.milestones), "milestones", "1-based epochs"),
        ], self)


#: mixed precision settings of ``train.amp`` and what to do with a non-finite loss (``train.nonfinite``)
AMP_MODES = ("off", "fp16", "bf16")
NONFINITE_POLICIES = ("raise", "skip")
#: ``train.sampler``: the batch samplers of :mod:`pygml.data`
SAMPLER_NAMES = ("pk", "intra_batch", "class_pass")
#: ``train.resume`` (``--resume``): start afresh, continue the run directory's checkpoint when there is one,
#: or continue one that must be there (pygml.app.rundir)
RESUME_MODES = ("never", "auto", "must")


@dataclass
class TrainConfig:
    epochs: int = 10
    #: P classes per batch
    classes_per_batch: int = 16
    #: K samples per class
    samples_per_class: int = 4
    #: how batches are drawn: pk (P classes × K images, each image once per epoch where it can be) |
    #: intra_batch (the Intra-Batch code's sampler: classes padded to chunks of K, more batches per epoch) |
    #: class_pass (the BGFormer release: one pass over the classes per epoch, K images each)
    sampler: str = "pk"
    #: intra_batch sampler: draw a new P×K factorisation of the batch size every epoch (its CUB config)
    redraw_pk: bool = False
    #: class_pass sampler: a new class order every epoch (``false``: the BGFormer release's one order for all epochs)
    reshuffle_classes: bool = True
    #: stop each epoch after this many batches (0 = the sampler's full epoch)
    max_steps_per_epoch: int = 0
    seed: int = 0
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: mixed precision on CUDA: off | fp16 | bf16
    amp: str = "off"
    #: where the run is written; ``null`` = ``runs/<method>-<dataset>-<date>-<time>``
    out_dir: Optional[str] = None
    #: never | auto | must: whether the run continues ``<out_dir>/checkpoint.pt`` (``--resume`` overrides it)
    resume: str = "never"
    #: evaluate every N epochs (and always after the last)
    eval_every: int = 1
    #: also evaluate the test split at each evaluation (for the curves; never used to select a model)
    eval_test_every_epoch: bool = True
    #: also write the checkpoint every N optimiser steps (0 = only at the end of each epoch)
    checkpoint_every_steps: int = 0
    #: stop (after checkpointing) once this many optimiser steps were taken in all (0 = never)
    stop_after_steps: int = 0
    #: what to do with a NaN or inf loss: raise | skip
    nonfinite: str = "raise"
    #: torch.use_deterministic_algorithms(True)
    deterministic: bool = False
    #: all-gather embeddings across ranks so a graph spans the global batch (DDP)
    cross_rank_graph: bool = False
    #: BatchNorm statistics over the global batch under DDP (every trainable BatchNorm becomes a
    #: SyncBatchNorm); ``false`` = each rank normalises with its own batch's statistics
    sync_batchnorm: bool = False
    #: torch.compile the backbone (batch graphs are built outside the compiled region)
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _require("train", [
            (self.epochs >= 1, "epochs", "a positive number of epochs"),
            (self.classes_per_batch >= 1, "classes_per_batch", "a positive number of classes"),
            (self.samples_per_class >= 1, "samples_per_class", "a positive number of images"),
            (self.sampler in SAMPLER_NAMES, "sampler", f"one of {', '.join(SAMPLER_NAMES)}"),
            (not self.redraw_pk or self.sampler == "intra_batch", "redraw_pk", "false unless train.sampler=intra_batch"),
            (self.reshuffle_classes or self.sampler == "class_pass", "reshuffle_classes",
             "true unless train.sampler=class_pass"),
            (self.max_steps_per_epoch >= 0, "max_steps_per_epoch", "a number of batches >= 0 (0 = full epoch)"),
            (self.amp in AMP_MODES, "amp", f"one of {', '.join(AMP_MODES)}"),
            (self.nonfinite in NONFINITE_POLICIES, "nonfinite", f"one of {', '.join(NONFINITE_POLICIES)}"),
            (self.resume in RESUME_MODES, "resume", f"one of {', '.join(RESUME_MODES)}"),
            (self.eval_every >= 1, "eval_every", "a positive number of epochs"),
            (self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "a number of steps >= 0 (0 = off)"),
            (self.stop_after_steps >= 0, "stop_after_steps", "a number of steps >= 0 (0 = never)"),
        ], self)


@dataclass
class EvalConfig:
    recall_at: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    #: cosine | euclidean
    metric: str = "cosine"
    nmi: bool = True
    batch_size: int = 256
    #: ``exact`` (exhaustive ranking), or a faiss index factory string for approximate search of large
    #: galleries, e.g. ``IVF4096,Flat`` or the compressed ``IVF4096,PQ32`` (pygml.evaluation.build_index)
    search: str = "exact"
    #: inverted lists an IVF index visits per query
    nprobe: int = 32

    def __post_init__(self) -> None:
        _require("eval", [
            (len(self.recall_at) > 0 and all(k >= 1 for k in self.recall_at), "recall_at",
             "a list of positive K, e.g. [1, 2, 4, 8]"),
            (self.metric in METRICS, "metric", f"one of {', '.join(METRICS)}"),
            (self.batch_size >= 1, "batch_size", "a positive batch size"),
            (self.nprobe >= 1, "nprobe", "a positive number of inverted lists"),
        ], self)


@dataclass
class LossConfig:
    """The base loss; ``name: null`` keeps the method's own (the paper's)."""

    #: a registered loss (normalized_softmax, classifier_ce, contrastive_ce, proxygml, ...) or
    #: ``pml:<ClassName>`` for any loss of pytorch-metric-learning
    name: Optional[str] = None
    #: learning rate of the loss's parameters (proxies, class weights); ``null`` = the optimiser's
    lr: Optional[float] = None
    #: keyword arguments of the loss
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MinerConfig:
    """A pytorch-metric-learning miner for a ``pml:`` loss; ``name: null`` = none."""

    #: ``pml:<ClassName>`` of a pytorch-metric-learning miner, e.g. ``pml:MultiSimilarityMiner``
    name: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineConfig:
    """Normalized softmax (cosine classifier) with temperature: the non-graph reference."""

    temperature: float = 0.05


@dataclass
class IntraBatchConfig:
    """Seidenschwarz et al., ICML 2021 (methods.md section 1)."""

    #: softmax temperature T of both cross-entropies
    temperature: float = 0.2
    label_smoothing: float = 0.1
    layers: int = 1
    heads: int = 2
    dropout: float = 0.1
    #: train the MPN and add its loss (the paper); ``false`` = backbone loss only (ablation)
    mpn: bool = True
    #: ``null`` = the paper's fully connected batch graph with self loops; an int = visual kNN graph
    k: Optional[int] = None
    zero_logit: bool = True
    #: classify the concatenation of every MPN layer's output (the released Cars196 config); ``false`` = last layer
    concat: bool = False


@dataclass
class ProxyGMLConfig:
    """Zhu et al., NeurIPS 2020 (methods.md section 2)."""

    proxies_per_class: int = 12
    r: float = 0.05
    lambda_reg: float = 0.3
    proxy_lr: Optional[float] = 0.03
    #: keep each sample's own proxies (S_pos)
    use_spos: bool = True
    #: mask classes with no kept proxy out of the softmax
    use_mask: bool = True
    #: train with the proxy regulariser L_p
    use_reg: bool = True
    #: ``false`` = plain proxy softmax over every proxy (no subgraph)
    subgraph: bool = True
    #: full | chunked | batch   (memory of the regulariser, see ProxyGMLLoss)
    regularizer: str = "full"
    #: rows per chunk of the ``chunked`` regulariser; ``null`` = as many as make 2**24 logits
    chunk_size: Optional[int] = None
    #: epochs in which the backbone is frozen: only the embedding layer and proxies train
    warmup_epochs: int = 1
    #: the 0-based epoch the warm-up starts at: 0 (the paper: before any fine-tuning) or 1 (the official code)
    warmup_start_epoch: int = 0


@dataclass
class BGFormerConfig:
    """Wang et al., TMM 2023 (methods.md section 3)."""

    depth: int = 2
    heads: int = 6
    #: K: visual neighbours per head (attention_topk) or of the kNN graph (feature_knn)
    k: int = 30
    #: λ: share of the visual attention against the semantic propagation
    mix: float = 0.3
    #: α: share of the backbone rows in the loss (1 = blocks off)
    alpha: float = 0.01
    #: τ of the default loss (the release's pairwise InfoNCE)
    temperature: float = 0.2
    mlp_ratio: int = 4
    dropout: float = 0.0
    #: v1 (learned per-head top-K attention, the authors' default) | v2 (parameter-free, shared projection)
    variant: str = "v1"
    #: attention_topk (the authors': neighbours chosen inside each block and head) | feature_knn (pygml's own:
    #: one cosine kNN graph of the backbone features)
    graph: str = "attention_topk"
    #: lr of the blocks' parameter group (``null`` = ``optim.lr``)
    block_lr: Optional[float] = 1e-4
    #: semantic graph A = Y + I: Y holds its diagonal (A_ii = 2), or not (A_ii = 1, Â X = class mean)
    y_includes_self: bool = True


@dataclass
class Config:
    """The fixed sections of a run; :func:`config_class` adds one section per registered method."""

    #: a registered method: baseline | intra_batch | proxygml | bgformer | ...
    method: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)


@lru_cache(maxsize=None)
def _config_class(methods_version: int) -> type:
    sections = [(e.name, e.options, field(default_factory=e.options)) for e in METHODS.entries()
                if e.options is not None]
    taken = {f.name for f in dataclasses.fields(Config)}
    clash = [name for name, _, _ in sections if name in taken]
    if clash:
        raise ConfigError(f"methods {clash} are named like a fixed config section ({', '.join(sorted(taken))})")
    cls = dataclasses.make_dataclass("Config", sections, bases=(Config,))
    cls.__module__ = __name__
    return cls


def config_class() -> type:
    """:class:`Config` with a section per registered method that has options (rebuilt when one registers)."""
    return _config_class(METHODS.version)


def _check_names(cfg: Any) -> None:
    for value, registry in ((cfg.method, METHODS), (cfg.data.name, DATASETS), (cfg.model.backbone, BACKBONES)):
        if value not in registry and not (registry is BACKBONES and str(value).startswith("timm:")):
            raise ConfigError(f"config key '{registry.key}' is {value!r}; expected one of "
                              f"{', '.join(registry.names())} (a module that registers more is imported with "
                              "--import)")
    loss = cfg.loss.name
    if loss is not None and loss not in LOSSES and not loss.startswith("pml:"):
        raise ConfigError(f"config key 'loss.name' is {loss!r}; expected null (the method's own), one of "
                          f"{', '.join(LOSSES.names())}, or pml:<a pytorch-metric-learning loss>")


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """The YAML file and, first, the files named by its ``base:`` key (a path or a list of paths,
    relative to the file), recursively."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    node = OmegaConf.load(path)
    bases = node.pop("base", None) if isinstance(node, DictConfig) else None
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    layers: list[DictConfig] = []
    for b in bases:
        layers.extend(_load_yaml_chain(path.parent / b, seen + (path,)))
    layers.append(node)
    return layers


def _merge(base: DictConfig, layers: list[DictConfig], overrides: list[str] | tuple[str, ...], where: str) -> Any:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        if overrides:
            layers = [*layers, OmegaConf.from_dotlist(list(overrides))]
        merged = OmegaConf.merge(base, *layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        if "is not a ListConfig" in msg:
            msg = "expected a list, e.g. [1, 2, 4, 8]"
        typed = [item for item in overrides if item.split("=", 1)[0] == key]
        typed_note = f" (typed: {typed[-1]})" if typed else ""
        raise ConfigError(f"bad config{where}: key '{key}'{typed_note}: {msg}") from None
    _check_names(cfg)
    return cfg


#: the configs shipped inside the package (``configs/`` of a clone is the same folder)
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the suffix of a search space (``pygml-tune``) beside a run config: ``baseline/glyphs.tune.yaml``
SPACE_SUFFIX = ".tune.yaml"


def shipped_configs() -> list[Path]:
    """The run configs shipped in :data:`PACKAGED_CONFIGS` (search spaces left out)."""
    return sorted(p for p in PACKAGED_CONFIGS.glob("*/*.yaml") if not p.name.endswith(SPACE_SUFFIX))


def resolve_config(name: str | Path) -> Path:
    """The YAML file ``name`` names: a path to a file, or a shipped config by its short name
    (``baseline/glyphs`` or ``baseline/glyphs.yaml``, found in the installed package); a ``ConfigError``
    lists the shipped configs when neither exists."""
    path = Path(name)
    if path.is_file():
        return path
    short = path if path.suffix in (".yaml", ".yml") else path.with_suffix(".yaml")
    for candidate in (short, PACKAGED_CONFIGS / short,
                      PACKAGED_CONFIGS / short.relative_to("configs") if short.parts[:1] == ("configs",) else None):
        if candidate is not None and candidate.is_file():
            return candidate
    shipped = [str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in shipped_configs()]
    raise ConfigError(f"config file not found: {name}; give a path to a YAML file or a shipped config: "
                      f"{', '.join(shipped)}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Build a config from defaults, an optional YAML file and dotted overrides.

    ``path`` is a YAML file or a shipped config's short name (``baseline/glyphs``, :func:`resolve_config`).
    A YAML file may start from others with ``base: ../datasets/cub.yaml`` (a path or a list, relative
    to the file); later layers override earlier ones.

    >>> cfg = load_config(None, ["train.epochs=3", "method=intra_batch"])
    >>> cfg.train.epochs, cfg.method
    (3, 'intra_batch')
    """
    layers = _load_yaml_chain(resolve_config(path)) if path is not None else []
    return _merge(OmegaConf.structured(config_class()), layers, overrides,
                  f" in {path}" if path is not None else "")


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """A copy of ``cfg`` with dotted ``key.sub=value`` overrides applied and checked."""
    return _merge(OmegaConf.structured(cfg), [], overrides, " (overrides)")


def config_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a config from its plain-dict form (as stored in checkpoints)."""
    return _merge(OmegaConf.structured(config_class()), [OmegaConf.create(data)], (), " (stored in a checkpoint)")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


__all__ = [
    "AMP_MODES", "BGFormerConfig", "BaselineConfig", "Config", "ConfigError", "DataConfig", "EvalConfig",
    "IntraBatchConfig", "LossConfig", "MinerConfig", "ModelConfig", "NONFINITE_POLICIES", "OptimConfig",
    "PACKAGED_CONFIGS", "ProxyGMLConfig", "RESUME_MODES", "SAMPLER_NAMES", "SPACE_SUFFIX", "TrainConfig",
    "apply_overrides", "config_class", "config_from_dict", "config_to_dict", "config_to_yaml", "load_config",
    "resolve_config", "shipped_configs",
]
