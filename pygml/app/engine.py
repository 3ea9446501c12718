"""The training loop, in the shape of torchvision's reference script: :func:`setup`, :func:`train_one_epoch`,
:func:`evaluate_epoch` and :func:`end_of_epoch`, driven by :func:`train`.

``train(cfg)`` builds the data, the method, the optimiser and the P×K sampler, then for each epoch
trains, evaluates with the shared evaluator, appends a row to ``<out_dir>/log.csv`` and writes
``<out_dir>/checkpoint.pt`` atomically. ``train(cfg, resume="auto")`` (or ``True``: the checkpoint must
exist) continues from that checkpoint (model, optimiser, scheduler, sampler position, every rank's RNGs),
so an interrupted and resumed run ends with the same weights as an uninterrupted one (with
``data.num_workers=0``; worker processes draw their augmentation from seeds a resumed run cannot replay
mid-epoch).

A run holds its directory's lock and refuses a directory that holds another run
(:mod:`pygml.app.rundir`); SIGTERM and SIGUSR1 stop it after the current step with a checkpoint
(:mod:`pygml.app.preemption`); every file is written atomically (:mod:`pygml.app.storage`); unreadable
images and dead loader workers are reported with their step (:mod:`pygml.app.loading`). What each
failure does is in ``docs/reliability.md``.

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
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pygml.app import distributed, loading
from pygml.app.builders import (build_datasets, build_evaluator, build_method, build_sampler, check_data,
                                check_recall_at, data_record, describe_data)
from pygml.app.checkpoint import (CheckpointError, load_checkpoint, load_model_state, rng_state, save_checkpoint,
                                  set_rng_state)
from pygml.app.config import ConfigError, config_from_dict, config_to_dict, config_to_yaml
from pygml.app.evaluate import evaluate_run, select_device
from pygml.app.optim import build_optimizer, build_scheduler
from pygml.app.preemption import Interrupted, Preempted, PreemptionSignals, ignore_in_worker
from pygml.app.reports import environment, log, search_record
from pygml.app.rundir import OpenedRun, open_run, resume_mode
from pygml.app.storage import StorageError, atomic_write
from pygml.data import DatasetSplits
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
    skipped_images: int = 0  # unreadable training images dropped with data.skip_corrupt
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
    sampler: Any  # a batch sampler of pygml.data (PKSampler, IntraBatchSampler, ClassPassSampler)
    evaluator: RetrievalEvaluator
    amp_dtype: Optional[torch.dtype]  # None: full precision
    signals: PreemptionSignals = field(default_factory=PreemptionSignals)  # installed by train()
    saved_step: Optional[int] = None  # global step of the last checkpoint written or restored
    written: dict[str, Any] = field(default_factory=dict)  # rank 0: what config.yaml and log.csv hold

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def progress(self) -> bool:
        return self.cfg.train.progress and self.main

    @property
    def steps_per_epoch(self) -> int:
        """Batches of the sampler's current epoch (an epoch's length may change: ``train.redraw_pk``), at most
        ``train.max_steps_per_epoch``."""
        steps = self.sampler.num_batches
        limit = self.cfg.train.max_steps_per_epoch
        return min(steps, limit) if limit > 0 else steps


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
    sampler = build_sampler(cfg.train, splits.train.labels, dist_info.rank, dist_info.world_size)
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
               evaluator=evaluator, amp_dtype=amp_dtype)


def _rank_rng(rng: Any) -> Optional[dict[str, Any]]:
    """This rank's share of a checkpoint's ``rng`` (a list with one state per rank; a dict in checkpoints
    written before there was one per rank)."""
    if isinstance(rng, dict):
        return rng
    rank = distributed.rank()
    if rank < len(rng):
        return rng[rank]
    log.warning("the checkpoint holds the random state of %d processes; rank %d continues from its seed", len(rng),
                rank)
    return None


def restore(run: Run, ckpt: Optional[dict[str, Any]] = None) -> RunState:
    """The state of the run's checkpoint (``ckpt``, or read from the run's directory), loaded into the run's
    method, optimiser, scheduler and RNGs."""
    if ckpt is None:
        ckpt = load_checkpoint(run.checkpoint_path, method=run.cfg.method)
    if ckpt["num_classes"] != run.num_classes:
        raise CheckpointError(f"{run.checkpoint_path} was trained on {ckpt['num_classes']} classes; the data has "
                              f"{run.num_classes}")
    check_data(ckpt.get("data"), data_record(run.cfg, run.splits), f"checkpoint {run.checkpoint_path}")
    load_model_state(run.method, ckpt["model"], run.checkpoint_path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    rng = _rank_rng(ckpt["rng"])
    if rng is not None:
        set_rng_state(rng)
    state = RunState(**ckpt["run"])
    run.saved_step = state.global_step
    if run.main:
        log.info("resuming %s at step %d (epoch %d of %d)", run.out, state.global_step, state.epoch + 1,
                 run.cfg.train.epochs)
    return state


def resume_hint(run: Run) -> str:
    """Where the run's last checkpoint is and how to continue from it."""
    if run.saved_step is None:
        return f"no checkpoint was written to {run.out} yet"
    return (f"the last checkpoint is {run.checkpoint_path} (step {run.saved_step}); the same command with "
            "--resume auto continues from it")


