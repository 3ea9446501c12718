"""Intra-Batch Connections (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021): methods.md section 1.

Backbone (ResNet-50, global max pooling) → ``Linear(D, 512)`` = f. Two losses, both label-smoothed
cross-entropies with temperature T (:class:`~pygml.losses.ClassifierCELoss`):

* a classifier ``Linear(512, C)`` on the un-normalised f (the backbone loss);
* the message passing network (:class:`~pygml.methods.graphs.IntraBatchGraph`) on normalize(f) over the
  batch graph, fully connected with self loops (``k=None``, the paper) or the visual kNN graph (``k=K``),
  then a BatchNorm neck and a bias-free classifier.

Any other loss can take the place of both (``loss=``): the MPN then adds its rows to that loss.
At test time the MPN is not used: the embedding is normalize(f), one image at a time. The paper's
supplementary test-time refinement (the MPN over each sample's k-reciprocal neighbourhood in the test
set) is :func:`refine`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygml.losses import ClassifierCELoss
from pygml.methods.graphs import IntraBatchGraph
from pygml.methods.learner import MetricLearner
from pygml.models.heads import EmbeddingHead, l2n
from pygml.neighbors import knn
from pygml.nn import IntraBatchMPN


class IntraBatch(MetricLearner):
    """Backbone + embedding + classifier loss, and the MPN over the batch graph with its own loss.

    Args:
        backbone: images → features (with ``out_dim``).
        num_classes: training classes.
        embedding_dim: d (the paper: 512).
        temperature, label_smoothing: T and ε of both default losses.
        layers, heads, dropout, zero_logit, concat: of the MPN (:class:`~pygml.nn.IntraBatchMPN`).
        mpn: train the MPN and add its loss (the paper); ``False`` = the backbone loss only (ablation).
        k: ``None`` = fully connected batch graph (the paper); an int = visual kNN graph.
        loss: replaces the backbone's classifier loss; the MPN's rows then get ``graph_loss`` or a copy.
        graph_loss: replaces the MPN's classifier loss.
        loss_lr: learning rate of the losses' parameters (classifiers, proxies; ``None`` = the optimiser's).
        head_init: the embedding layer's init (the official code keeps torch's ``Linear`` default).

    >>> from pygml.models import SmallCNN
    >>> method = IntraBatch(SmallCNN(width=8), num_classes=10, embedding_dim=16)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 512, temperature: float = 0.2,
                 label_smoothing: float = 0.1, layers: int = 1, heads: int = 2, dropout: float = 0.1,
                 mpn: bool = True, k: Optional[int] = None, zero_logit: bool = True, concat: bool = False, *,
                 loss: Optional[nn.Module] = None, graph_loss: Optional[nn.Module] = None,
                 head_init: str = "default", loss_lr: Optional[float] = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        head = EmbeddingHead(backbone.out_dim, embedding_dim, init=head_init)
        own_losses = loss is None
        if own_losses:
            loss = ClassifierCELoss(num_classes, embedding_dim, temperature, label_smoothing)
        graph = (IntraBatchGraph(embedding_dim, layers, heads, dropout, k=k, zero_logit=zero_logit, concat=concat)
                 if mpn else None)
        if own_losses and graph is not None and graph_loss is None:
            graph_loss = ClassifierCELoss(num_classes, graph.out_channels, temperature, label_smoothing,
                                          neck=True, bias=False, init_std=1e-3)
        super().__init__(backbone, loss, embedding_dim, graph=graph, graph_loss=graph_loss, head=head, loss_lr=loss_lr)

    def refine(self, embeddings: Tensor, k: int, max_edges: int = 2**16) -> Tensor:
        """Test-time refinement of a whole test set's embeddings; see :func:`refine`."""
        if self.graph is None:
            raise ValueError("test-time refinement needs the MPN, but this model was trained with mpn=False")
        return refine(self.graph.mpn, embeddings, k, max_edges=max_edges)


