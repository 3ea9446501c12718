"""The argument checks every pygml loss runs on ``loss(embeddings, labels)``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pygml.checks import value_checks_enabled


def check_embeddings_labels(embeddings: Tensor, labels: Tensor, num_classes: Optional[int] = None) -> None:
    """Validate the (embeddings, labels) pair of a loss call; a ``ValueError`` names the argument.

    Shapes and dtypes are always checked. Finiteness and the label range read tensor values, so they
    run only with value checks on (:mod:`pygml.checks`).
    """
    if not isinstance(embeddings, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(f"embeddings and labels must be tensors, got {type(embeddings).__name__} and "
                         f"{type(labels).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.numel() != embeddings.size(0):
        raise ValueError(f"labels must have shape ({embeddings.size(0)},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if embeddings.size(0) == 0:
        raise ValueError("embeddings is empty")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    if not value_checks_enabled():
        return
    if not bool(torch.isfinite(embeddings.detach()).all()):
        raise ValueError("embeddings contain NaN or inf")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")


__all__ = ["check_embeddings_labels"]
