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
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from pygml.graph import LABEL, VISUAL, batch_graph  # noqa: E402
from pygml.inference import embed_dataset  # noqa: E402
from pygml.neighbors import knn  # noqa: E402

#: colours of the two edge types of a batch graph; classes take their colours from a palette without them
VISUAL_EDGE_COLOUR = "#8c8c8c"
LABEL_EDGE_COLOUR = "#000000"
HIT, MISS = "#1a9850", "#d73027"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _recall_points(metrics: Mapping[str, float]) -> tuple[list[int], list[float]]:
    ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("recall@"))
    return ks, [100 * metrics[f"recall@{k}"] for k in ks]


def recall_curves(results: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "Recall@K",
                  errors: Optional[Mapping[str, Mapping[str, float]]] = None) -> Path:
    """One line per run: Recall@K (%) against K, the K of the metrics marked on a log axis.

    ``results``: name → metrics dict (fractions); ``errors``: name → the standard deviations of the same
    metrics (fractions), drawn as error bars (e.g. over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    all_ks: set[int] = set()
    for name, metrics in results.items():
        ks, values = _recall_points(metrics)
        all_ks.update(ks)
        err = None
        if errors and name in errors:
            err = [100 * errors[name].get(f"recall@{k}", 0.0) for k in ks]
        ax.errorbar(ks, values, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted(all_ks)
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(results) > 1 or errors:
        ax.legend(fontsize=8)
    return _save(fig, path)


#: the panels of :func:`training_curves`: (log column, axis label, panel title, scale)
PANELS = (
    ("loss", "training loss", "loss", 1.0),
    ("test_recall@1", "Recall@1 (%)", "test Recall@1 (curves only, no selection)", 100.0),
    ("test_knn_homophily", "share within the class", "kNN edges within a class (P×K test batches)", 1.0),
)


def training_curves(logs: Mapping[str, str | Path | pd.DataFrame], path: str | Path) -> Path:
    """Loss, test Recall@1 and the kNN label homophily of test batches per epoch, one line per run; a
    panel is drawn only where some run has two or more points, and one legend serves every panel.
    ``logs``: name → ``log.csv`` (or its frame)."""
    frames = {name: (log if isinstance(log, pd.DataFrame) else pd.read_csv(log)) for name, log in logs.items()}
    panels = [p for p in PANELS if any(p[0] in df and df[p[0]].notna().sum() >= 2 for df in frames.values())]
    if not panels:
        raise ValueError("training_curves needs a log with at least two epochs of some curve")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, layout="constrained")
    for ax, (column, ylabel, title, scale) in zip(axes[0], panels):
        for name, df in frames.items():
            if column in df:
                ok = df[column].notna()
                ax.plot(df.loc[ok, "epoch"], scale * df.loc[ok, column], marker=".", label=name)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(frames) > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(frames), 4), fontsize=8)
    return _save(fig, path)


def _as_image(t: Tensor) -> np.ndarray:
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def retrieval_grid(query_images: Sequence[Tensor], query_labels: Sequence[int],
                   neighbour_images: Sequence[Sequence[Tensor]], neighbour_labels: Sequence[Sequence[int]],
                   path: str | Path, *, similarities: Optional[Sequence[Sequence[float]]] = None,
                   class_names: Optional[Sequence[str]] = None, title: str = "retrieval") -> Path:
    """Each row: a query, then its nearest neighbours, framed green when they share its class, red
    otherwise; each image titled with its class name and each neighbour with its similarity."""
    rows, cols = len(query_images), 1 + max(len(n) for n in neighbour_images)
    height = 1.45 * rows + 0.35
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, height), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.45})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - 0.55 / height)

    def name(label: int) -> str:
        text = class_names[label] if class_names is not None else str(label)
        return text if len(text) <= 14 else text[:13] + "…"

    for r in range(rows):
        axes[r, 0].imshow(_as_image(query_images[r]))
        axes[r, 0].set_title(f"query\n{name(query_labels[r])}", fontsize=6)
        for spine in axes[r, 0].spines.values():
            spine.set_linewidth(2.5)
        for c, (img, lab) in enumerate(zip(neighbour_images[r], neighbour_labels[r]), start=1):
            axes[r, c].imshow(_as_image(img))
            colour = HIT if lab == query_labels[r] else MISS
            for spine in axes[r, c].spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
            sim = f" {similarities[r][c - 1]:.3f}" if similarities is not None else ""
            axes[r, c].set_title(f"#{c}{sim}\n{name(lab)}", fontsize=6, color=colour)
        for c in range(1 + len(neighbour_images[r]), cols):
            axes[r, c].set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}: green = same class, red = another class; #rank similarity", fontsize=8, y=1.0)
    return _save(fig, path)


def _class_palette(n: int) -> list:
    """``n`` colours for classes, none of them the grey or black of the edge types."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    colours = [c for i in range(cmap.N) if (c := cmap(i)) and not np.allclose(c[:3], c[0], atol=0.06)]
    return [colours[i % len(colours)] for i in range(n)]


