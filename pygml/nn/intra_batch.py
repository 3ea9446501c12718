r"""Intra-batch message passing: "Learning Intra-Batch Connections for Deep Metric Learning"
(Seidenschwarz, Elezi, Leal-Taixé, ICML 2021).

* :func:`zero_logit_softmax` (defined in :mod:`pygml.nn.attention`): the softmax over each node's
  incoming edges with an implicit zero logit, the variant of :func:`torch_geometric.utils.softmax` the
  paper's attention uses;
* :class:`IntraBatchAttention`: multi-head dot-product attention along the edges of any graph, an
  :class:`~pygml.nn.attention.EdgeAttention` (edge-wise and dense kernels);
* :class:`IntraBatchLayer`: the post-norm transformer layer of the paper;
* :class:`IntraBatchMPN`: input ``Linear`` and ``L`` layers; the paper's BatchNorm neck and classifier on
  top of it belong to the loss, not to the network.

Edges follow PyG's convention: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i; a node
aggregates over its in-edges j → i. A sparse adjacency is read as PyG reads it, ``adj_t[i, j]`` ≠ 0 for
the edge j → i (``to_torch_sparse_tensor(edge_index).t()`` or ``SparseTensor.from_edge_index(...).t()``).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.typing import SparseTensor

from pygml.nn.attention import EdgeAttention, zero_logit_softmax

Adjacency = Union[Tensor, SparseTensor]


class IntraBatchAttention(EdgeAttention):
    r"""Multi-head dot-product attention along the edges of a graph, with the implicit zero logit of
    Seidenschwarz et al. (ICML 2021, the attention of the message passing network):

    .. math::
        s^h_{ij} = \frac{\langle W^h_q x_i, W^h_k x_j \rangle}{\sqrt{C/H}}, \qquad
        a^h_{ij} = \frac{\exp(s^h_{ij})}{1 + \sum_{j' \in \mathcal{N}(i)} \exp(s^h_{ij'})}, \qquad
        x'_i = W_o \big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)} \mathrm{Dropout}(a^h_{ij}) W^h_v x_j

    where :math:`\mathcal{N}(i)` are the sources of node i's in-edges (self loops are not added: give
    them in the graph). With ``zero_logit=False`` the "1 +" goes and :math:`a` is the ordinary softmax.
    A node without in-edges receives the zero message (its output is the bias of :math:`W_o`).
    :math:`W_q, W_k, W_v, W_o` are ``Linear(C, C)`` with Xavier-uniform weights and zero biases.

    Kernels, repeated edges, ties and dropout as in :class:`~pygml.nn.attention.EdgeAttention`: the
    edge-wise ``MessagePassing`` kernel and a dense one, chosen by the graph's size and density.

    Args:
        channels: C, the input and output width.
        heads: H; C must be divisible by H.
        dropout: dropout probability on the attention weights.
        zero_logit: add the implicit zero logit (the paper); ``False`` = ordinary softmax.
        kernel: ``"auto"``, ``"dense"`` or ``"sparse"``.

    Shapes:
        - input: node features (N, C); ``edge_index`` (2, E), or a sparse adjacency ``adj_t`` (N, N)
          (torch.sparse COO/CSR/CSC or ``SparseTensor``) with ``adj_t[i, j]`` ≠ 0 for the edge j → i
        - output: (N, C); with ``return_attention_weights=True`` also ``(edge_index, alpha)`` with
          ``alpha`` (E, H) in the order of ``edge_index`` (for a sparse input: the adjacency with
          ``alpha`` as its values, as :class:`~torch_geometric.nn.conv.GATConv` returns it)
    """

    def __init__(self, channels: int, heads: int, dropout: float = 0.1, zero_logit: bool = True,
                 kernel: str = "auto") -> None:
        super().__init__(channels, heads, normalization="zero_logit_softmax" if zero_logit else "softmax",
                         dropout=dropout, kernel=kernel)
        self.zero_logit = zero_logit
        self.lin_query = nn.Linear(channels, channels)
        self.lin_key = nn.Linear(channels, channels)
        self.lin_value = nn.Linear(channels, channels)
        self.lin_out = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (x.size(0), self.heads, self.head_dim)
        return self.lin_query(x).view(shape), self.lin_key(x).view(shape), self.lin_value(x).view(shape)

    def project_out(self, out: Tensor) -> Tensor:
        return self.lin_out(out)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, dropout={self.dropout}, "
                f"zero_logit={self.zero_logit}, kernel={self.kernel!r})")


class IntraBatchLayer(nn.Module):
    r"""The post-norm transformer layer of the message passing network (Seidenschwarz et al., ICML 2021):

    .. math::
        h &\leftarrow \mathrm{LayerNorm}\bigl(h + \mathrm{Dropout}(\mathrm{Attention}(h, G))\bigr) \\
        h &\leftarrow \mathrm{LayerNorm}\bigl(h + \mathrm{Dropout}(W_2\, \mathrm{Dropout}(\mathrm{ReLU}(W_1 h)))\bigr)

    with :class:`IntraBatchAttention` over the graph G and :math:`W_1: C \to rC`, :math:`W_2: rC \to C`
    (r = ``ffn_ratio``, 4 in the paper). Every dropout has probability ``dropout``.

    Shapes: x (N, C), ``edge_index`` (2, E) or a sparse adjacency as for :class:`IntraBatchAttention`
    → (N, C).
    """

    def __init__(self, channels: int, heads: int, dropout: float = 0.1, zero_logit: bool = True,
                 ffn_ratio: int = 4, kernel: str = "auto") -> None:
        super().__init__()
        if ffn_ratio < 1:
            raise ValueError(f"ffn_ratio must be a positive int, got {ffn_ratio}")
        self.attn = IntraBatchAttention(channels, heads, dropout=dropout, zero_logit=zero_logit, kernel=kernel)
        self.norm1 = nn.LayerNorm(channels)
        self.lin1 = nn.Linear(channels, ffn_ratio * channels)
        self.lin2 = nn.Linear(ffn_ratio * channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.dropout = dropout

    def reset_parameters(self) -> None:
        for m in (self.attn, self.norm1, self.lin1, self.lin2, self.norm2):
            m.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adjacency) -> Tensor:
        x = self.norm1(x + F.dropout(self.attn(x, edge_index), p=self.dropout, training=self.training))
        ffn = self.lin2(F.dropout(F.relu(self.lin1(x)), p=self.dropout, training=self.training))
        return self.norm2(x + F.dropout(ffn, p=self.dropout, training=self.training))


class IntraBatchMPN(nn.Module):
    r"""The message passing network of Seidenschwarz et al. (ICML 2021): ``Linear(in, C)`` then ``layers``
    :class:`IntraBatchLayer` s over the graph.

    .. math:: h^{(0)} = W_{in} x, \qquad h^{(l)} = \mathrm{Layer}_l(h^{(l-1)}, G)

    ``forward`` returns the node features: the last layer's output :math:`h^{(L)}`, or with
    ``concat=True`` the concatenation :math:`[h^{(1)} \Vert \dots \Vert h^{(L)}]` of every layer's output
    (as the released Cars196 config does); their width is :attr:`out_channels`. The paper's BatchNorm
    neck and classifier act on these features inside the loss
    (:class:`pygml.losses.ClassifierCELoss` with ``neck=True, bias=False, init_std=1e-3``).

    Args:
        in_channels: width of the input features.
        channels: C, the width of every layer.
        layers: L ≥ 1.
        heads, dropout, zero_logit, kernel: of every :class:`IntraBatchLayer`.
        concat: return every layer's output, concatenated.

    Shapes: x (N, in_channels), ``edge_index`` (2, E) or a sparse adjacency → (N, C), or (N, L·C) with
    ``concat``.
    """

    def __init__(self, in_channels: int, channels: int, layers: int = 1, heads: int = 2, dropout: float = 0.1,
                 zero_logit: bool = True, concat: bool = False, kernel: str = "auto") -> None:
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive int, got {layers!r}")
        self.concat = concat
        self.out_channels = channels * layers if concat else channels
        self.lin_in = nn.Linear(in_channels, channels)
        self.layers = nn.ModuleList(IntraBatchLayer(channels, heads, dropout=dropout, zero_logit=zero_logit,
                                                    kernel=kernel) for _ in range(layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_in.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def _layer_outputs(self, x: Tensor, edge_index: Adjacency) -> list[Tensor]:
        h = self.lin_in(x)
        outs = []
        for layer in self.layers:
            h = layer(h, edge_index)
            outs.append(h)
        return outs

    def features(self, x: Tensor, edge_index: Adjacency) -> Tensor:
        """The node features after the last layer, (N, C), whatever ``concat``: what the test-time
        refinement uses."""
        return self._layer_outputs(x, edge_index)[-1]

    def forward(self, x: Tensor, edge_index: Adjacency) -> Tensor:
        outs = self._layer_outputs(x, edge_index)
        return torch.cat(outs, dim=1) if self.concat else outs[-1]


__all__ = ["IntraBatchAttention", "IntraBatchLayer", "IntraBatchMPN", "zero_logit_softmax"]
