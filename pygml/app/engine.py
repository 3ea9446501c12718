"""The training loop, in the shape of torchvision's reference script: :func:`setup`, :func:`train_one_epoch`,
:func:`evaluate_epoch` and :func:`end_of_epoch`, driven by :func:`train`.

``train(cfg)`` builds the data, the method, the optimiser and the P×K sampler, then for each epoch
trains, evaluates with the shared evaluator, appends a row to ``<out_dir>/log.csv`` and writes
``<out_dir>/checkpoint.pt`` atomically. ``train(cfg, resume=True)`` continues from that checkpoint
(model, optimiser, scheduler, sampler position, every RNG), so an interrupted and resumed run ends with
the same weights as an uninterrupted one (with ``data.num_workers=0``; worker processes draw their
augmentation from seeds a resumed run cannot replay mid-epoch).

The reported result is always the **last** epoch on the test split. Test metrics logged along the way
are for the curves only: nothing here selects a model on the test set. A validation split, carved from
the training classes (``data.val_fraction``), is evaluated beside it. ``train(cfg, test=False)`` (a
tuning trial, :mod:`pygml.app.tune`) drops the test split as soon as the dataset is built: it is never
read, embedded or scored, and the result holds the validation metrics only.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pygml.app import distributed
from pygml.app.builders import (build_datasets, build_evaluator, build_method, check_recall_at, construct,
                                 data_record, describe_data)
from pygml.app.checkpoint import (CheckpointError, load_checkpoint, load_model_state, rng_state, save_checkpoint,
                                  set_rng_state)
from pygml.app.config import ConfigError, config_to_dict, config_to_yaml
from pygml.app.evaluate import evaluate_run, select_device
from pygml.app.optim import build_optimizer, build_scheduler
from pygml.app.reports import environment, log, search_record
from pygml.data import DatasetSplits, PKSampler
from pygml.evaluation import RetrievalEvaluator
from pygml.methods import Method
from pygml.models.weights import check_weights_file


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compile_backbone(method: Method) -> Method:
    """``torch.compile`` the method's backbone in place: its parameters, buffers and state-dict keys are
    unchanged, so checkpoints load with or without it. Only the backbone, where the time goes, is
    compiled: batch graphs change shape every step and are built outside the compiled region."""
    backbone = getattr(method, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ConfigError(f"train.compile: the {type(method).__name__} method has no backbone module to compile")
    backbone.compile()
    return method


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


@dataclass
class Run:
    """Everything :func:`setup` builds for a run."""

    cfg: Any
    out: Path
    device: torch.device
    main: bool
    splits: DatasetSplits
    num_classes: int
    method: Method
    model: torch.nn.Module  # the method, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: PKSampler
    evaluator: RetrievalEvaluator
    steps_per_epoch: int
    amp_dtype: Optional[torch.dtype]  # None: full precision

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def progress(self) -> bool:
        return self.cfg.train.progress and self.main


def setup(cfg: Any, *, test: bool = True) -> Run:
    """Seed, build the data, the method, the optimiser, the scheduler and the sampler of a run
    (``test=False``: without the test split, which is dropped unread)."""
    dist_info, device = distributed.init_on(select_device(cfg.train.device))
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.train.seed + dist_info.rank)
    evaluator = build_evaluator(cfg)  # a bad eval setting is an error now, not after training
    if cfg.model.pretrained:  # before the data, which may take long to read
        check_weights_file(cfg.model.pretrained, f"model.backbone={cfg.model.backbone}")
    splits = build_datasets(cfg)
    if not test:
        if splits.val is None:
            raise ConfigError("a run without its test split is scored on the validation split: set data.val_fraction "
                              "(e.g. 0.2) or use a dataset with a validation split")
        splits = DatasetSplits(train=splits.train, query=None, val=splits.val)
    check_recall_at(cfg, splits)
    if dist_info.is_main:
        log.info("%s", describe_data(data_record(cfg, splits)))
    num_classes = splits.train.num_classes
    method = build_method(cfg, num_classes).to(device)
    if cfg.train.cross_rank_graph and dist_info.enabled:
        method.gather = distributed.all_gather_with_grad
    if cfg.train.sync_batchnorm and dist_info.enabled:
        distributed.convert_sync_batchnorm(method)
    if cfg.train.compile:
        compile_backbone(method)
    optimizer = build_optimizer(cfg.optim, method.param_groups())
    sampler = construct("train", PKSampler, splits.train.labels, classes_per_batch=cfg.train.classes_per_batch,
                        samples_per_class=cfg.train.samples_per_class, seed=cfg.train.seed, rank=dist_info.rank,
                        world_size=dist_info.world_size)
    steps = sampler.num_batches
    if cfg.train.max_steps_per_epoch > 0:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    model: torch.nn.Module = method
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.skips_parameters)
    amp = device.type == "cuda" and cfg.train.amp != "off"
    amp_dtype = (torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16) if amp else None
    return Run(cfg=cfg, out=Path(cfg.train.out_dir), device=device, main=dist_info.is_main, splits=splits,
               num_classes=num_classes, method=method, model=model, optimizer=optimizer,
               scheduler=build_scheduler(optimizer, cfg.optim),
               scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), sampler=sampler,
               evaluator=evaluator, steps_per_epoch=steps, amp_dtype=amp_dtype)


def restore(run: Run) -> RunState:
    """The state of the run's checkpoint, loaded into the run's method, optimiser, scheduler and RNGs."""
    ckpt = load_checkpoint(run.checkpoint_path, method=run.cfg.method)
    if ckpt["num_classes"] != run.num_classes:
        raise CheckpointError(f"{run.checkpoint_path} was trained on {ckpt['num_classes']} classes; the data has "
                              f"{run.num_classes}")
    load_model_state(run.method, ckpt["model"], run.checkpoint_path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return RunState(**ckpt["run"])


def save(run: Run, state: RunState) -> None:
    """Write the run's checkpoint atomically (rank 0 only)."""
    if not run.main:
        return
    save_checkpoint({
        "method": run.cfg.method, "num_classes": run.num_classes, "config": config_to_dict(run.cfg),
        "model": run.method.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
        "run": state.__dict__, "rng": rng_state(), "data": data_record(run.cfg, run.splits),
    }, run.checkpoint_path)


