"""BGFormer (Wang, Jiang, Wang, Luo; IEEE TMM 2023): a batch-graph transformer over the backbone features.

Training (methods.md section 3): backbone features f (B, D) → ``depth`` :class:`~pygml.nn.BGFormerBlock`
on the batch graph (visual kNN with K neighbours plus self loops, and label edges) → the same
embedding head on f and on the block outputs (2B rows) →
``loss = α · L(head(f)) + (1 − α) · L(head(blocks(f)))`` with L the pairwise contrastive
cross-entropy (:class:`~pygml.losses.ContrastiveCELoss`). The graph is built once, on f, and shared by
every block. α = 1 is the ablation without blocks (none are built).

Test time: ``embed = normalize(head(backbone(x)))``; the blocks are not used (no batch at query time).
"""

from __future__ import annotations

from torch import Tensor, nn

from pygml.config import Config
from pygml.graph import batch_graph
from pygml.losses import ContrastiveCELoss
from pygml.methods.base import Method, register_method
from pygml.models import EmbeddingHead, build_backbone, l2n
from pygml.nn import BGFormerBlock


@register_method("bgformer")
class BGFormer(Method):
    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        c = cfg.bgformer
        if not 0.0 <= c.alpha <= 1.0:
            raise ValueError(f"bgformer.alpha must lie in [0, 1], got {c.alpha}")
        if c.depth < 0:
            raise ValueError(f"bgformer.depth must be >= 0, got {c.depth}")
        if c.k < 1:
            raise ValueError(f"bgformer.k must be >= 1, got {c.k}")
        self.alpha = c.alpha
        self.k = c.k
        self.backbone = build_backbone(cfg.model)
        dim = self.backbone.out_dim
        parameter_free = c.ssa == "parameter_free"
        if not parameter_free and dim % c.heads:
            raise ValueError(f"bgformer.heads={c.heads} must divide the backbone's feature size {dim} "
                             f"(model.backbone={cfg.model.backbone})")
        self.head = EmbeddingHead(dim, cfg.model.embedding_dim)
        n_blocks = c.depth if c.alpha < 1.0 else 0
        self.blocks = nn.ModuleList(
            BGFormerBlock(dim, c.heads, mix=c.mix, mlp_ratio=c.mlp_ratio, dropout=c.dropout,
                          parameter_free=parameter_free, y_includes_self=c.y_includes_self)
            for _ in range(n_blocks)
        )
        self.block_lr = c.block_lr
        self.loss = ContrastiveCELoss(c.temperature)

    def embed(self, images: Tensor) -> Tensor:
        return l2n(self.head(self.backbone(images)))

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        f = self.backbone(images)
        f, y = self.gather_rows(f, labels)
        loss_backbone = self.loss(self.head(f), y)
        if self.alpha == 1.0:
            return loss_backbone, {"loss": loss_backbone.detach(), "loss_backbone": loss_backbone.detach()}
        h = f
        if len(self.blocks):
            _, visual, label = BGFormerBlock.split_relations(batch_graph(f, y, k=self.k))
            for block in self.blocks:
                h = block(h, visual, label)
        loss_blocks = self.loss(self.head(h), y)
        loss = self.alpha * loss_backbone + (1.0 - self.alpha) * loss_blocks
        return loss, {"loss": loss.detach(), "loss_backbone": loss_backbone.detach(),
                      "loss_blocks": loss_blocks.detach()}

    def param_groups(self) -> list[dict]:
        groups = [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "head", "params": list(self.head.parameters())},
        ]
        if len(self.blocks):
            groups.append({"name": "blocks", "params": list(self.blocks.parameters()), "lr": self.block_lr})
        return groups
