"""BGFormer (Wang, Jiang, Wang, Luo; IEEE TMM 2023): a batch-graph transformer over the backbone features.

Training (methods.md section 3): backbone features f (B, D) → ``depth`` :class:`~pygml.nn.BGFormerBlock`
over the batch (:class:`~pygml.methods.graphs.BGFormerGraph`) → the same embedding head on f and on the
block outputs (2B rows) → ``loss = α · L(head(f)) + (1 − α) · L(head(blocks(f)))``. α = 1 is the
ablation without blocks (none are built).

Test time: ``embed = normalize(head(backbone(x)))``; the blocks are not used (no batch at query time).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from pygml.losses import PairwiseInfoNCELoss
from pygml.methods.graphs import BGFormerGraph
from pygml.methods.learner import MetricLearner
from pygml.models.heads import EmbeddingHead


class BGFormer(MetricLearner):
    """Backbone + embedding head + BGFormer blocks over the batch, and a loss on both row sets.

    Args:
        backbone: images → features (with ``out_dim``).
        num_classes: training classes (unused by the default loss; kept for a uniform signature).
        embedding_dim: d (the paper: 128).
        depth, heads, k, mix, mlp_ratio, dropout, variant, graph, y_includes_self: of the blocks
            (:class:`~pygml.methods.graphs.BGFormerGraph`, :class:`~pygml.nn.BGFormerBlock`); ``mix`` is λ.
        alpha: α, the share of the backbone rows in the loss (1 = blocks off).
        temperature: τ of the default loss.
        block_lr: learning rate of the blocks (``None`` = the optimiser's).
        loss: any ``loss(embeddings, labels)``; ``None`` = the authors' release's pairwise InfoNCE over the
            m views of each class (:class:`~pygml.losses.PairwiseInfoNCELoss`, τ = ``temperature``; every
            class of a batch must hold the same number of images, as the P×K samplers give). The SupCon-style
            :class:`~pygml.losses.ContrastiveCELoss` is the other loss pygml offers for it.
        loss_lr: learning rate of the loss's parameters, if it has any (``None`` = the optimiser's).
        head_init: the head's init (the authors' release: orthogonal, zero bias).

    >>> from pygml.models import SmallCNN
    >>> method = BGFormer(SmallCNN(width=8), num_classes=10, embedding_dim=16, heads=4, k=4)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 128, depth: int = 2,
                 heads: int = 6, k: int = 30, mix: float = 0.3, alpha: float = 0.01, temperature: float = 0.2,
                 mlp_ratio: int = 4, dropout: float = 0.0, variant: str = "v1", graph: str = "attention_topk",
                 block_lr: Optional[float] = None, y_includes_self: bool = True, *,
                 loss: Optional[nn.Module] = None, loss_lr: Optional[float] = None,
                 head_init: str = "orthogonal") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        dim = getattr(backbone, "out_dim", None)
        if dim is None:
            raise ValueError("the backbone has no out_dim attribute")
        if variant == "v1" and dim % heads:
            raise ValueError(f"heads={heads} must divide the backbone's feature size {dim}")
        head = EmbeddingHead(dim, embedding_dim, init=head_init)
        blocks = (BGFormerGraph(dim, depth, heads, k, mix=mix, mlp_ratio=mlp_ratio, dropout=dropout, variant=variant,
                                graph=graph, y_includes_self=y_includes_self) if alpha < 1.0 else None)
        loss = loss if loss is not None else PairwiseInfoNCELoss(temperature)
        super().__init__(backbone, loss, embedding_dim, graph=blocks, backbone_weight=alpha,
                         graph_weight=1.0 - alpha, head=head, loss_lr=loss_lr, graph_lr=block_lr)


__all__ = ["BGFormer"]