def write_on_main(run: Run, write: Callable[[], None]) -> None:
    """``write()`` on rank 0; a :class:`StorageError` it raises is raised on every rank, saying where the last
    checkpoint is, so that no rank waits in a collective for one that failed."""
    error = None
    if run.main:
        try:
            write()
        except StorageError as exc:
            error = f"{exc}; {resume_hint(run)}"
    error = distributed.broadcast_object(error)
    if error is not None:
        raise StorageError(error)


def _write_run_files(run: Run, state: RunState, checkpoint: dict[str, Any]) -> None:
    """The checkpoint, then ``config.yaml`` and ``log.csv`` where they changed: ``config.yaml`` always holds
    the config of the checkpoint beside it (a resumed run with a changed config rewrites it here)."""
    save_checkpoint(checkpoint, run.checkpoint_path)
    text = config_to_yaml(run.cfg)
    if run.written.get("config.yaml") != text:
        atomic_write(run.out / "config.yaml", text)
        run.written["config.yaml"] = text
    if state.history and run.written.get("log.csv") != len(state.history):
        atomic_write(run.out / "log.csv", pd.DataFrame(state.history).to_csv(index=False))
        run.written["log.csv"] = len(state.history)


def save(run: Run, state: RunState) -> None:
    """Write the run's checkpoint atomically: every rank's random state is gathered, rank 0 writes. A
    collective under torchrun: every rank calls it at the same step."""
    rngs = distributed.gather_objects(rng_state())
    checkpoint = {
        "method": run.cfg.method, "num_classes": run.num_classes, "config": config_to_dict(run.cfg),
        "model": run.method.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
        "run": dict(state.__dict__), "rng": rngs, "data": data_record(run.cfg, run.splits),
    } if run.main else {}
    write_on_main(run, lambda: _write_run_files(run, state, checkpoint))
    run.saved_step = state.global_step


def start_files(run: Run, opened: OpenedRun) -> None:
    """``config.yaml`` (the checkpoint's config when the run resumes) and ``env.json``, on rank 0."""
    def write() -> None:
        cfg = config_from_dict(opened.checkpoint["config"]) if opened.checkpoint is not None else run.cfg
        run.written["config.yaml"] = config_to_yaml(cfg)
        atomic_write(run.out / "config.yaml", run.written["config.yaml"])
        atomic_write(run.out / "env.json", json.dumps(environment(), indent=2))

    write_on_main(run, write)


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
    bad = distributed.ranks_where(not math.isfinite(value))  # every rank raises or skips, none waits
    if bad:
        where = f"non-finite loss at {step_name(state)}"
        if distributed.running():
            where += f" on rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
        if not math.isfinite(value):
            where += f": {_describe_nonfinite({**logs, 'loss': loss})}"
        if run.cfg.train.nonfinite == "raise":
            raise NonFiniteLossError(f"{where}; set train.nonfinite=skip to skip such batches; {resume_hint(run)}")
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


def step_name(state: RunState) -> str:
    """The step about to be trained, as errors name it: ``epoch E, step S (global step G)``."""
    return f"epoch {state.epoch + 1}, step {state.step_in_epoch + 1} (global step {state.global_step + 1})"


def train_loader(run: Run, epoch: int) -> DataLoader:
    """The loader of the rest of epoch ``epoch``: the sampler's P×K batches, unreadable images reported as
    items (:mod:`pygml.app.loading`), workers that ignore preemption signals. The loader's own generator
    (not the global one) seeds its workers, so resuming mid-epoch leaves the global RNG stream, and with
    it augmentation and dropout, where it was."""
    cfg = run.cfg
    return DataLoader(loading.ReadGuard(run.splits.train), batch_sampler=run.sampler, num_workers=cfg.data.num_workers,
                      collate_fn=loading.collate, pin_memory=run.device.type == "cuda",
                      worker_init_fn=ignore_in_worker if cfg.data.num_workers else None,
                      generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch))


def preempted(run: Run, state: RunState, signal: str) -> None:
    """Log and raise :class:`Preempted` (the checkpoint of ``state`` is written)."""
    message = (f"preempted at step {state.global_step} ({signal}): checkpoint {run.checkpoint_path} written; the "
               "same command with --resume auto continues the run")
    if run.main:
        log.warning(message)
    raise Preempted(message, state.global_step)