def _describe_nonfinite(logs: dict[str, Tensor]) -> str:
    values = {k: float(v.detach()) for k, v in logs.items()}
    bad = [f"{k}={v:g}" for k, v in values.items() if not math.isfinite(v)]
    return ", ".join(bad) if bad else "loss"


def training_step(run: Run, images: Tensor, labels: Tensor, state: RunState, bar: tqdm) -> float:
    """One optimiser step on a batch (or, with ``train.nonfinite=skip``, a skipped non-finite one);
    returns the loss."""
    images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.bfloat16, enabled=run.amp_dtype is not None):
        loss, logs = run.model(images, labels)
    run.optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach())  # the one read of a value per step: the non-finite guard and the log
    if not math.isfinite(value):
        where = (f"non-finite loss at epoch {state.epoch + 1}, step {state.step_in_epoch + 1} "
                 f"(global step {state.global_step + 1}): {_describe_nonfinite({**logs, 'loss': loss})}")
        if run.cfg.train.nonfinite == "raise":
            raise NonFiniteLossError(where + "; set train.nonfinite=skip to skip such batches")
        state.skipped_steps += 1
        bar.write("skipped: " + where)
        return value
    run.scaler.scale(loss).backward()
    if run.cfg.optim.clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.method.parameters(), run.cfg.optim.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    for k, v in {"loss": loss.detach(), **logs}.items():
        state.sums[k] = state.sums.get(k, 0.0) + float(v)
    state.sums["_n"] = state.sums.get("_n", 0.0) + 1
    return value


def train_one_epoch(run: Run, state: RunState) -> bool:
    """Train the rest of epoch ``state.epoch``; ``False`` when the run stopped before its end
    (``train.stop_after_steps``), after writing a checkpoint."""
    cfg, epoch = run.cfg, state.epoch
    run.method.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.sampler.set_position(state.step_in_epoch)
    run.model.train()
    # the loader's own generator (not the global one) seeds its workers, so resuming mid-epoch leaves the
    # global RNG stream, and with it augmentation and dropout, where it was
    loader = DataLoader(run.splits.train, batch_sampler=run.sampler, num_workers=cfg.data.num_workers,
                        pin_memory=run.device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch))
    started = time.perf_counter()
    bar = tqdm(total=run.steps_per_epoch, initial=state.step_in_epoch, disable=not run.progress,
               desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True)
    stopped = False
    for images, labels in loader:
        loss = training_step(run, images, labels, state, bar)
        state.step_in_epoch += 1
        state.global_step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        stopped = bool(cfg.train.stop_after_steps) and state.global_step >= cfg.train.stop_after_steps
        every = cfg.train.checkpoint_every_steps
        if (stopped or (every and state.global_step % every == 0)) and state.step_in_epoch < run.steps_per_epoch:
            state.train_time += time.perf_counter() - started
            started = time.perf_counter()
            save(run, state)
        if stopped or state.step_in_epoch >= run.steps_per_epoch:
            break  # before the loader draws (and augments) a batch the run will not use
    bar.close()
    state.train_time += time.perf_counter() - started
    return state.step_in_epoch >= run.steps_per_epoch


