"""Graph modules: what a method puts on top of its base loss during training.

A graph module takes the rows of a batch and their labels, builds its graph over the batch
(:func:`pygml.graph.batch_graph`) and returns refined rows, one per input row. Two kinds, told apart by
:attr:`BatchGraphModule.on`:

* ``"features"``: it refines the backbone features f (B, D) and the method's embedding head maps its
  output into the embedding space, where the same loss scores it (BGFormer's blocks);
* ``"embeddings"``: it refines the normalised embeddings and its output lives in a space of its own,
  scored by a loss of its own (Intra-Batch's message passing network).

At test time no graph module is used: the embedding of an image never depends on its batch.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type
from pygml.nn import BGFormerBlock, IntraBatchMPN

#: how BGFormer's blocks get their visual neighbours
BGFORMER_GRAPHS = ("attention_topk", "feature_knn")


class BatchGraphModule(nn.Module):
    """A module over a graph of the batch: ``forward(x (B, C), labels (B,)) -> (B, out_channels)``."""

    #: ``"features"`` or ``"embeddings"`` (module docstring)
    on: str = "features"
    out_channels: int

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class IntraBatchGraph(BatchGraphModule):
    """Intra-Batch's message passing network (:class:`~pygml.nn.IntraBatchMPN`) over the batch graph:
    fully connected with self loops (``k=None``, the paper) or the visual kNN graph (``k``, an option the
    official code does not have). The graph holds visual edges only: the MPN never sees the labels.

    Shapes: x (B, C) normalised embeddings, labels (B,) → (B, C) (or (B, layers·C) with ``concat``).
    """

    on = "embeddings"

    def __init__(self, channels: int, layers: int = 1, heads: int = 2, dropout: float = 0.1, *,
                 k: Optional[int] = None, zero_logit: bool = True, concat: bool = False) -> None:
        super().__init__()
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive int or None (fully connected), got {k!r}")
        self.k = k
        self.mpn = IntraBatchMPN(channels, channels, layers=layers, heads=heads, dropout=dropout,
                                 zero_logit=zero_logit, concat=concat)
        self.out_channels = self.mpn.out_channels

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        graph = batch_graph(x, labels, k=self.k, label_edges=False, self_loops=True)
        return self.mpn(x, edges_of_type(graph, VISUAL))


class BGFormerGraph(BatchGraphModule):
    """BGFormer's blocks (:class:`~pygml.nn.BGFormerBlock`) over the batch graph of the backbone features.

    ``graph="attention_topk"`` (the authors' code): every block and every head chooses its K visual
    neighbours among all rows of the batch (self included) as the top-K of its attention logits.
    ``graph="feature_knn"`` (pygml's own variant): one cosine kNN graph of the features (K neighbours
    plus the row itself), built once per batch and shared by every block and head. Label edges join the
    rows of a class in both.

    Shapes: x (B, D) backbone features, labels (B,) → (B, D).
    """

    on = "features"

    def __init__(self, channels: int, depth: int = 2, heads: int = 6, k: int = 30, *, mix: float = 0.5,
                 mlp_ratio: int = 4, dropout: float = 0.0, variant: str = "v1", graph: str = "attention_topk",
                 y_includes_self: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if graph not in BGFORMER_GRAPHS:
            raise ValueError(f"graph must be one of {', '.join(BGFORMER_GRAPHS)}, got {graph!r}")
        self.k = k
        self.graph = graph
        top_k = k if graph == "attention_topk" else None
        self.blocks = nn.ModuleList(
            BGFormerBlock(channels, heads, top_k=top_k, mix=mix, mlp_ratio=mlp_ratio, dropout=dropout,
                          variant=variant, y_includes_self=y_includes_self)
            for _ in range(depth))
        self.out_channels = channels

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        graph = batch_graph(x, labels, k=None if self.graph == "attention_topk" else self.k)
        visual, label = edges_of_type(graph, VISUAL), edges_of_type(graph, LABEL)
        for block in self.blocks:
            x = block(x, visual, label)
        return x


__all__ = ["BGFORMER_GRAPHS", "BGFormerGraph", "BatchGraphModule", "IntraBatchGraph"]
