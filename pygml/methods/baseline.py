"""The non-graph reference: backbone → embedding → normalized-softmax loss with temperature."""

from __future__ import annotations

from torch import Tensor

from pygml.config import Config
from pygml.losses import NormalizedSoftmaxLoss
from pygml.methods.base import Method, register_method
from pygml.models import EmbeddingHead, build_backbone, l2n


@register_method("baseline")
class Baseline(Method):
    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.model)
        self.head = EmbeddingHead(self.backbone.out_dim, cfg.model.embedding_dim)
        self.loss = NormalizedSoftmaxLoss(num_classes, cfg.model.embedding_dim, cfg.baseline.temperature)

    def embed(self, images: Tensor) -> Tensor:
        return l2n(self.head(self.backbone(images)))

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.loss(self.embed(images), labels)
        return loss, {"loss": loss.detach()}

    def param_groups(self) -> list[dict]:
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "head", "params": list(self.head.parameters())},
            {"name": "classifier", "params": list(self.loss.parameters())},
        ]
