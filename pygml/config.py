"""Typed run configuration: dataclasses filled from YAML and dotted command-line overrides.

A run is described by one :class:`Config`. ``load_config`` merges, in order, the dataclass
defaults, a YAML file and ``key.sub=value`` overrides with OmegaConf's structured configs, so an
unknown key or a value of the wrong type is an error that names the key.

Method-specific options live in their own sections (``intra_batch``, ``proxygml``, ``bgformer``,
``baseline``); ``method`` selects which one is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


@dataclass
class DataConfig:
    #: glyphs | glyphs_matplotlib | fashion_mnist | digits | cub | cars | sop | inshop
    name: str = "glyphs"
    #: where the dataset lives (benchmarks) or is cached (glyphs); ``null`` = ``./data/<name>``
    root: Optional[str] = None
    #: train-time augmentation: ``small`` (grey images, light affine jitter) or ``imagenet``
    #: (RandomResizedCrop + flip + RandomErasing, the Intra-Batch recipe)
    augmentation: str = "small"
    #: side of the square images the network sees
    image_size: int = 32
    #: test-time resize before the centre crop (``imagenet`` augmentation only)
    resize_size: int = 256
    #: RandomErasing probability (``imagenet`` augmentation only)
    random_erasing: float = 0.0
    #: skip unreadable images (counted and reported) instead of failing
    skip_corrupt: bool = False
    #: glyphs: a font missing or differing from the manifest is an error (``false``: build without it)
    strict_fonts: bool = True
    #: check the benchmarks' image counts against the published ones (``false`` for a subset)
    check_counts: bool = True
    #: fraction of the *training classes* held out as a validation split (0 = none)
    val_fraction: float = 0.0
    num_workers: int = 0


@dataclass
class ModelConfig:
    #: small_cnn | resnet50 | mobilenet_v2 | bninception | vit_s16
    backbone: str = "small_cnn"
    #: path to a local checkpoint of ImageNet weights; ``null`` = random init
    pretrained: Optional[str] = None
    #: global pooling of the backbone's feature map: avg | max | avgmax
    pooling: str = "avg"
    embedding_dim: int = 128
    #: keep every BatchNorm of the backbone in eval mode with frozen affine parameters
    frozen_bn: bool = False
    #: recompute backbone activations in the backward pass to save memory
    grad_checkpointing: bool = False
    #: width of the small CNN (channels of its first stage)
    width: int = 32


@dataclass
class OptimConfig:
    #: adam | adamw | radam | sgd
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
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


@dataclass
class TrainConfig:
    epochs: int = 10
    #: P classes per batch
    classes_per_batch: int = 16
    #: K samples per class
    samples_per_class: int = 4
    #: stop each epoch after this many batches (0 = the sampler's full epoch)
    max_steps_per_epoch: int = 0
    seed: int = 0
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: mixed precision on CUDA: off | fp16 | bf16
    amp: str = "off"
    out_dir: str = "runs/default"
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
    proxy_lr: float = 0.03
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
    #: epochs (from the first) in which the backbone is frozen: only the embedding layer and proxies train
    warmup_epochs: int = 1


@dataclass
class BGFormerConfig:
    """Wang et al., TMM 2023 (methods.md section 3)."""

    depth: int = 1
    heads: int = 6
    #: K of the visual kNN graph
    k: int = 30
    #: λ: share of the visual attention against the semantic propagation
    mix: float = 0.5
    #: α: share of the backbone rows in the loss (1 = blocks off)
    alpha: float = 0.5
    temperature: float = 0.2
    mlp_ratio: int = 4
    dropout: float = 0.0
    #: learnable (projected) SSA, or ``parameter_free`` top-K similarity attention
    ssa: str = "learned"
    #: lr of the blocks' parameter group (the backbone and head use ``optim.lr``)
    block_lr: float = 1e-4
    #: semantic graph A = Y + I: Y holds its diagonal (A_ii = 2), or not (A_ii = 1, Â X = class mean)
    y_includes_self: bool = True


@dataclass
class Config:
    #: baseline | intra_batch | proxygml | bgformer
    method: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    intra_batch: IntraBatchConfig = field(default_factory=IntraBatchConfig)
    proxygml: ProxyGMLConfig = field(default_factory=ProxyGMLConfig)
    bgformer: BGFormerConfig = field(default_factory=BGFormerConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("baseline", "intra_batch", "proxygml", "bgformer"),
    "data.name": ("glyphs", "glyphs_matplotlib", "fashion_mnist", "digits", "cub", "cars", "sop", "inshop"),
    "data.augmentation": ("small", "imagenet"),
    "model.backbone": ("small_cnn", "resnet50", "mobilenet_v2", "bninception", "vit_s16"),
    "model.pooling": ("avg", "max", "avgmax"),
    "optim.name": ("adam", "adamw", "radam", "sgd"),
    "train.amp": ("off", "fp16", "bf16"),
    "train.nonfinite": ("raise", "skip"),
    "eval.metric": ("cosine", "euclidean"),
    "proxygml.regularizer": ("full", "chunked", "batch"),
    "bgformer.ssa": ("learned", "parameter_free"),
}


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is {value!r}; expected one of {', '.join(allowed)}")


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


def _merge(base: DictConfig, layers: list[DictConfig], overrides: list[str] | tuple[str, ...],
           where: str) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        if overrides:
            layers = [*layers, OmegaConf.from_dotlist(list(overrides))]
        merged = OmegaConf.merge(base, *layers)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"bad config{where}: key '{key}': {msg}") from None
    _check_choices(merged)
    return OmegaConf.to_object(merged)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from defaults, an optional YAML file and dotted overrides.

    A YAML file may start from others with ``base: ../datasets/cub.yaml`` (a path or a list, relative
    to the file); later layers override earlier ones.

    >>> cfg = load_config(None, ["train.epochs=3", "method=intra_batch"])
    >>> cfg.train.epochs, cfg.method
    (3, 'intra_batch')
    """
    layers = _load_yaml_chain(Path(path)) if path is not None else []
    return _merge(OmegaConf.structured(Config), layers, overrides, f" in {path}" if path is not None else "")


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of ``cfg`` with dotted ``key.sub=value`` overrides applied and checked."""
    return _merge(OmegaConf.structured(cfg), [], overrides, " (overrides)")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from its plain-dict form (as stored in checkpoints)."""
    return _merge(OmegaConf.structured(Config), [OmegaConf.create(data)], (), " (stored in a checkpoint)")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


__all__ = [
    "MISSING",
    "BaselineConfig",
    "BGFormerConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "IntraBatchConfig",
    "ModelConfig",
    "OptimConfig",
    "ProxyGMLConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
]
