"""Losses with the pytorch-metric-learning calling convention: ``loss(embeddings, labels)``."""

from pygml.losses.softmax import NormalizedSoftmaxLoss, check_embeddings_labels
from pygml.losses.contrastive import ContrastiveCELoss
from pygml.losses.proxygml import ProxyGMLLoss

__all__ = ["ContrastiveCELoss", "NormalizedSoftmaxLoss", "ProxyGMLLoss", "check_embeddings_labels"]
