"""Evaluate a stored checkpoint: rebuild its method and data from the stored config, embed, score."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from pygml import distributed
from pygml.checkpoint import load_checkpoint, load_model_state
from pygml.config import Config, apply_overrides, config_from_dict
from pygml.data import build_datasets, build_transforms
from pygml.engine import build_evaluator, embed_dataset, evaluate_run, select_device
from pygml.methods import Method, build_method


def load_trained(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Method, Config]:
    """The trained method of a checkpoint (on the CPU, in eval mode) and its stored config with overrides."""
    ckpt = load_checkpoint(path)
    cfg = apply_overrides(config_from_dict(ckpt["config"]), list(overrides))
    method = build_method(cfg, ckpt["num_classes"])
    load_model_state(method, ckpt["model"], path)
    return method.eval(), cfg


def evaluate_checkpoint(path: str | Path, overrides: Sequence[str] = (), *, device: str = "auto", refine: int = 0,
                        plots: Optional[str] = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its test split (and validation split, if the config has one).

    Launched by torchrun with several processes, every rank embeds a share of each split and rank 0
    evaluates; the other ranks return empty ``metrics``. ``refine`` runs on one process."""
    method, cfg = load_trained(path, overrides)
    dev = select_device(device)
    _, dev = distributed.init_on(dev)  # under torchrun each rank embeds a share and rank 0 evaluates
    method.to(dev)
    _, test_tf = build_transforms(cfg.data)
    splits = build_datasets(cfg.data, test_tf, test_tf)
    if refine:
        if not hasattr(method, "refine"):
            raise ValueError(f"--refine is offered by the intra_batch method only, not {cfg.method!r}")
        if splits.gallery is not None:
            raise ValueError("--refine works in leave-one-out mode only (this dataset has a gallery)")
        feats, labels = embed_dataset(method, splits.query, fn=method.features, batch_size=cfg.eval.batch_size,
                                      device=dev, num_workers=cfg.data.num_workers)
        metrics = {"test": build_evaluator(cfg)(method.refine(feats, refine), labels)}
    else:
        metrics = evaluate_run(method, splits, cfg, dev, progress=distributed.is_main())
    if not distributed.is_main():
        return {"method": cfg.method, "data": cfg.data.name, "metrics": {}}
    if plots:
        from pygml.plots import evaluation_plots

        evaluation_plots(method, splits, metrics, plots, device=dev, batch_size=cfg.eval.batch_size)
    return {"method": cfg.method, "data": cfg.data.name, "metrics": metrics}
