"""Methods: a backbone, an embedding head, a base loss and an optional graph module behind the
:class:`Method` interface; built in plain Python, no config needed.

>>> from pygml.models import SmallCNN
>>> from pygml.methods import IntraBatch
>>> method = IntraBatch(SmallCNN(width=8), num_classes=10, embedding_dim=16)
"""

from pygml.methods.base import Method
from pygml.methods.baseline import Baseline
from pygml.methods.bgformer import BGFormer
from pygml.methods.graphs import BGFORMER_GRAPHS, BatchGraphModule, BGFormerGraph, IntraBatchGraph
from pygml.methods.intra_batch import IntraBatch, k_reciprocal_neighbours, refine
from pygml.methods.learner import MetricLearner
from pygml.methods.proxygml import ProxyGML

__all__ = ["BGFORMER_GRAPHS", "BGFormer", "BGFormerGraph", "Baseline", "BatchGraphModule", "IntraBatch",
           "IntraBatchGraph", "Method", "MetricLearner", "ProxyGML", "k_reciprocal_neighbours", "refine"]
