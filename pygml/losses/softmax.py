"""Normalized softmax (cosine classifier) loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_embeddings_labels(embeddings: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
    """Validate the (embeddings, labels) pair of a loss call; raise ``ValueError`` naming the argument."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.numel() != embeddings.size(0):
        raise ValueError(f"labels must have shape ({embeddings.size(0)},), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if embeddings.size(0) == 0:
        raise ValueError("embeddings is empty")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    if not bool(torch.isfinite(embeddings.detach()).all()):
        raise ValueError("embeddings contain NaN or inf")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")


class NormalizedSoftmaxLoss(nn.Module):
    r"""Cross-entropy over cosine similarities to one learnable weight per class, divided by a temperature:

    .. math:: L = -\frac{1}{B}\sum_i \log \frac{\exp(\cos(x_i, w_{y_i})/T)}{\sum_c \exp(\cos(x_i, w_c)/T)}

    Called as ``loss(embeddings, labels)`` (the pytorch-metric-learning convention).

    Shapes: embeddings (B, d), labels (B,) in [0, num_classes).
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.temperature = temperature
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.uniform_(self.weight, -1 / math.sqrt(embedding_size), 1 / math.sqrt(embedding_size))

    def logits(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).t() / self.temperature

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings_labels(embeddings, labels, self.num_classes)
        return F.cross_entropy(self.logits(embeddings), labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.weight.size(1)}, temperature={self.temperature}"
