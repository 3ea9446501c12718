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
from torch_geometric.data import Data, HeteroData

from pygml.checks import value_checks_enabled
from pygml.neighbors import top_k

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
    if value_checks_enabled() and not bool(torch.isfinite(x).all()):
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
            _, nbr = top_k(sim, k, exclude=torch.arange(n, device=x.device))  # nbr[i] are i's neighbours j
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


def knn_homophily(x: Tensor, y: Tensor, k: int, metric: str = "cosine") -> float:
    """Label homophily of the visual kNN edges: the fraction of edges j → i (i's k nearest rows, itself
    excluded) with y_j = y_i, as :func:`torch_geometric.utils.homophily` counts it (``method="edge"``)."""
    from torch_geometric.utils import homophily

    graph = batch_graph(x, y, k=k, label_edges=False, self_loops=False, metric=metric)
    return float(homophily(graph.edge_index, graph.y, method="edge"))


def edges_of_type(data: Data, edge_type: int) -> Tensor:
    """The ``edge_index`` of one relation of a :func:`batch_graph` (``VISUAL`` or ``LABEL``)."""
    if getattr(data, "edge_type", None) is None:
        raise ValueError("the graph has no edge_type; build it with pygml.graph.batch_graph")
    return data.edge_index[:, data.edge_type == edge_type]


__all__ = ["LABEL", "VISUAL", "batch_graph", "edges_of_type", "knn_homophily", "proxy_graph", "select_proxies", "similarity"]


def select_proxies(sim: Tensor, labels: Tensor, proxy_labels: Tensor, k: int, *, keep_own: bool = True,
                   own_per_row: Optional[int] = None) -> Tensor:
    r"""The proxies each sample keeps in the ProxyGML subgraph (Zhu et al., NeurIPS 2020, Sec. 3.2).

    With ``keep_own`` (the paper's :math:`S_{pos}` term) a sample keeps its own class's proxies (the
    k most similar of them if it has more), then the most similar proxies of the other classes, k in
    all: the first k by the key (is own class, similarity). Own proxies are taken explicitly and the
    others ranked with the own ones masked out, so no constant is added to the similarities. Without
    ``keep_own`` it is the plain top-k of the similarities.

    Args:
        sim: sample-to-proxy similarities, shape (B, P). Only compared, never differentiated.
        labels: class of each sample, shape (B,).
        proxy_labels: class of each proxy, shape (P,).
        k: proxies kept per sample; ``k ≥ P`` keeps every proxy.
        keep_own: always keep the sample's own-class proxies (at most k of them).
        own_per_row: when every sample's class has exactly this many proxies (ProxyGML's N per class),
            saying so skips counting them, a read of tensor values.

    Returns:
        Long tensor (B, k') with k' = min(k, P): row i holds the indices of the proxies sample i keeps,
        own-class proxies first, then the others by decreasing similarity.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if sim.dim() != 2:
        raise ValueError(f"sim must be 2-D (samples, proxies), got shape {tuple(sim.shape)}")
    num_rows, num_proxies = sim.shape
    labels = _check_labels(labels, num_rows, "labels").to(sim.device)
    proxy_labels = _check_labels(proxy_labels, num_proxies, "proxy_labels").to(sim.device)
    k = min(k, num_proxies)
    with torch.no_grad():
        if not keep_own:
            return sim.topk(k, dim=1).indices
        own = labels.view(-1, 1) == proxy_labels.view(1, -1)
        num_own = own.sum(dim=1, keepdim=True)
        if own_per_row is None:
            fewest, most = (int(v) for v in torch.aminmax(num_own))
        else:
            fewest = most = own_per_row
        if fewest == most <= k:  # every row keeps all of its `most` own proxies: no ranking among them
            mine = own.nonzero()[:, 1].view(num_rows, most)
            if most == k:
                return mine
            others = sim.masked_fill(own, -math.inf).topk(k - most, dim=1).indices
            return torch.cat([mine, others], dim=1)
        m = min(k, most)
        others = sim.masked_fill(own, -math.inf).topk(k, dim=1).indices
        mine = sim.masked_fill(~own, -math.inf).topk(m, dim=1).indices
        # Column c of `mine` is a real own proxy when c < num_own, column c of `others` a real other
        # proxy when c < P - num_own; the first k real candidates of each row are kept.
        real = torch.cat([torch.arange(m, device=sim.device) < num_own,
                          torch.arange(k, device=sim.device) < num_proxies - num_own], dim=1)
        keep = real & (real.cumsum(dim=1) <= k)
        return torch.cat([mine, others], dim=1)[keep].view(num_rows, k)


def proxy_graph(x: Tensor, proxies: Tensor, labels: Tensor, proxy_labels: Tensor, k: int, *,
                keep_own: bool = True) -> HeteroData:
    r"""The sparse sample–proxy bipartite subgraph of ProxyGML (Zhu et al., NeurIPS 2020, Sec. 3.2).

    Every sample i is linked to the k proxies it keeps (:func:`select_proxies`: its own class's
    proxies always among them when ``keep_own``), each edge weighted by the cosine similarity
    :math:`S_{ij} = \langle x_i, p_j\rangle / (\lVert x_i\rVert \lVert p_j\rVert)`. Edges point from proxy to
    sample, the direction of the reverse label propagation :math:`Z = W Y_p` (a sample gathers the
    labels of its proxies).

    Args:
        x: sample embeddings, shape (B, d).
        proxies: proxy vectors, shape (P, d).
        labels: class of each sample, shape (B,).
        proxy_labels: class of each proxy, shape (P,).
        k: proxies kept per sample (``k ≥ P`` keeps every proxy).
        keep_own: always keep the sample's own-class proxies.

    Returns:
        :class:`~torch_geometric.data.HeteroData` with node types ``sample`` (``x``, ``y``) and ``proxy``
        (``x``, ``y``) and the edge type ``('proxy', 'to', 'sample')``: ``edge_index`` (2, B·k') with
        row 0 the proxy (source) and row 1 the sample (target), grouped by sample, and ``edge_attr``
        (B·k',) the similarity, differentiable with respect to ``x`` and ``proxies``.
    """
    _check_embeddings(x, "x")
    _check_embeddings(proxies, "proxies")
    if proxies.size(1) != x.size(1):
        raise ValueError(f"x has {x.size(1)} channels but proxies have {proxies.size(1)}: they must match")
    labels = _check_labels(labels, x.size(0), "labels").to(x.device)
    proxy_labels = _check_labels(proxy_labels, proxies.size(0), "proxy_labels").to(x.device)
    sim = F.normalize(x, dim=1) @ F.normalize(proxies, dim=1).t()
    idx = select_proxies(sim.detach(), labels, proxy_labels, k, keep_own=keep_own)
    rows = torch.arange(x.size(0), device=x.device).repeat_interleave(idx.size(1))
    data = HeteroData()
    data["sample"].x, data["sample"].y = x, labels
    data["proxy"].x, data["proxy"].y = proxies, proxy_labels
    edge = data["proxy", "to", "sample"]
    edge.edge_index = torch.stack([idx.reshape(-1), rows])
    edge.edge_attr = sim.gather(1, idx).reshape(-1)
    return data
