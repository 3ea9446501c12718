from pygml.nn.bgformer import BGFormerBlock, SSAConv, SemanticPropagation, minmax_weights  # noqa: F401
from pygml.nn.intra_batch import IntraBatchAttention, IntraBatchLayer, IntraBatchMPN, zero_logit_softmax  # noqa: F401
