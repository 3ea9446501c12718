"""The training loop: one readable function, the method-specific parts living in the method.

``train(cfg)`` builds the data, the method, the optimiser and the P×K sampler, then for each epoch
trains, evaluates with the shared evaluator, appends a row to ``<out_dir>/log.csv`` and writes
``<out_dir>/checkpoint.pt`` atomically. ``train(cfg, resume=True)`` continues from that checkpoint
(model, optimiser, scheduler, sampler position, every RNG), so an interrupted and resumed run ends with
the same weights as an uninterrupted one (with ``data.num_workers=0``; worker processes draw their
augmentation from seeds a resumed run cannot replay mid-epoch).

The reported result is always the **last** epoch on the test split. Test metrics logged along the way
are for the curves only: nothing here selects a model on the test set. A validation split, carved from
the training classes (``data.val_fraction``), is evaluated beside it.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from pygml import distributed
from pygml.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pygml.config import Config, ConfigError, OptimConfig, config_to_dict, config_to_yaml
from pygml.data import build_datasets, build_transforms
from pygml.data.sampler import PKSampler
from pygml.graph import knn_homophily
from pygml.evaluation import RetrievalEvaluator, empty_index, metrics_table
from pygml.methods import Method, build_method


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return device


def compile_backbone(method: Method) -> Method:
    """``torch.compile`` the method's backbone in place: its parameters, buffers and state-dict keys are
    unchanged, so checkpoints load with or without it. Only the backbone, where the time goes, is
    compiled: batch graphs change shape every step and are built outside the compiled region."""
    backbone = getattr(method, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ConfigError(f"train.compile: the {method.name or type(method).__name__} method has no backbone "
                          "module to compile")
    backbone.compile()
    return method


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser over a method's named parameter groups; a group without ``lr`` gets ``cfg.lr``."""
    groups = [dict(g, params=list(g["params"])) for g in groups]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr", cfg.lr)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "radam":
        return torch.optim.RAdam(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser optim.name={cfg.name!r}")


@dataclass
class StepSchedule:
    """lr factor of 0-based epoch ``e``: milestones are 1-based epochs from which the factor applies."""

    milestones: list[int]
    gamma: float
    cumulative: bool

    def __call__(self, epoch: int) -> float:
        passed = sum(epoch + 1 >= m for m in self.milestones)
        if not self.cumulative:
            passed = min(passed, 1)
        return self.gamma**passed


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, StepSchedule(list(cfg.milestones), cfg.gamma, cfg.cumulative))


@torch.no_grad()
def embed_dataset(method: Method, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
                  num_workers: int = 0, progress: bool = True, desc: str = "embed",
                  fn: Optional[Callable[[Tensor], Tensor]] = None,
                  sharded: bool = False) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Test embeddings (N, d) and labels (N,) of a whole dataset, in order, on the CPU.

    ``fn`` replaces ``method.embed`` (e.g. to get un-normalised features). With ``sharded=True`` and
    several processes (torchrun), each rank embeds its contiguous share of the dataset
    (:func:`pygml.distributed.shard`) and rank 0 receives every row, in dataset order; the other ranks
    get ``(None, None)``. Every rank must then call it (it is a collective). Without a process group
    ``sharded`` changes nothing."""
    fn = fn or method.embed
    was_training = method.training
    method.eval()
    share = distributed.shard(len(dataset)) if sharded else range(len(dataset))
    if not share:
        raise ValueError(f"{desc}: a dataset of {len(dataset)} items cannot be shared among "
                         f"{distributed.world_size()} processes")
    if len(share) != len(dataset):
        dataset = Subset(dataset, share)
    # a generator of its own: embedding never draws from the global RNG, so when and how often a run
    # evaluates does not change the randomness of its training
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    embs, labels = [], []
    for images, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        embs.append(fn(images.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
    method.train(was_training)
    emb, label = torch.cat(embs), torch.cat(labels)
    if sharded:
        return distributed.gather_rows(emb), distributed.gather_rows(label)
    return emb, label


def batch_homophily(embeddings: Tensor, labels: Tensor, classes_per_batch: int, samples_per_class: int,
                    batches: int = 20, seed: int = 0) -> float:
    """Mean label homophily of the visual kNN graph over P×K batches drawn from a set of embeddings:
    how often a sample's ``K − 1`` nearest batch neighbours share its class (1 = every neighbour does)."""
    sampler = PKSampler(labels.numpy(), min(classes_per_batch, int(labels.unique().numel())), samples_per_class,
                        seed=seed)
    k = max(samples_per_class - 1, 1)
    values = [knn_homophily(embeddings[idx], labels[idx], k) for idx, _ in zip(sampler, range(batches))]
    return float(np.mean(values))


