"""What a run writes for people: the metrics table, a CSV row of metrics, the record of the environment,
and the logging set-up of the command-line tools."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

#: the logger every pygml message goes through (the library's modules log under ``pygml.*``)
log = logging.getLogger("pygml")


def setup_logging(level: int = logging.INFO) -> None:
    """Messages of ``pygml.*`` loggers to stderr, one line each; called by the command-line tools only
    (a library leaves logging to its application)."""
    root = logging.getLogger("pygml")
    if not any(getattr(h, "_pygml", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._pygml = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


#: what a metric means, printed under a table that shows it
NOTES = {
    "knn_homophily": "knn_homophily: in P×K batches of test images, the share of each image's K-1 nearest neighbours "
                     "of its class: how closely a batch graph's visual edges follow the classes",
}


def metrics_table(metrics: dict[str, float], search: Optional[dict[str, Any]] = None) -> str:
    """The metrics as an aligned two-column text table, values in percent with 2 decimals, with notes for
    the metrics that need one and, for an approximate search (``search={"search": ..., "nprobe": ...}``),
    the index the numbers come from."""
    width = max([len("metric")] + [len(name) for name in metrics])
    lines = [f"{'metric':<{width}}  {'%':>7}", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {100.0 * value:7.2f}" for name, value in metrics.items()]
    lines += [note for name, note in NOTES.items() if name in metrics]
    if search and search.get("search", "exact") != "exact":
        lines.append(f"approximate search: faiss index {search['search']!r}, nprobe {search.get('nprobe')} "
                     "(a relevant image the index misses counts as a miss)")
    return "\n".join(lines)


def search_record(eval_settings: Any) -> dict[str, Any]:
    """How the neighbours behind a run's metrics were searched: ``{"search": "exact"}`` or the faiss index
    factory string and its ``nprobe``; stored beside the metrics."""
    if eval_settings.search == "exact":
        return {"search": "exact"}
    return {"search": eval_settings.search, "nprobe": eval_settings.nprobe}


def metrics_frame(metrics: dict[str, float]) -> pd.DataFrame:
    """The metrics as a one-row DataFrame (fractions, one column per metric), for CSV logs."""
    return pd.DataFrame([metrics], columns=list(metrics))


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


__all__ = ["NOTES", "environment", "log", "metrics_frame", "metrics_table", "search_record", "setup_logging"]
