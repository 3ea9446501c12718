r"""A method as its parts: backbone, embedding head, base loss, and an optional graph module.

.. math::
    z = \mathrm{head}(\mathrm{backbone}(x)), \qquad
    L = w_b\, L(z, y) + w_g\, L_g(\mathrm{rows}_g, y)

where :math:`\mathrm{rows}_g` are the batch's rows refined by the graph module: ``head(graph(f, y))``
for a graph on the backbone features (BGFormer), ``graph(normalize(z), y)`` for a graph on the
embeddings (Intra-Batch). Both papers train this way (Intra-Batch with :math:`w_b = w_g = 1`, BGFormer
with :math:`w_b = \alpha, w_g = 1 - \alpha`). The test embedding is ``normalize(z)``: no graph.

Any loss called as ``loss(embeddings, labels)`` fits: pygml's, or pytorch-metric-learning's.
"""

from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor, nn

from pygml.methods.base import Method
from pygml.methods.graphs import BatchGraphModule
from pygml.models.heads import EmbeddingHead, l2n


def _trainable(module: Optional[nn.Module]) -> list[nn.Parameter]:
    return [] if module is None else [p for p in module.parameters() if p.requires_grad]


class MetricLearner(Method):
    """Backbone + embedding head + base loss (+ a graph module and the loss of its rows).

    Args:
        backbone: images (B, 3, H, W) → features (B, D); must have ``out_dim`` or pass ``feature_dim``.
        loss: the base loss, ``loss(embeddings (B, d), labels (B,)) -> scalar``.
        embedding_dim: d.
        graph: a :class:`~pygml.methods.graphs.BatchGraphModule`, used in training only.
        graph_loss: the loss of the graph's rows. ``None``: ``loss`` itself when the graph's rows go
            through the head (``graph.on == "features"``: the same embedding space), else a copy of
            ``loss`` with parameters of its own (the graph's rows live in a space of their own);
            ``graph_loss=loss`` shares the base loss in either case.
        backbone_weight, graph_weight: :math:`w_b, w_g`.
        head: the embedding head; ``None`` = :class:`~pygml.models.EmbeddingHead` with ``head_init``.
        head_init: see :class:`~pygml.models.EmbeddingHead`.
        loss_lr, graph_lr: learning rates of the loss's and of the graph's parameter groups
            (``None`` = the optimiser's).
        feature_dim: D when the backbone has no ``out_dim``.
        normalize: the losses get L2-normalised rows (``False``: the rows as they are; most metric losses
            normalise inside, but a classifier such as Intra-Batch's must see them raw).
    """

    def __init__(self, backbone: nn.Module, loss: nn.Module, embedding_dim: int, *,
                 graph: Optional[BatchGraphModule] = None, graph_loss: Optional[nn.Module] = None,
                 backbone_weight: float = 1.0, graph_weight: float = 1.0, head: Optional[nn.Module] = None,
                 head_init: str = "kaiming", loss_lr: Optional[float] = None, graph_lr: Optional[float] = None,
                 feature_dim: Optional[int] = None, normalize: bool = False) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else getattr(backbone, "out_dim", None)
        if feature_dim is None:
            raise ValueError("the backbone has no out_dim attribute: pass feature_dim")
        if backbone_weight < 0 or graph_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got backbone_weight={backbone_weight}, "
                             f"graph_weight={graph_weight}")
        if graph is not None and graph.on not in ("features", "embeddings"):
            raise ValueError(f"graph.on must be 'features' or 'embeddings', got {graph.on!r}")
        self.backbone = backbone
        self.head = head if head is not None else EmbeddingHead(feature_dim, embedding_dim, init=head_init)
        self.loss = loss
        self.graph = graph
        if graph_loss is loss:  # asked to share: the graph's rows are scored by the base loss itself
            graph_loss = None
        elif graph is not None and graph_loss is None and graph.on == "embeddings":
            graph_loss = copy.deepcopy(loss)
        self.graph_loss = graph_loss
        self.backbone_weight = backbone_weight
        self.graph_weight = graph_weight
        self.loss_lr = loss_lr
        self.graph_lr = graph_lr
        self.normalize = normalize

    def features(self, images: Tensor) -> Tensor:
        """The embedding before normalisation, z = head(backbone(images)), (B, d)."""
        return self.head(self.backbone(images))

    def embed(self, images: Tensor) -> Tensor:
        return l2n(self.features(images))

    def graph_rows(self, f: Tensor, z: Tensor, labels: Tensor) -> Tensor:
        """The batch's rows refined by the graph module, ready for the graph's loss."""
        if self.graph.on == "features":
            return self.head(self.graph(f, labels))
        return self.graph(l2n(z), labels)

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        f, y = self.gather_rows(self.backbone(images), labels)
        z = self.head(f)
        loss_backbone = self.loss(l2n(z) if self.normalize else z, y)
        logs = {"loss_backbone": loss_backbone.detach()}
        loss = self.backbone_weight * loss_backbone
        if self.graph is not None:
            rows = self.graph_rows(f, z, y)
            loss_graph = (self.graph_loss or self.loss)(l2n(rows) if self.normalize else rows, y)
            logs["loss_graph"] = loss_graph.detach()
            loss = loss + self.graph_weight * loss_graph
        logs["loss"] = loss.detach()
        return loss, logs

    def param_groups(self) -> list[dict]:
        groups = [{"name": "backbone", "params": _trainable(self.backbone)},
                  {"name": "head", "params": _trainable(self.head)},
                  {"name": "loss", "params": _trainable(self.loss), "lr": self.loss_lr},
                  {"name": "graph", "params": _trainable(self.graph), "lr": self.graph_lr},
                  {"name": "graph_loss", "params": _trainable(self.graph_loss), "lr": self.loss_lr}]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            if g.get("lr", 0) is None:
                del g["lr"]
        return groups

    def extra_repr(self) -> str:
        return f"backbone_weight={self.backbone_weight}, graph_weight={self.graph_weight}, normalize={self.normalize}"


__all__ = ["MetricLearner"]