def evaluate_splits(method: Method, splits, evaluator: RetrievalEvaluator, *, batch_size: int, device: torch.device,
                    num_workers: int = 0, progress: bool = True, which: tuple[str, ...] = ("val", "test"),
                    homophily: Optional[tuple[int, int]] = None) -> dict[str, dict[str, float]]:
    """Metrics of the validation split (leave-one-out) and of the test split (leave-one-out, or
    query vs gallery when the dataset has a gallery). With ``homophily=(P, K)`` the test metrics also hold
    ``knn_homophily`` (:func:`batch_homophily` of the test queries).

    Under torchrun every rank must call it: each embeds a share of every split, rank 0 evaluates and
    returns the metrics, the other ranks return ``{}``."""
    out: dict[str, dict[str, float]] = {}
    kw = dict(batch_size=batch_size, device=device, num_workers=num_workers, progress=progress, sharded=True)
    evaluates = distributed.is_main()
    if "val" in which and splits.val is not None:
        emb, y = embed_dataset(method, splits.val, desc="embed val", **kw)
        if evaluates:
            out["val"] = evaluator(emb, y)
    if "test" in which:
        q, qy = embed_dataset(method, splits.query, desc="embed test", **kw)
        g, gy = (None, None) if splits.gallery is None else embed_dataset(
            method, splits.gallery, desc="embed gallery", **kw)
        if evaluates:
            out["test"] = evaluator(q, qy) if splits.gallery is None else evaluator(q, qy, g, gy)
            if homophily is not None:
                out["test"]["knn_homophily"] = batch_homophily(q, qy, *homophily)
    return out


def build_evaluator(cfg: Config) -> RetrievalEvaluator:
    """The shared evaluator with a run's ``eval`` settings."""
    return RetrievalEvaluator(recall_at=tuple(cfg.eval.recall_at), metric=cfg.eval.metric, nmi=cfg.eval.nmi,
                              search=cfg.eval.search, nprobe=cfg.eval.nprobe)


def evaluate_run(method: Method, splits, cfg: Config, device: torch.device, *, progress: bool = True,
                 which: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, float]]:
    """:func:`evaluate_splits` with a run's settings: its evaluator, batch size, workers, and the kNN
    homophily measured on batches of the run's P×K shape."""
    return evaluate_splits(method, splits, build_evaluator(cfg), batch_size=cfg.eval.batch_size, device=device,
                           num_workers=cfg.data.num_workers, progress=progress, which=which,
                           homophily=(cfg.train.classes_per_batch, cfg.train.samples_per_class))


def environment() -> dict[str, Any]:
    """Versions, commit and device of a run, saved beside its results."""
    import faiss
    import torch_geometric
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_geometric": torch_geometric.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "commit": commit,
    }


