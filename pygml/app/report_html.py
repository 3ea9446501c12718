"""The evaluation report of ``eval.py --report DIR``: one HTML page, ``DIR/index.html``, that opens offline
(every image embedded in it).

It shows the metrics table (test, and validation when the run has one), the Recall@K curve, retrieval
examples (random test queries with their nearest gallery images, hits and misses marked), the worst
queries (those whose first image of their class comes latest: the deepest first hit, ties broken by the
fewest hits among the shown neighbours) and the run's config.

The neighbours shown are found by an exact search of the test embeddings (:mod:`pygml.search`,
leave-one-out by index when the test split is its own gallery); the metrics are those the evaluation
computed (with the run's ``eval.search``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from pygml.app.pages import Tile, esc, page, png_uri, row, table, write_text
from pygml.data import DatasetSplits, RetrievalDataset
from pygml.search import build_search_index, search

#: the deepest rank searched for a query's first hit
DEPTH = 100


def _name(ds: RetrievalDataset, i: int) -> str:
    paths = getattr(ds, "paths", None)
    return Path(paths[i]).name if paths is not None else f"#{i}"


def _image(ds: RetrievalDataset, i: int) -> Any:
    try:
        return ds.load_image(int(i))
    except (OSError, ValueError):  # a missing or corrupt file shows as unreadable
        return None


def _rows(queries: Sequence[int], query_ds: RetrievalDataset, gallery_ds: RetrievalDataset, qy: np.ndarray,
          gy: np.ndarray, ids: np.ndarray, scores: np.ndarray, first: np.ndarray, top: int, depth: int,
          score_name: str) -> str:
    html = []
    for q in queries:
        label = query_ds.class_names[qy[q]]
        found = f"first of its class at rank {first[q]}" if first[q] <= depth else f"none of its class in the top {depth}"
        tiles = [Tile(_image(query_ds, q), ["query", _name(query_ds, q), label, found], query=True)]
        for rank, (j, s) in enumerate(zip(ids[q, :top], scores[q, :top]), start=1):
            tiles.append(Tile(_image(gallery_ds, j), [f"#{rank}  {s:.4f}", _name(gallery_ds, j),
                                                      gallery_ds.class_names[gy[j]]], hit=bool(gy[j] == qy[q])))
        html.append(row(tiles))
    return "".join(html) + f"<p class='note'>#rank {esc(score_name)}; frames: green = same class as the query, red = " \
                           "another class.</p>"


def write_report(method: torch.nn.Module, splits: DatasetSplits, cfg: Any, metrics: Mapping[str, Mapping[str, float]],
                 out_dir: str | Path, *, device: torch.device | str = "cpu", checkpoint: Optional[str] = None,
                 examples: int = 6, worst: int = 6, top: int = 8, seed: int = 0) -> Path:
    """Write ``out_dir/index.html`` (created with its folder) for a trained ``method`` on ``splits`` with the
    evaluation's ``metrics`` (split → metric → value); returns its path."""
    from pygml.app.config import config_to_yaml
    from pygml.app.evaluate import embed_split
    from pygml.app.plots import recall_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(batch_size=cfg.eval.batch_size, device=device, num_workers=cfg.data.num_workers, progress=False)
    query_ds = splits.query
    q, qy = embed_split(method, query_ds, desc="embed test", **kw)
    loo = splits.gallery is None
    gallery_ds = query_ds if loo else splits.gallery
    g, gy = (q, qy) if loo else embed_split(method, gallery_ds, desc="embed gallery", **kw)
    qy, gy = qy.numpy(), gy.numpy()
    index = build_search_index(g, [str(i) for i in range(len(g))], metric=cfg.eval.metric)
    depth = min(DEPTH, len(g) - int(loo))
    scores, ids = search(index, q, depth, exclude=np.arange(len(q)) if loo else None)
    hit = gy[np.maximum(ids, 0)] == qy[:, None]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, depth + 1)
    relevant = np.bincount(gy, minlength=len(gallery_ds.class_names))[qy] - int(loo)
    answerable = np.flatnonzero(relevant > 0)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(answerable, size=min(examples, len(answerable)), replace=False))
    top = min(top, depth)
    precision = hit[:, :top].mean(axis=1)
    worst_queries = answerable[np.lexsort((precision[answerable], -first[answerable]))][:worst]

    splits_shown = [s for s in ("test", "val") if s in metrics]
    names = list(dict.fromkeys(k for s in splits_shown for k in metrics[s]))
    metric_rows = [[n] + [f"{100 * metrics[s][n]:.2f}" if n in metrics[s] else "" for s in splits_shown] for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        curve = png_uri(recall_curves({f"{cfg.method} ({s})": metrics[s] for s in splits_shown}, Path(tmp) / "r.png"))
    protocol = (f"leave-one-out retrieval in {len(query_ds):,} test images of {query_ds.num_classes:,} classes"
                if loo else f"{len(query_ds):,} queries against a gallery of {len(gallery_ds):,} images "
                            f"({gallery_ds.num_classes:,} classes)")
    facts = [("method", cfg.method), ("data", f"{cfg.data.name} ({cfg.data.root or 'default root'})"),
             ("checkpoint", checkpoint or ""), ("test", protocol),
             ("search behind the metrics", cfg.eval.search + ("" if cfg.eval.search == "exact"
                                                              else f", nprobe {cfg.eval.nprobe}")),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    body = [
        table(["", ""], facts, cls="facts"),
        "<h2>Metrics (%)</h2>", table(["metric", *splits_shown], metric_rows),
        "<p class='note'>Recall@K: the share of queries with an image of their class among the K nearest; MAP@R and "
        "R-precision: how many of the R images of the query's class come first (Musgrave et al. 2020).</p>",
        "<h2>Recall@K</h2>", f'<img class="curve" src="{curve}" alt="Recall@K curve" style="max-width: 560px">',
        f"<h2>Retrieval examples ({len(shown)} random test queries)</h2>",
        _rows(shown, query_ds, gallery_ds, qy, gy, ids, scores, first, top, depth, index.score_name),
        f"<h2>Worst queries ({len(worst_queries)})</h2>",
        "<p class='note'>The queries whose first image of their own class comes latest.</p>",
        _rows(worst_queries, query_ds, gallery_ds, qy, gy, ids, scores, first, top, depth, index.score_name),
        "<h2>Config</h2>", f"<pre>{esc(config_to_yaml(cfg))}</pre>",
    ]
    return write_text(out / "index.html", page(f"pygml evaluation: {cfg.method} on {cfg.data.name}", "\n".join(body)))


def evaluation_report(checkpoint: str | Path, overrides: Sequence[str], metrics: Mapping[str, Mapping[str, float]],
                      out_dir: str | Path, *, device: str = "auto") -> Path:
    """:func:`write_report` for a checkpoint (its method and data built again from its config with
    ``overrides``), with the metrics ``eval.py`` computed."""
    from pygml.app.builders import build_datasets
    from pygml.app.evaluate import load_trained, select_device

    method, cfg = load_trained(checkpoint, overrides)
    dev = select_device(device)
    return write_report(method.to(dev), build_datasets(cfg), cfg, metrics, out_dir, device=dev,
                        checkpoint=str(checkpoint))


__all__ = ["DEPTH", "evaluation_report", "write_report"]
