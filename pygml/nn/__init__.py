"""Graph layers usable in any GNN: they take node features and an ``edge_index`` (or a sparse adjacency)
and know nothing about batches, datasets or training. :class:`IntraBatchAttention` and :class:`SSAConv`
share one edge-attention base, :class:`EdgeAttention`."""

from pygml.nn.attention import EdgeAttention, minmax_weights, zero_logit_softmax
from pygml.nn.bgformer import BGFormerBlock, SemanticPropagation, SSAConv
from pygml.nn.intra_batch import IntraBatchAttention, IntraBatchLayer, IntraBatchMPN

__all__ = ["BGFormerBlock", "EdgeAttention", "IntraBatchAttention", "IntraBatchLayer", "IntraBatchMPN", "SSAConv",
           "SemanticPropagation", "minmax_weights", "zero_logit_softmax"]
