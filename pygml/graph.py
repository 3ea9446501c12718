"""Graphs over a mini-batch, as PyTorch Geometric data. Pure functions of tensors.

:func:`batch_graph` turns the B rows of a batch into a :class:`torch_geometric.data.Data` graph with two
relations told apart by ``edge_type``:

* ``VISUAL`` (0): each node's k most similar rows (or every row: the fully connected graph), plus
  self loops when asked;
* ``LABEL`` (1): every other row with the same label.

Edges follow PyG's convention: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i, and a
layer aggregates at i over its in-edges j → i. Edges are sorted by target, then source.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

VISUAL = 0
LABEL = 1


def _check_embeddings(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_rows, channels), got shape {tuple(x.shape)}")
    if x.size(0) == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_labels(y: Tensor, n: int, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.dim() != 1 or y.numel() != n:
        raise ValueError(f"{name} must have shape ({n},) to match the rows, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    return y


def similarity(x: Tensor, metric: str = "cosine") -> Tensor:
    """Pairwise similarity (B, B): cosine, or the negative squared Euclidean distance."""
    if metric == "cosine":
        xn = F.normalize(x, dim=1)
        return xn @ xn.t()
    if metric == "euclidean":
        return -torch.cdist(x, x).pow(2)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def _sort_by_target(edge_index: Tensor, num_nodes: int, *others: Tensor) -> tuple[Tensor, ...]:
    order = torch.argsort(edge_index[1] * num_nodes + edge_index[0])
    return (edge_index[:, order], *(t[order] for t in others))


def batch_graph(
    x: Tensor,
    y: Optional[Tensor] = None,
    *,
    k: Optional[int] = None,
    label_edges: bool = True,
    self_loops: bool = True,
    metric: str = "cosine",
) -> Data:
    r"""The graph of a mini-batch.

    Args:
        x: row features, shape (B, D).
        y: integer labels, shape (B,); required for label edges.
        k: neighbours per node in the visual graph (its own row excluded); ``None`` = fully connected.
            ``k ≥ B − 1`` gives every other row.
        label_edges: add edges j → i for every j ≠ i with y_j = y_i (``edge_type`` 1).
        self_loops: add i → i to the visual relation.
        metric: ``cosine`` or ``euclidean`` (negative squared distance) for the kNN and ``edge_attr``.

    Returns:
        ``Data(x, y, edge_index (2, E), edge_type (E,), edge_attr (E,))`` with ``edge_attr`` the
        (detached) similarity of the two rows. Edges are sorted by target node.
    """
    _check_embeddings(x)
    n = x.size(0)
    if y is not None:
        y = _check_labels(y, n).to(x.device)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int or None, got {k!r}")
    if label_edges and y is None:
        raise ValueError("label_edges=True needs the labels y")
    with torch.no_grad():
        sim = similarity(x.detach(), metric)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        if k is None or k >= n - 1:
            adj = ~eye
        else:
            scores = sim.masked_fill(eye, -math.inf)
            nbr = scores.topk(k, dim=1).indices  # nbr[i] are i's neighbours j
            adj = torch.zeros(n, n, dtype=torch.bool, device=x.device)
            adj.scatter_(1, nbr, True)
        if self_loops:
            adj = adj | eye
        tgt, src = adj.nonzero(as_tuple=True)  # adj[i, j]: edge j -> i
        parts = [torch.stack([src, tgt])]
        types = [torch.full((src.numel(),), VISUAL, dtype=torch.long, device=x.device)]
        if label_edges:
            same = (y.view(-1, 1) == y.view(1, -1)) & ~eye
            lt, ls = same.nonzero(as_tuple=True)
            parts.append(torch.stack([ls, lt]))
            types.append(torch.full((ls.numel(),), LABEL, dtype=torch.long, device=x.device))
        edge_index = torch.cat(parts, dim=1)
        edge_type = torch.cat(types)
        edge_index, edge_type = _sort_by_target(edge_index, n, edge_type)
        edge_attr = sim[edge_index[1], edge_index[0]]
    data = Data(x=x, edge_index=edge_index, edge_type=edge_type, edge_attr=edge_attr, num_nodes=n)
    if y is not None:
        data.y = y
    return data


def edges_of_type(data: Data, edge_type: int) -> Tensor:
    """The ``edge_index`` of one relation of a :func:`batch_graph` (``VISUAL`` or ``LABEL``)."""
    if getattr(data, "edge_type", None) is None:
        raise ValueError("the graph has no edge_type; build it with pygml.graph.batch_graph")
    return data.edge_index[:, data.edge_type == edge_type]


__all__ = ["LABEL", "VISUAL", "batch_graph", "edges_of_type", "similarity"]