def k_reciprocal_neighbours(x: Tensor, k: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Each row's k nearest other rows by cosine similarity and which of them are k-reciprocal.

    j is a k-reciprocal neighbour of i when j is among i's k nearest neighbours and i among j's
    (the row itself is never its own neighbour, told apart by index, not by rank; ties by
    :func:`pygml.neighbors.knn`'s rule).

    Args:
        x: rows (N, d); compared by cosine similarity.
        k: neighbours per row, 1 ≤ k ≤ N − 1.
        chunk_size: rows of the similarity matrix held at once.

    Returns:
        ``neighbours`` (N, k), most similar first, and ``reciprocal`` (N, k) bool.
    """
    n = x.size(0)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} rows, got {k}")
    _, neighbours = knn(x, k, exclude_self=True, chunk_size=chunk_size)
    own = torch.arange(n, device=x.device).view(-1, 1)
    pairs = (own * n + neighbours).view(-1)  # i * n + j for every j in kNN(i)
    reciprocal = torch.isin(neighbours * n + own, pairs)  # j * n + i: is i in kNN(j)?
    return neighbours, reciprocal


@torch.no_grad()
def refine(mpn: IntraBatchMPN, embeddings: Tensor, k: int, *, max_edges: int = 2**16) -> Tensor:
    r"""The test-time refinement of Seidenschwarz et al. (ICML 2021, supplementary): each sample's
    embedding is replaced by the MPN's output for it on the graph of itself and its k-reciprocal
    neighbours in the set (fully connected, self loops).

    For each row i: R(i) = {j ≠ i : j ∈ kNN(i) and i ∈ kNN(j)} (cosine similarity, see
    :func:`k_reciprocal_neighbours`); the MPN runs in eval mode on normalize(f) of {i} ∪ R(i), and the
    refined embedding is the L2-normalised last-layer feature of i (before the neck). A row with no
    reciprocal neighbour is refined on its own (a one-node graph with its self loop), so every row lies
    in the same space. ``k = 0`` means no refinement: normalize(f), the usual test embedding.

    Departures from the official code, which uses the k-reciprocal *expansion* of Zhong et al. (2017)
    with k = 30 and pads each neighbourhood with plain nearest neighbours to a fixed size: here the
    neighbourhood is the plain k-reciprocal set, whatever its size.

    Cost: the MPN runs on Σ_i (1 + |R(i)|) ≤ N·(k + 1) nodes and Σ_i (1 + |R(i)|)² edges.

    Args:
        mpn: the trained message passing network.
        embeddings: f or normalize(f) of the whole set, (N, d) (the MPN sees normalize(f) either way).
            For a query/gallery protocol pass the union of both.
        k: neighbours considered per row; 0 = no refinement; larger than N − 1 = every other row.
        max_edges: edges per MPN call (the neighbourhoods are processed in chunks of disjoint graphs).

    Returns:
        Refined L2-normalised embeddings, (N, C) with C the MPN's width.
    """
    if embeddings.dim() != 2 or embeddings.size(0) == 0:
        raise ValueError(f"embeddings must have shape (N, d) with N ≥ 1, got {tuple(embeddings.shape)}")
    if k < 0:
        raise ValueError(f"k must be ≥ 0, got {k}")
    x = l2n(embeddings)
    n = x.size(0)
    k = min(k, n - 1)
    if k == 0:
        return x
    neighbours, reciprocal = k_reciprocal_neighbours(x, k)
    own = torch.arange(n, device=x.device).view(-1, 1)
    members = torch.cat([own, neighbours], dim=1)  # (N, k + 1): the row first, then its neighbours
    valid = torch.cat([torch.ones_like(own, dtype=torch.bool), reciprocal], dim=1)
    width = k + 1
    per_chunk = max(1, max_edges // (width * width))
    was_training = mpn.training
    mpn.eval()
    try:
        out = []
        for start in range(0, n, per_chunk):
            m, v = members[start:start + per_chunk], valid[start:start + per_chunk]
            node_of = v.reshape(-1).cumsum(0) - 1  # slot (graph, position) -> node id of the union
            g, tgt, src = (v.unsqueeze(2) & v.unsqueeze(1)).nonzero(as_tuple=True)
            edge_index = torch.stack([node_of[g * width + src], node_of[g * width + tgt]])
            h = mpn.features(x[m[v]], edge_index)
            out.append(h[node_of[torch.arange(m.size(0), device=x.device) * width]])
    finally:
        mpn.train(was_training)
    return F.normalize(torch.cat(out), dim=1)


__all__ = ["IntraBatch", "k_reciprocal_neighbours", "refine"]
