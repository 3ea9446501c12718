"""Classification losses on the embedding: normalized softmax (a cosine classifier) and a label-smoothed
cross-entropy on a linear classifier (Intra-Batch's two losses)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygml.losses.base import check_embeddings_labels


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


class ClassifierCELoss(nn.Module):
    r"""Label-smoothed cross-entropy of a linear classifier over a temperature (Intra-Batch Connections,
    Seidenschwarz et al., ICML 2021, both of its losses):

    .. math:: L = \mathrm{CE}_\varepsilon\bigl(W\, g(x) / T + b,\ y\bigr)

    with :math:`g` the identity, or with ``neck=True`` a ``BatchNorm1d`` whose bias is frozen at 0 (the
    paper's message-passing head). The embeddings are used as they are (not normalised).

    Args:
        num_classes: C.
        embedding_size: d.
        temperature: T > 0; the logits are divided by it.
        label_smoothing: ε in [0, 1).
        neck: a BatchNorm neck (bias frozen at zero) before the classifier.
        bias: the classifier has a bias.
        init_std: ``None`` = torch's ``Linear`` initialisation; a float = weights drawn from
            N(0, init_std²) (the paper's MPN classifier: 1e-3).

    Shapes: embeddings (B, d), labels (B,) in [0, C) → scalar.
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 1.0, label_smoothing: float = 0.0,
                 *, neck: bool = False, bias: bool = True, init_std: Optional[float] = None) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"num_classes and embedding_size must be positive, got {num_classes}, {embedding_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        if init_std is not None and init_std <= 0:
            raise ValueError(f"init_std must be > 0 or None, got {init_std}")
        self.num_classes = num_classes
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.neck = nn.BatchNorm1d(embedding_size) if neck else None
        self.classifier = nn.Linear(embedding_size, num_classes, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.classifier.reset_parameters()
        if self.init_std is not None:
            nn.init.normal_(self.classifier.weight, std=self.init_std)
        if self.neck is not None:
            self.neck.reset_parameters()
            self.neck.bias.requires_grad_(False)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class logits before the temperature, (B, C)."""
        return self.classifier(embeddings if self.neck is None else self.neck(embeddings))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings_labels(embeddings, labels, self.num_classes)
        return F.cross_entropy(self.logits(embeddings) / self.temperature, labels,
                               label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, temperature={self.temperature}, "
                f"label_smoothing={self.label_smoothing}, neck={self.neck is not None}")


__all__ = ["ClassifierCELoss", "NormalizedSoftmaxLoss"]
