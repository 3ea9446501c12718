"""ProxyGML (Zhu et al., NeurIPS 2020): backbone → Linear → L2-normalised embedding, trained with the
proxy-subgraph loss :class:`pygml.losses.ProxyGMLLoss` (methods.md, section 2).

The loss owns the C·N proxies, which get their own learning rate (``proxygml.proxy_lr``). For the first
``proxygml.warmup_epochs`` epochs the backbone is frozen (no gradient, BatchNorm statistics fixed) and
only the embedding layer and the proxies train, as the paper's warm-up intends. (The released code
freezes the backbone one epoch late: at the end of epoch 1, for epoch 2.)
"""

from __future__ import annotations

from torch import Tensor

from pygml.config import Config
from pygml.losses import ProxyGMLLoss
from pygml.methods.base import Method, register_method
from pygml.models import EmbeddingHead, build_backbone, l2n


@register_method("proxygml")
class ProxyGML(Method):
    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        pg = cfg.proxygml
        self.backbone = build_backbone(cfg.model)
        self.head = EmbeddingHead(self.backbone.out_dim, cfg.model.embedding_dim)
        self.loss = ProxyGMLLoss(
            num_classes, cfg.model.embedding_dim, pg.proxies_per_class, pg.r, pg.lambda_reg,
            use_spos=pg.use_spos, use_mask=pg.use_mask, use_reg=pg.use_reg, subgraph=pg.subgraph,
            regularizer=pg.regularizer, chunk_size=pg.chunk_size,
        )
        self.proxy_lr = pg.proxy_lr
        self.warmup_epochs = pg.warmup_epochs
        # trainable backbone parameters (frozen BatchNorm excluded), fixed here so warm-up can restore them
        self._backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        self.backbone_frozen = False

    def embed(self, images: Tensor) -> Tensor:
        return l2n(self.head(self.backbone(images)))

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = self.gather_rows(self.embed(images), labels)
        terms = self.loss.terms(x, y)
        return terms["loss"], {"loss_cls": terms["loss_cls"].detach(), "loss_reg": terms["loss_reg"].detach()}

    def param_groups(self) -> list[dict]:
        return [
            {"name": "backbone", "params": list(self._backbone_params)},
            {"name": "head", "params": list(self.head.parameters())},
            {"name": "proxies", "params": [self.loss.proxies], "lr": self.proxy_lr},
        ]

    def set_epoch(self, epoch: int) -> None:
        """Freeze the backbone for epochs ``< warmup_epochs`` (0-based), unfreeze it afterwards."""
        self.backbone_frozen = epoch < self.warmup_epochs
        for p in self._backbone_params:
            p.requires_grad_(not self.backbone_frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ProxyGML":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self
