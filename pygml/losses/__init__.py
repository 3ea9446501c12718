"""Losses with the pytorch-metric-learning calling convention: ``loss(embeddings, labels)``."""

from pygml.losses.base import check_embeddings_labels
from pygml.losses.contrastive import ContrastiveCELoss
from pygml.losses.infonce import PairwiseInfoNCELoss
from pygml.losses.proxygml import REGULARIZERS, ProxyGMLLoss
from pygml.losses.softmax import ClassifierCELoss, NormalizedSoftmaxLoss

__all__ = ["ClassifierCELoss", "ContrastiveCELoss", "NormalizedSoftmaxLoss", "PairwiseInfoNCELoss", "ProxyGMLLoss",
           "REGULARIZERS",
           "check_embeddings_labels"]