def batch_graph_drawing(data: Data, path: str | Path, title: Optional[str] = None, seed: int = 0,
                        class_names: Optional[Sequence[str]] = None) -> Path:
    """Nodes coloured by class; visual kNN edges as grey arrows, label edges as dashed black lines, with
    a legend of both edge types and the classes (named by ``class_names[label]`` when given)."""
    import networkx as nx

    n = data.num_nodes
    y = data.y.tolist() if getattr(data, "y", None) is not None else [0] * n
    classes = sorted(set(y))
    colour = dict(zip(classes, _class_palette(len(classes))))
    pairs, kinds = data.edge_index.cpu().t().tolist(), data.edge_type.cpu().tolist()
    visual = [(j, i) for (j, i), t in zip(pairs, kinds) if t == VISUAL and j != i]
    label = [(j, i) for (j, i), t in zip(pairs, kinds) if t == LABEL and j < i]
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(visual)
    pos = nx.spring_layout(g.to_undirected(), seed=seed, k=1.5 / max(np.sqrt(n), 1))
    fig, ax = plt.subplots(figsize=(7, 7))
    nx.draw_networkx_edges(g, pos, edgelist=visual, ax=ax, edge_color=VISUAL_EDGE_COLOUR, width=0.6, arrows=True,
                           arrowsize=6, alpha=0.7)
    nx.draw_networkx_edges(g.to_undirected(), pos, edgelist=label, ax=ax, style="dashed", width=0.9,
                           edge_color=LABEL_EDGE_COLOUR, alpha=0.6)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=80, node_color=[colour[c] for c in y], edgecolors="black",
                           linewidths=0.4)
    handles = [Line2D([], [], color=VISUAL_EDGE_COLOUR, lw=1.2, label="visual kNN edge j → i"),
               Line2D([], [], color=LABEL_EDGE_COLOUR, lw=1.2, ls="--", label="label edge (same class)")]
    handles += [Line2D([], [], marker="o", ls="", markerfacecolor=colour[c], markeredgecolor="black",
                       label=class_names[c] if class_names is not None else f"class {c}") for c in classes[:12]]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title or f"batch graph: {n} images of {len(classes)} classes", fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def evaluation_plots(method, splits, metrics: Mapping[str, Mapping[str, float]], out_dir: str | Path, *,
                     name: str = "method", dataset: str = "", checkpoint: str = "", graph: bool = True,
                     device: torch.device | str = "cpu", batch_size: int = 256, queries: int = 8, top: int = 8,
                     graph_classes: int = 8, graph_per_class: int = 4, k: int = 4, seed: int = 0) -> list[Path]:
    """The figures of ``eval.py --plots``: Recall@K curve, retrieval grid, and, for a method that trains
    with a batch graph (``graph``), one batch graph of test images."""
    out = Path(out_dir)
    where = " ".join(part for part in (dataset and f"{dataset} test split", checkpoint and f"({checkpoint})") if part)
    paths = [recall_curves({name: metrics["test"]}, out / "recall_at_k.png", title=f"Recall@K of {name} on {where}")]
    query_ds, gallery_ds = splits.query, splits.gallery or splits.query
    kw = dict(batch_size=batch_size, device=device, progress=False, model=method)
    q, qy = embed_dataset(method.embed, query_ds, **kw)
    g, gy = (q, qy) if splits.gallery is None else embed_dataset(method.embed, gallery_ds, **kw)
    rng = np.random.default_rng(seed)
    picks = torch.as_tensor(rng.choice(len(q), size=min(queries, len(q)), replace=False))
    sims, nbrs = (knn(q[picks], min(top, g.size(0) - 1), g, exclude=picks) if splits.gallery is None
                  else knn(q[picks], min(top, g.size(0)), g))
    paths.append(retrieval_grid(
        [query_ds[int(i)][0] for i in picks], [int(qy[i]) for i in picks],
        [[gallery_ds[int(j)][0] for j in row] for row in nbrs], [[int(gy[j]) for j in row] for row in nbrs],
        out / "retrieval_grid.png", similarities=sims.tolist(), class_names=getattr(query_ds, "class_names", None),
        title=f"{name} on {where}"))
    if graph:
        labels = qy.numpy()
        classes = rng.choice(np.unique(labels), size=min(graph_classes, len(np.unique(labels))), replace=False)
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=min(graph_per_class, int((labels == c).sum())),
                                         replace=False) for c in classes])
        paths.append(batch_graph_drawing(batch_graph(q[idx], qy[idx], k=k), out / "batch_graph.png",
                                         title=f"batch graph of {len(idx)} test images ({name}, k={k})",
                                         class_names=getattr(query_ds, "class_names", None)))
    return paths
