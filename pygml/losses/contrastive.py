r"""Pairwise contrastive cross-entropy over a batch (BGFormer's loss, methods.md section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygml.losses.base import check_embeddings_labels


class ContrastiveCELoss(nn.Module):
    r"""Cross-entropy of each row's softmax over the other rows against its positives.

    With cosine similarities :math:`s_{ij}` and temperature :math:`\tau`, anchor :math:`i` has the
    distribution :math:`p_{ij} = \exp(s_{ij}/\tau) / \sum_{k \ne i} \exp(s_{ik}/\tau)` over
    :math:`j \ne i` and the target distribution uniform over its positives
    :math:`P(i) = \{p \ne i : y_p = y_i\}`; the loss is their cross-entropy, averaged over anchors:

    .. math::
        L = \frac{1}{|A|} \sum_{i \in A} -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log p_{ip},
        \qquad A = \{i : |P(i)| > 0\}

    (the same as the supervised-contrastive loss of Khosla et al., 2020). The paper calls it a
    "pairwise contrastive cross-entropy" without giving the target distribution; uniform over the
    positives is our reading. Anchors without a positive in the batch are left out of the mean; a
    batch with none at all gives 0 (still connected to the graph, so ``backward`` works).

    Called as ``loss(embeddings, labels)`` (the pytorch-metric-learning convention); the embeddings
    need not be normalised.

    Shapes: embeddings (B, d), labels (B,); returns a scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings_labels(embeddings, labels)
        n = embeddings.size(0)
        labels = labels.to(embeddings.device)
        eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
        pos = (labels.view(-1, 1) == labels.view(1, -1)) & ~eye
        num_pos = pos.sum(1)
        anchors = (num_pos > 0).to(embeddings.dtype)
        z = F.normalize(embeddings, dim=1)
        logits = (z @ z.t() / self.temperature).masked_fill(eye, -torch.inf)
        log_p = torch.where(pos, logits.log_softmax(dim=1), torch.zeros_like(logits))
        per_anchor = -log_p.sum(1) / num_pos.clamp_min(1)
        # without a host read: anchors without positives weigh 0, and a batch without any gives 0
        return (per_anchor * anchors).sum() / anchors.sum().clamp_min(1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


__all__ = ["ContrastiveCELoss"]
