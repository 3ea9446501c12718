"""Evaluating a run: embedding its splits (sharded across processes under torchrun), scoring them with the
shared evaluator, and evaluating a stored checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from pygml.app import distributed
from pygml.app.builders import (build_datasets, build_evaluator, build_method, check_data, check_recall_at,
                                 data_record)
from pygml.app.checkpoint import load_checkpoint, load_model_state
from pygml.app.config import apply_overrides, config_from_dict
from pygml.app.reports import search_record
from pygml.data import DatasetSplits, PKSampler
from pygml.evaluation import RetrievalEvaluator
from pygml.graph import knn_homophily
from pygml.inference import embed_dataset
from pygml.methods import Method


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for but absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use cpu or auto")
    return device


def embed_split(method: Method, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
                num_workers: int = 0, progress: bool = True, desc: str = "embed",
                fn: Optional[Callable[[Tensor], Tensor]] = None,
                sharded: bool = False) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """:func:`pygml.inference.embed_dataset` of ``method.embed`` (or ``fn``).

    With ``sharded=True`` and several processes (torchrun), each rank embeds its contiguous share of the
    dataset (:func:`pygml.app.distributed.shard`) and rank 0 receives every row, in dataset order; the
    other ranks get ``(None, None)``. Every rank must then call it (it is a collective). Without a
    process group ``sharded`` changes nothing."""
    share = distributed.shard(len(dataset)) if sharded else range(len(dataset))
    if not share:
        raise ValueError(f"{desc}: a dataset of {len(dataset)} items cannot be shared among "
                         f"{distributed.world_size()} processes")
    if len(share) != len(dataset):
        dataset = Subset(dataset, share)
    emb, labels = embed_dataset(fn or method.embed, dataset, batch_size=batch_size, device=device,
                                num_workers=num_workers, progress=progress, desc=desc, model=method)
    if sharded:
        return distributed.gather_rows(emb), distributed.gather_rows(labels)
    return emb, labels


def batch_homophily(embeddings: Tensor, labels: Tensor, classes_per_batch: int, samples_per_class: int,
                    batches: int = 20, seed: int = 0) -> float:
    """Mean label homophily of the visual kNN graph over P×K batches drawn from a set of embeddings:
    how often a sample's ``K − 1`` nearest batch neighbours share its class (1 = every neighbour does)."""
    sampler = PKSampler(labels.numpy(), min(classes_per_batch, int(labels.unique().numel())), samples_per_class,
                        seed=seed)
    k = max(samples_per_class - 1, 1)
    values = [knn_homophily(embeddings[idx], labels[idx], k) for idx, _ in zip(sampler, range(batches))]
    return float(np.mean(values))


def evaluate_splits(method: Method, splits: DatasetSplits, evaluator: RetrievalEvaluator, *, batch_size: int,
                    device: torch.device, num_workers: int = 0, progress: bool = True,
                    which: tuple[str, ...] = ("val", "test"),
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
        emb, y = embed_split(method, splits.val, desc="embed val", **kw)
        if evaluates:
            out["val"] = evaluator(emb, y)
    if "test" in which:
        q, qy = embed_split(method, splits.query, desc="embed test", **kw)
        g, gy = (None, None) if splits.gallery is None else embed_split(
            method, splits.gallery, desc="embed gallery", **kw)
        if evaluates:
            out["test"] = evaluator(q, qy) if splits.gallery is None else evaluator(q, qy, g, gy)
            if homophily is not None:
                out["test"]["knn_homophily"] = batch_homophily(q, qy, *homophily)
    return out


def evaluate_run(method: Method, splits: DatasetSplits, cfg: Any, device: torch.device, *, progress: bool = True,
                 which: tuple[str, ...] = ("val", "test"),
                 evaluator: Optional[RetrievalEvaluator] = None) -> dict[str, dict[str, float]]:
    """:func:`evaluate_splits` with a run's settings: its evaluator, batch size, workers, and the kNN
    homophily measured on batches of the run's P×K shape."""
    return evaluate_splits(method, splits, evaluator or build_evaluator(cfg), batch_size=cfg.eval.batch_size,
                           device=device, num_workers=cfg.data.num_workers, progress=progress, which=which,
                           homophily=(cfg.train.classes_per_batch, cfg.train.samples_per_class))


def _load(path: str | Path, overrides: Sequence[str]) -> tuple[Method, Any, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    cfg = apply_overrides(config_from_dict(ckpt["config"]), list(overrides))
    method = build_method(cfg, ckpt["num_classes"])
    load_model_state(method, ckpt["model"], path)
    return method.eval(), cfg, ckpt


def load_trained(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Method, Any]:
    """The trained method of a checkpoint (on the CPU, in eval mode) and its stored config with overrides."""
    method, cfg, _ = _load(path, overrides)
    return method, cfg


def evaluate_checkpoint(path: str | Path, overrides: Sequence[str] = (), *, device: str = "auto", refine: int = 0,
                        plots: Optional[str] = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its test split (and validation split, if the config has one).

    Launched by torchrun with several processes, every rank embeds a share of each split and rank 0
    evaluates; the other ranks return empty ``metrics``. ``refine`` runs on one process."""
    method, cfg, ckpt = _load(path, overrides)
    dev = select_device(device)
    _, dev = distributed.init_on(dev)  # under torchrun each rank embeds a share and rank 0 evaluates
    method.to(dev)
    evaluator = build_evaluator(cfg)
    splits = build_datasets(cfg)
    check_recall_at(cfg, splits)
    check_data(ckpt.get("data"), data_record(cfg, splits), f"checkpoint {path}")
    if refine:
        if not hasattr(method, "refine"):
            raise ValueError(f"--refine is offered by the intra_batch method only, not {cfg.method!r}")
        if splits.gallery is not None:
            raise ValueError("--refine works in leave-one-out mode only (this dataset has a gallery)")
        feats, labels = embed_split(method, splits.query, fn=method.features, batch_size=cfg.eval.batch_size,
                                    device=dev, num_workers=cfg.data.num_workers)
        metrics = {"test": evaluator(method.refine(feats, refine), labels)}
    else:
        metrics = evaluate_run(method, splits, cfg, dev, progress=distributed.is_main(), evaluator=evaluator)
    if not distributed.is_main():
        return {"method": cfg.method, "data": cfg.data.name, "metrics": {}, "eval": search_record(cfg.eval)}
    if plots:
        from pygml.app.plots import evaluation_plots

        evaluation_plots(method, splits, metrics, plots, name=cfg.method, dataset=cfg.data.name,
                         checkpoint=str(path), graph=getattr(method, "graph", None) is not None, device=dev,
                         batch_size=cfg.eval.batch_size)
    return {"method": cfg.method, "data": cfg.data.name, "metrics": metrics, "eval": search_record(cfg.eval)}


__all__ = ["batch_homophily", "embed_split", "evaluate_checkpoint", "evaluate_run", "evaluate_splits",
           "load_trained", "select_device"]
