"""The non-graph reference: backbone → embedding → normalized softmax (or any loss given)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from pygml.losses import NormalizedSoftmaxLoss
from pygml.methods.learner import MetricLearner
from pygml.models.heads import EmbeddingHead


class Baseline(MetricLearner):
    """Backbone + embedding head + a loss, no graph.

    Args:
        backbone: images → features (with ``out_dim``).
        num_classes: training classes (for the default loss).
        embedding_dim: d.
        temperature: of the default normalized-softmax loss.
        loss: any ``loss(embeddings, labels)``; ``None`` = :class:`~pygml.losses.NormalizedSoftmaxLoss`.
        head_init: see :class:`~pygml.models.EmbeddingHead`.
        loss_lr: learning rate of the loss's parameters (``None`` = the optimiser's).

    >>> from pygml.models import SmallCNN
    >>> method = Baseline(SmallCNN(width=8), num_classes=10, embedding_dim=16)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 128, temperature: float = 0.05, *,
                 loss: Optional[nn.Module] = None, head_init: str = "kaiming", loss_lr: Optional[float] = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        head = EmbeddingHead(backbone.out_dim, embedding_dim, init=head_init)
        loss = loss if loss is not None else NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature)
        super().__init__(backbone, loss, embedding_dim, head=head, loss_lr=loss_lr, normalize=True)


__all__ = ["Baseline"]
