"""Figures a person reads at a glance: Recall@K curves, training curves, a retrieval grid, a batch graph.

Every function writes one PNG and returns its path. matplotlib runs with the non-interactive Agg
backend, so nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from pygml.graph import LABEL, VISUAL, batch_graph  # noqa: E402
from pygml.inference import embed_dataset  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _recall_points(metrics: Mapping[str, float]) -> tuple[list[int], list[float]]:
    ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("recall@"))
    return ks, [100 * metrics[f"recall@{k}"] for k in ks]


def recall_curves(results: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "Recall@K") -> Path:
    """One line per run: Recall@K (%) against K (log scale). ``results``: name → metrics dict."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, metrics in results.items():
        ks, values = _recall_points(metrics)
        ax.plot(ks, values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(logs: Mapping[str, str | Path | pd.DataFrame], path: str | Path) -> Path:
    """Loss, test Recall@1 and the kNN label homophily of test batches per epoch, one line per run.
    ``logs``: name → ``log.csv`` (or its frame)."""
    fig, (ax_loss, ax_r1, ax_h) = plt.subplots(1, 3, figsize=(15, 4))
    for name, log in logs.items():
        df = log if isinstance(log, pd.DataFrame) else pd.read_csv(log)
        ax_loss.plot(df["epoch"], df["loss"], marker=".", label=name)
        if "test_recall@1" in df:
            ok = df["test_recall@1"].notna()
            ax_r1.plot(df.loc[ok, "epoch"], 100 * df.loc[ok, "test_recall@1"], marker=".", label=name)
        if "test_knn_homophily" in df:
            ok = df["test_knn_homophily"].notna()
            ax_h.plot(df.loc[ok, "epoch"], df.loc[ok, "test_knn_homophily"], marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_r1.set(xlabel="epoch", ylabel="Recall@1 (%)", title="test Recall@1 (curves only, no selection)")
    ax_h.set(xlabel="epoch", ylabel="edge homophily", title="kNN edges within a class (P×K test batches)")
    for ax in (ax_loss, ax_r1, ax_h):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def _as_image(t: Tensor) -> np.ndarray:
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def retrieval_grid(query_images: Sequence[Tensor], query_labels: Sequence[int], neighbour_images: Sequence[Sequence[Tensor]],
                   neighbour_labels: Sequence[Sequence[int]], path: str | Path) -> Path:
    """Each row: a query, then its nearest neighbours, framed green when they share its label, red otherwise."""
    rows, cols = len(query_images), 1 + max(len(n) for n in neighbour_images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(_as_image(query_images[r]))
        axes[r, 0].set_title("query", fontsize=7)
        for c, (img, lab) in enumerate(zip(neighbour_images[r], neighbour_labels[r]), start=1):
            axes[r, c].imshow(_as_image(img))
            color = "#1a9850" if lab == query_labels[r] else "#d73027"
            for spine in axes[r, c].spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
            axes[r, c].set_title(f"#{c}", fontsize=7, color=color)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("retrieval: green = same class, red = other class", fontsize=9)
    return _save(fig, path)


def batch_graph_drawing(data: Data, path: str | Path, title: Optional[str] = None, seed: int = 0) -> Path:
    """Nodes coloured by class; visual kNN edges grey arrows, label edges dashed in the class colour."""
    import networkx as nx

    n = data.num_nodes
    y = data.y.tolist() if getattr(data, "y", None) is not None else [0] * n
    classes = sorted(set(y))
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    colour = {c: cmap(i) for i, c in enumerate(classes)}
    ei, et = data.edge_index.cpu(), data.edge_type.cpu()
    visual = [(int(j), int(i)) for (j, i), t in zip(ei.t().tolist(), et.tolist()) if t == VISUAL and j != i]
    label = [(int(j), int(i)) for (j, i), t in zip(ei.t().tolist(), et.tolist()) if t == LABEL and j < i]
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(visual)
    pos = nx.spring_layout(g.to_undirected(), seed=seed, k=1.5 / max(np.sqrt(n), 1))
    fig, ax = plt.subplots(figsize=(7, 7))
    nx.draw_networkx_edges(g, pos, edgelist=visual, ax=ax, edge_color="#999999", width=0.6, arrows=True,
                           arrowsize=6, alpha=0.7)
    nx.draw_networkx_edges(g.to_undirected(), pos, edgelist=label, ax=ax, style="dashed", width=1.2,
                           edge_color=[colour[y[i]] for _, i in label], alpha=0.8)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=70, node_color=[colour[c] for c in y], edgecolors="black",
                           linewidths=0.4)
    ax.set_title(title or f"batch graph: {n} samples, {len(classes)} classes; grey = visual kNN, dashed = same label",
                 fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def evaluation_plots(method, splits, metrics: Mapping[str, Mapping[str, float]], out_dir: str | Path, *,
                     name: str = "method", device: torch.device | str = "cpu", batch_size: int = 256,
                     queries: int = 8, top: int = 8, graph_classes: int = 8, graph_per_class: int = 4, k: int = 4,
                     seed: int = 0) -> list[Path]:
    """The figures of ``eval.py --plots``: Recall@K curve, retrieval grid and one batch graph of test data."""
    out = Path(out_dir)
    paths = [recall_curves({f"{name} (test)": metrics["test"]}, out / "recall_at_k.png")]
    query_ds, gallery_ds = splits.query, splits.gallery or splits.query
    kw = dict(batch_size=batch_size, device=device, progress=False, model=method)
    q, qy = embed_dataset(method.embed, query_ds, **kw)
    g, gy = (q, qy) if splits.gallery is None else embed_dataset(method.embed, gallery_ds, **kw)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(q), size=min(queries, len(q)), replace=False)
    sims = q[picks] @ g.t()
    if splits.gallery is None:
        sims[torch.arange(len(picks)), torch.as_tensor(picks)] = -float("inf")
    nbrs = sims.topk(min(top, g.size(0) - 1), dim=1).indices
    paths.append(retrieval_grid(
        [query_ds[int(i)][0] for i in picks], [int(qy[i]) for i in picks],
        [[gallery_ds[int(j)][0] for j in row] for row in nbrs], [[int(gy[j]) for j in row] for row in nbrs],
        out / "retrieval_grid.png"))
    labels = qy.numpy()
    classes = rng.choice(np.unique(labels), size=min(graph_classes, len(np.unique(labels))), replace=False)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=min(graph_per_class, int((labels == c).sum())),
                                     replace=False) for c in classes])
    data = batch_graph(q[idx], qy[idx], k=k)
    paths.append(batch_graph_drawing(data, out / "batch_graph.png"))
    return paths