def train_one_epoch(run: Run, state: RunState) -> bool:
    """Train the rest of epoch ``state.epoch``; ``False`` when the run stopped before its end
    (``train.stop_after_steps``), after writing a checkpoint. A preemption signal on any rank stops every
    rank after the same step, with a checkpoint, as :class:`Preempted`."""
    cfg, epoch = run.cfg, state.epoch
    run.sampler.set_epoch(epoch)  # first: the epoch's length may depend on it (train.redraw_pk)
    if state.step_in_epoch >= run.steps_per_epoch:
        return True  # preempted after the epoch's last step, before its evaluation
    run.method.set_epoch(epoch)
    run.sampler.set_position(state.step_in_epoch)
    run.model.train()
    started = time.perf_counter()
    bar = tqdm(total=run.steps_per_epoch, initial=state.step_in_epoch, disable=not run.progress,
               desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True)
    stopped = False
    batches = loading.readable_batches(train_loader(run, epoch), skip=cfg.data.skip_corrupt,
                                       where=lambda: step_name(state))
    with loading.worker_guard(lambda: step_name(state)):
        for (images, labels), skipped in batches:
            state.skipped_images += skipped
            loss = training_step(run, images, labels, state, bar)
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            stopped = bool(cfg.train.stop_after_steps) and state.global_step >= cfg.train.stop_after_steps
            signal = run.signals.agreed()
            every = cfg.train.checkpoint_every_steps
            if signal or ((stopped or (every and state.global_step % every == 0))
                          and state.step_in_epoch < run.steps_per_epoch):
                state.train_time += time.perf_counter() - started
                started = time.perf_counter()
                save(run, state)
            if signal:
                bar.close()
                preempted(run, state, signal)
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
    row["skipped_images"] = state.skipped_images
    row["train_time_s"] = state.train_time
    if metrics:
        row.update({f"eval_{k}": v for k, v in search_record(run.cfg.eval).items()})
    row.update({f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()})
    state.history.append(row)
    run.scheduler.step()
    state.epoch += 1
    state.step_in_epoch = 0
    state.sums = {}
    save(run, state)  # the checkpoint, then log.csv


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
    write_on_main(run, lambda: atomic_write(run.out / "metrics.json", json.dumps(result, indent=2)))
    return result


def default_out_dir(cfg: Any, when: Optional[float] = None) -> str:
    """``runs/<method>-<dataset>-<YYYYmmdd-HHMMSS>``: a run directory of its own for each run."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return str(Path("runs") / f"{cfg.method}-{cfg.data.name}-{stamp}")


def train(cfg: Any, *, resume: bool | str | None = None, overwrite: bool = False,
          allow_config_change: bool = False, test: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data``; return the last epoch's metrics and where the run lives.
    ``test=False``: the test split is dropped unread (:func:`setup`); only the validation split is scored.

    ``resume``: ``"never"`` (``False``) starts afresh and refuses a directory that holds a run unless
    ``overwrite``; ``"auto"`` continues the directory's checkpoint when there is one; ``"must"``
    (``True``) continues it or fails; ``None`` takes ``train.resume``. A resumed run refuses config changes
    that alter it unless ``allow_config_change`` (:mod:`pygml.app.rundir`).

    Writes to ``cfg.train.out_dir``: ``config.yaml`` (fully resolved), ``env.json``, ``log.csv`` (one row
    per epoch: losses, learning rates, metrics, time), ``checkpoint.pt`` and ``metrics.json``. Raises
    :class:`Preempted` after SIGTERM or SIGUSR1 and :class:`Interrupted` on Ctrl-C.
    """
    mode = resume_mode(cfg.train.resume if resume is None else resume)
    distributed.init_on(select_device(cfg.train.device))
    if cfg.train.out_dir is None:
        if mode != "never":
            raise ConfigError("resuming needs the run's directory: set train.out_dir (a requeued or restarted "
                              "command must name the directory it continues)")
        cfg.train.out_dir = distributed.broadcast_object(default_out_dir(cfg))
    with PreemptionSignals() as signals, open_run(cfg, mode, overwrite=overwrite,
                                                   allow_config_change=allow_config_change) as opened:
        run = setup(cfg, test=test)
        run.signals = signals
        state = restore(run, opened.checkpoint) if opened.resume else RunState()
        start_files(run, opened)
        try:
            while state.epoch < cfg.train.epochs:
                if not train_one_epoch(run, state):
                    break
                end_of_epoch(run, state, evaluate_epoch(run, state.epoch))
                if cfg.train.stop_after_steps and state.global_step >= cfg.train.stop_after_steps:
                    break
                signal = run.signals.agreed() if state.epoch < cfg.train.epochs else None
                if signal:
                    preempted(run, state, signal)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at step {state.global_step}; {resume_hint(run)}") from None
        distributed.barrier()
        return finish(run, state)


__all__ = ["NonFiniteLossError", "Run", "RunState", "compile_backbone", "default_out_dir", "end_of_epoch", "evaluate_epoch",
           "finish", "preempted", "restore", "resume_hint", "save", "seed_everything", "setup", "start_files",
           "step_name", "train", "train_loader", "train_one_epoch", "training_step", "write_on_main"]