def evaluate_epoch(run: Run, epoch: int) -> dict[str, dict[str, float]]:
    """The metrics of the run after epoch ``epoch`` (0-based), when the schedule asks for them; every rank
    embeds a share and rank 0 evaluates (the other ranks get no metrics)."""
    cfg = run.cfg
    last = epoch + 1 == cfg.train.epochs
    if not (last or (epoch + 1) % cfg.train.eval_every == 0):
        return {}
    which = ("val", "test") if (last or cfg.train.eval_test_every_epoch) else ("val",)
    if run.splits.query is None:  # a run without its test split
        which = ("val",)
    metrics = evaluate_run(run.method, run.splits, cfg, run.device, progress=run.progress, which=which,
                           evaluator=run.evaluator)
    if run.progress and "test" in metrics:
        tqdm.write(f"epoch {epoch + 1}: test recall@1 {metrics['test'].get('recall@1', float('nan')) * 100:.2f}  "
                   f"MAP@R {metrics['test'].get('mean_average_precision_at_r', float('nan')) * 100:.2f}")
    return metrics


def end_of_epoch(run: Run, state: RunState, metrics: dict[str, dict[str, float]]) -> None:
    """Log the epoch's row (mean losses, learning rates, metrics, time), step the schedule, move to the
    next epoch and write the log and the checkpoint."""
    n = max(state.sums.pop("_n", 0.0), 1.0)
    row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.global_step}
    row.update({k: v / n for k, v in state.sums.items()})
    row.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(run.optimizer.param_groups)})
    row["skipped_steps"] = state.skipped_steps
    row["train_time_s"] = state.train_time
    if metrics:
        row.update({f"eval_{k}": v for k, v in search_record(run.cfg.eval).items()})
    row.update({f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()})
    state.history.append(row)
    run.scheduler.step()
    state.epoch += 1
    state.step_in_epoch = 0
    state.sums = {}
    if run.main:
        pd.DataFrame(state.history).to_csv(run.out / "log.csv", index=False)
    save(run, state)


def finish(run: Run, state: RunState) -> dict[str, Any]:
    """The run's result (the last epoch's metrics); rank 0 writes it to ``metrics.json``."""
    cfg = run.cfg
    result: dict[str, Any] = {"out_dir": str(run.out), "epochs_done": state.epoch, "global_step": state.global_step,
                              "finished": state.epoch >= cfg.train.epochs, "train_time_s": state.train_time,
                              "eval": search_record(cfg.eval)}
    if not (result["finished"] and state.history):
        return result
    last_row = state.history[-1]
    for split in ("val", "test"):
        metrics = {k[len(split) + 1:]: v for k, v in last_row.items() if k.startswith(f"{split}_")}
        if metrics:
            result[split] = metrics
    if run.main:
        (run.out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def default_out_dir(cfg: Any, when: Optional[float] = None) -> str:
    """``runs/<method>-<dataset>-<YYYYmmdd-HHMMSS>``: a run directory of its own for each run."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return str(Path("runs") / f"{cfg.method}-{cfg.data.name}-{stamp}")


def train(cfg: Any, *, resume: bool = False, test: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data``; return the last epoch's metrics and where the run lives.
    ``test=False``: the test split is dropped unread (:func:`setup`); only the validation split is scored.

    Writes to ``cfg.train.out_dir``: ``config.yaml`` (fully resolved), ``env.json``, ``log.csv`` (one row
    per epoch: losses, learning rates, metrics, time), ``checkpoint.pt`` and ``metrics.json``.
    """
    if cfg.train.out_dir is None:
        cfg.train.out_dir = default_out_dir(cfg)
    run = setup(cfg, test=test)
    state = restore(run) if resume else RunState()
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.yaml").write_text(config_to_yaml(cfg))
        (run.out / "env.json").write_text(json.dumps(environment(), indent=2))
    while state.epoch < cfg.train.epochs:
        if not train_one_epoch(run, state):
            break
        end_of_epoch(run, state, evaluate_epoch(run, state.epoch))
        if cfg.train.stop_after_steps and state.global_step >= cfg.train.stop_after_steps:
            break
    distributed.barrier()
    return finish(run, state)


__all__ = ["NonFiniteLossError", "Run", "RunState", "compile_backbone", "default_out_dir", "end_of_epoch", "evaluate_epoch",
           "finish", "restore", "save", "seed_everything", "setup", "train", "train_one_epoch", "training_step"]
