"""Graph layers usable in any GNN: they take node features and an ``edge_index`` (or a sparse adjacency)
and know nothing about batches, datasets or training."""

from pygml.nn.bgformer import BGFormerBlock, SemanticPropagation, SSAConv, minmax_weights
from pygml.nn.intra_batch import IntraBatchAttention, IntraBatchLayer, IntraBatchMPN, zero_logit_softmax

__all__ = ["BGFormerBlock", "IntraBatchAttention", "IntraBatchLayer", "IntraBatchMPN", "SSAConv",
           "SemanticPropagation", "minmax_weights", "zero_logit_softmax"]