@dataclass
class RunState:
    """What a checkpoint restores beyond the weights."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # batches of ``epoch`` already trained
    global_step: int = 0
    skipped_steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # running sums of this epoch's logs
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    train_time: float = 0.0


def _flatten(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()}


def _describe_nonfinite(logs: dict[str, Tensor]) -> str:
    values = {k: float(v.detach()) for k, v in logs.items()}
    bad = [f"{k}={v:g}" for k, v in values.items() if not math.isfinite(v)]
    return ", ".join(bad) if bad else "loss"


def train(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data``; return the last epoch's metrics and where the run lives.

    Writes to ``cfg.train.out_dir``: ``config.yaml`` (fully resolved), ``env.json``, ``log.csv`` (one row
    per epoch: losses, learning rates, metrics, time), ``checkpoint.pt`` and ``metrics.json``.
    """
    dist_info, device = distributed.init_on(select_device(cfg.train.device))
    main = dist_info.is_main
    progress = cfg.train.progress and main
    out = Path(cfg.train.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.train.seed + dist_info.rank)

    if cfg.eval.search != "exact":  # a typo must not surface only when the first evaluation runs
        try:
            empty_index(cfg.eval.search, cfg.model.embedding_dim, cfg.eval.metric)
        except ValueError as err:
            raise ConfigError(f"config key 'eval.search': {err}") from None
    train_tf, test_tf = build_transforms(cfg.data)
    splits = build_datasets(cfg.data, train_tf, test_tf)
    num_classes = splits.train.num_classes
    method = build_method(cfg, num_classes).to(device)
    if cfg.train.cross_rank_graph and dist_info.enabled:
        method.gather = distributed.all_gather_with_grad
    if cfg.train.sync_batchnorm and dist_info.enabled:
        distributed.convert_sync_batchnorm(method)
    if cfg.train.compile:
        compile_backbone(method)
    optimizer = build_optimizer(cfg.optim, method.param_groups())
    scheduler = build_scheduler(optimizer, cfg.optim)
    sampler = PKSampler(splits.train.labels, cfg.train.classes_per_batch, cfg.train.samples_per_class,
                        seed=cfg.train.seed, rank=dist_info.rank, world_size=dist_info.world_size)
    steps_per_epoch = sampler.num_batches
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    model: torch.nn.Module = method
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    use_amp = device.type == "cuda" and cfg.train.amp != "off"
    amp_dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    state = RunState()
    if resume:
        ckpt = load_checkpoint(ckpt_path, method=cfg.method)
        if ckpt["num_classes"] != num_classes:
            raise CheckpointError(f"{ckpt_path} was trained on {ckpt['num_classes']} classes; the data has {num_classes}")
        load_model_state(method, ckpt["model"], ckpt_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = RunState(**ckpt["run"])
        set_rng_state(ckpt["rng"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        (out / "env.json").write_text(json.dumps(environment(), indent=2))

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint({
            "method": cfg.method, "num_classes": num_classes, "config": config_to_dict(cfg),
            "model": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "run": state.__dict__, "rng": rng_state(),
        }, ckpt_path)

    stopped = False
    while state.epoch < cfg.train.epochs and not stopped:
        epoch = state.epoch
        method.set_epoch(epoch)
        sampler.set_epoch(epoch)
        sampler.set_position(state.step_in_epoch)
        model.train()
        # the loader's own generator (not the global one) seeds its workers, so resuming mid-epoch
        # leaves the global RNG stream, and with it augmentation and dropout, where it was
        loader = DataLoader(splits.train, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch))
        started = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, disable=not progress,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True)
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, logs = model(images, labels)
            if not torch.isfinite(loss.detach()):
                where = (f"non-finite loss at epoch {epoch + 1}, step {state.step_in_epoch + 1} "
                         f"(global step {state.global_step + 1}): {_describe_nonfinite({**logs, 'loss': loss})}")
                if cfg.train.nonfinite == "raise":
                    raise NonFiniteLossError(where + "; set train.nonfinite=skip to skip such batches")
                optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                bar.write("skipped: " + where)
            else:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                for k, v in {"loss": loss, **logs}.items():
                    state.sums[k] = state.sums.get(k, 0.0) + float(v)
                state.sums["_n"] = state.sums.get("_n", 0.0) + 1
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if cfg.train.stop_after_steps and state.global_step >= cfg.train.stop_after_steps:
                stopped = True
            every = cfg.train.checkpoint_every_steps
            if (stopped or (every and state.global_step % every == 0)) and state.step_in_epoch < steps_per_epoch:
                state.train_time += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
            if stopped or state.step_in_epoch >= steps_per_epoch:
                break  # before the loader draws (and augments) a batch the run will not use
        bar.close()
        state.train_time += time.perf_counter() - started
        if state.step_in_epoch < steps_per_epoch:
            break

        n = max(state.sums.pop("_n", 0.0), 1.0)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step}
        row.update({k: v / n for k, v in state.sums.items()})
        row.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
        row["skipped_steps"] = state.skipped_steps
        row["train_time_s"] = state.train_time
        last = epoch + 1 == cfg.train.epochs
        if last or (epoch + 1) % cfg.train.eval_every == 0:
            which = ("val", "test") if (last or cfg.train.eval_test_every_epoch) else ("val",)
            # every rank embeds a share; rank 0 evaluates (the other ranks get no metrics)
            metrics = evaluate_run(method, splits, cfg, device, progress=progress, which=which)
            row.update(_flatten(metrics))
            if progress and "test" in metrics:
                tqdm.write(f"epoch {epoch + 1}: loss {row.get('loss', float('nan')):.4f}  "
                           f"test recall@1 {metrics['test'].get('recall@1', float('nan')) * 100:.2f}  "
                           f"MAP@R {metrics['test'].get('mean_average_precision_at_r', float('nan')) * 100:.2f}")
        state.history.append(row)
        scheduler.step()
        state.epoch += 1
        state.step_in_epoch = 0
        state.sums = {}
        if main:
            pd.DataFrame(state.history).to_csv(out / "log.csv", index=False)
        checkpoint()
    distributed.barrier()

    result: dict[str, Any] = {"out_dir": str(out), "epochs_done": state.epoch, "global_step": state.global_step,
                              "finished": state.epoch >= cfg.train.epochs, "train_time_s": state.train_time}
    if result["finished"] and state.history:
        last_row = state.history[-1]
        for split in ("val", "test"):
            prefix = f"{split}_"
            metrics = {k[len(prefix):]: v for k, v in last_row.items() if k.startswith(prefix)}
            if metrics:
                result[split] = metrics
        if main:
            (out / "metrics.json").write_text(json.dumps(result, indent=2))
            if "test" in result:
                print(f"\n{cfg.method} on {cfg.data.name}, last epoch ({state.epoch}), test split:")
                print(metrics_table(result["test"]))
    return result
