"""Losses with the pytorch-metric-learning calling convention: ``loss(embeddings, labels)``."""

from pygml.losses.softmax import NormalizedSoftmaxLoss, check_embeddings_labels

__all__ = ["NormalizedSoftmaxLoss", "check_embeddings_labels"]
