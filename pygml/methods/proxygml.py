"""ProxyGML (Zhu et al., NeurIPS 2020): backbone → Linear → L2-normalised embedding, trained with the
proxy-subgraph loss :class:`pygml.losses.ProxyGMLLoss` (methods.md, section 2).

The loss owns the C·N proxies, which get their own learning rate (``proxy_lr``). For the first
``warmup_epochs`` epochs the backbone is frozen (no gradient, BatchNorm statistics fixed) and only the
embedding layer and the proxies train, as the paper's warm-up intends. (The released code freezes the
backbone one epoch late: at the end of epoch 1, for epoch 2.)
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from pygml.losses import ProxyGMLLoss
from pygml.methods.learner import MetricLearner
from pygml.models.heads import EmbeddingHead


class ProxyGML(MetricLearner):
    """Backbone + embedding head + :class:`~pygml.losses.ProxyGMLLoss`, with a backbone warm-up.

    Args:
        backbone: images → features (with ``out_dim``).
        num_classes: C, training classes.
        embedding_dim: d (the paper: 512).
        proxies_per_class, r, lambda_reg, use_spos, use_mask, use_reg, subgraph, regularizer, chunk_size:
            of :class:`~pygml.losses.ProxyGMLLoss`.
        proxy_lr: learning rate of the proxies (``None`` = the optimiser's).
        warmup_epochs: epochs (from the first) in which the backbone is frozen.
        head_init: see :class:`~pygml.models.EmbeddingHead`.

    >>> from pygml.models import SmallCNN
    >>> method = ProxyGML(SmallCNN(width=8), num_classes=10, embedding_dim=16, r=0.2, warmup_epochs=0)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 512, proxies_per_class: int = 12,
                 r: float = 0.05, lambda_reg: float = 0.3, proxy_lr: Optional[float] = 0.03, use_spos: bool = True,
                 use_mask: bool = True, use_reg: bool = True, subgraph: bool = True, regularizer: str = "full",
                 chunk_size: Optional[int] = None, warmup_epochs: int = 1, *, head_init: str = "kaiming") -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        head = EmbeddingHead(backbone.out_dim, embedding_dim, init=head_init)
        loss = ProxyGMLLoss(num_classes, embedding_dim, proxies_per_class, r, lambda_reg, use_spos=use_spos,
                            use_mask=use_mask, use_reg=use_reg, subgraph=subgraph, regularizer=regularizer,
                            chunk_size=chunk_size)
        super().__init__(backbone, loss, embedding_dim, head=head, loss_lr=proxy_lr, normalize=True)
        self.warmup_epochs = warmup_epochs
        self.skips_parameters = warmup_epochs > 0  # the frozen backbone gets no gradient during the warm-up
        # trainable backbone parameters (frozen BatchNorm excluded), fixed here so warm-up can restore them
        self._backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        self.backbone_frozen = False

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = self.gather_rows(self.embed(images), labels)
        terms = self.loss.terms(x, y)
        return terms["loss"], {"loss": terms["loss"].detach(), "loss_cls": terms["loss_cls"].detach(),
                               "loss_reg": terms["loss_reg"].detach()}

    def param_groups(self) -> list[dict]:
        # the backbone's group holds its parameters even while the warm-up freezes them
        groups = [g for g in super().param_groups() if g["name"] != "backbone"]
        return [{"name": "backbone", "params": list(self._backbone_params)}, *groups]

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


__all__ = ["ProxyGML"]
