r"""The layers of BGFormer (Wang, Jiang, Wang, Luo, "Rethinking Batch Sample Relationships for Data
Representation: A Batch-Graph Transformer based Approach", IEEE TMM 2023).

* :class:`SSAConv`: structure-constrained self-attention, each node attending only over its in-edges
  (the visual kNN graph of a batch), in the style of PyG's ``TransformerConv``; or, with
  ``parameter_free=True``, the authors' later variant without projections (min-max normalised
  similarities over the neighbours).
* :class:`SemanticPropagation`: :math:`\hat A (X W_s)` over the label graph, then a projection.
* :class:`BGFormerBlock`: the pre-norm block that mixes the two with weight λ, then an FFN.

Every layer takes any graph: a ``(2, E)`` ``edge_index`` (PyG convention, edge ``j → i`` has
``edge_index[0] = j`` and ``edge_index[1] = i``), a ``torch.sparse`` adjacency or a
``torch_sparse.SparseTensor``. A sparse adjacency is read as PyG's transposed adjacency
``adj_t``: a stored entry at ``(i, j)`` is the edge ``j → i``; only its pattern is used, its values
are ignored.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import (
    remove_self_loops,
    scatter,
    softmax,
)

from pygml.graph import LABEL, VISUAL, edges_of_type
from pygml.nn.adjacency import read_adjacency, with_weights

#: the largest ``heads · N²`` for which ``kernel="auto"`` takes the dense kernel (see :class:`SSAConv`).
#: Measured on 2 CPU cores at K = 30, 384 channels, 6 heads (forward + backward), the dense kernel was
#: still the faster one at N = 3200 (3.0 s against 3.5 s; 0.8 s against 1.6 s at N = 1000); the bound
#: (N ≈ 2360 at 6 heads) keeps its (H, N, N) scores within 128 MiB in fp32.
DENSE_MAX_ENTRIES = 2**25

KERNELS = ("auto", "dense", "sparse")


def _check_x(x: Tensor, channels: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (N, {channels}), got {shape}")


def minmax_weights(scores: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    r"""Min-max normalised weights over each target's in-edges, rescaled to sum to 1.

    .. math:: w_{ij} = \frac{s_{ij} - \min_{k \in \mathcal N(i)} s_{ik}}
              {\max_{k \in \mathcal N(i)} s_{ik} - \min_{k \in \mathcal N(i)} s_{ik}}, \qquad
              \alpha_{ij} = w_{ij} / \textstyle\sum_{k \in \mathcal N(i)} w_{ik}

    A node whose neighbours all score the same gets uniform weights.

    Shapes: scores (E, H), index (E,) the target of each edge; returns (E, H).
    """
    lo = scatter(scores, index, 0, num_nodes, reduce="min")[index]
    hi = scatter(scores, index, 0, num_nodes, reduce="max")[index]
    span = hi - lo
    flat = span <= 0
    w = torch.where(flat, torch.ones_like(scores), (scores - lo) / span.masked_fill(flat, 1.0))
    total = scatter(w, index, 0, num_nodes, reduce="sum")[index]
    return w / total


class SSAConv(MessagePassing):
    r"""Structure-constrained self-attention (BGFormer's SSA over the visual graph).

    Multi-head attention in which node :math:`i` attends only over its in-neighbours
    :math:`\mathcal N(i)` (PyG's ``TransformerConv`` without a root weight, with an output projection):

    .. math::
        \alpha^h_{ij} = \operatorname{softmax}_{j \in \mathcal N(i)}
            \frac{\langle W^h_q x_i, W^h_k x_j\rangle}{\sqrt{d}}, \qquad
        x'_i = W_o \big\Vert_{h=1}^{H} \sum_{j \in \mathcal N(i)} \alpha^h_{ij} W^h_v x_j

    with :math:`d = C / H`; :math:`W_q, W_k, W_v` are kept as one ``Linear(C, 3C)`` (``lin_qkv``, Xavier
    init, zero bias, as ``nn.MultiheadAttention``), :math:`W_o` is ``lin_out``. With
    ``parameter_free=True`` (the authors' later variant) there is no projection and one head:
    :math:`s_{ij} = \langle x_i, x_j\rangle` (the rows of :math:`XX^\top` kept by the graph, i.e. each
    node's top-K similarities), min-max normalised over :math:`\mathcal N(i)` and rescaled to sum to 1
    (:func:`minmax_weights`; the rescaling is our choice, so that the output stays on the scale of
    :math:`x` whatever K), and :math:`x'_i = \sum_j \alpha_{ij} x_j`.

    Duplicate edges count as often as they appear (as in PyG's edge-wise softmax). A node without
    in-edges aggregates nothing (zero before the output projection).

    Two kernels give the same numbers (tested): ``"dense"`` computes the (H, N, N) score matrix with
    a log-multiplicity mask (``-inf`` off the graph) and fused scaled-dot-product attention;
    ``"sparse"`` is the edge-wise ``MessagePassing`` path (segment softmax with ``ptr`` when edges are
    sorted by target), whose memory grows with E instead of N². On batch graphs the dense kernel
    wins: at N = 405, K = 30, 6 heads of 64, gathering the (N, K, H, d) keys and values of a
    fixed-degree kNN graph made the attention about 4× slower than the masked dense product, and the
    edge-wise path is 2–3× slower than the dense kernel (``bench/bench_bgformer.py``).
    ``"auto"`` takes the dense kernel while :math:`H N^2 \le` ``DENSE_MAX_ENTRIES``.

    Args:
        channels: input and output size C.
        heads: number of heads H; must divide ``channels`` (1 when ``parameter_free``).
        dropout: dropout on the attention weights during training.
        parameter_free: the projection-free min-max variant.
        kernel: ``"auto"``, ``"dense"`` or ``"sparse"``.

    Shapes:
        - x: (N, C); edge_index: (2, E), or a sparse (N, N) ``adj_t``
        - output: (N, C); with ``return_attention_weights=True`` also ``(edge_index, alpha (E, H))``,
          or the sparse ``adj_t`` holding ``alpha`` as values
    """

    def __init__(self, channels: int, heads: int = 1, dropout: float = 0.0, parameter_free: bool = False,
                 kernel: str = "auto") -> None:
        super().__init__(aggr="add", node_dim=0)
        if channels < 1 or heads < 1:
            raise ValueError(f"channels and heads must be positive, got channels={channels}, heads={heads}")
        if channels % heads:
            raise ValueError(f"heads={heads} must divide channels={channels}")
        if parameter_free and heads != 1:
            raise ValueError(f"the parameter-free SSA has a single head; got heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.channels = channels
        self.heads = heads
        self.dropout = dropout
        self.parameter_free = parameter_free
        self.kernel = kernel
        if parameter_free:
            self.lin_qkv = None
            self.lin_out = None
        else:
            self.lin_qkv = nn.Linear(channels, 3 * channels)
            self.lin_out = nn.Linear(channels, channels)
        self._alpha: Optional[Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_qkv, self.lin_out):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def use_dense(self, num_nodes: int) -> bool:
        """Whether ``forward`` takes the dense kernel for a graph of ``num_nodes`` nodes."""
        if self.kernel != "auto":
            return self.kernel == "dense"
        return self.heads * num_nodes * num_nodes <= DENSE_MAX_ENTRIES

    def forward(self, x: Tensor, edge_index: Union[Tensor, SparseTensor],
                return_attention_weights: Optional[bool] = None) -> Union[Tensor, tuple[Tensor, Any]]:
        """Attend over the in-edges; return the new features (and the attention weights if asked)."""
        _check_x(x, self.channels)
        n, H = x.size(0), self.heads
        edges, ptr, adj = read_adjacency(edge_index, n)
        if self.parameter_free:
            q = k = v = x.view(n, 1, self.channels)
        else:
            q, k, v = self.lin_qkv(x).view(n, 3, H, self.channels // H).unbind(1)
        need = bool(return_attention_weights)
        if self.use_dense(n):
            out, alpha = self._dense(q, k, v, edges, need)
        else:
            out = self.propagate(edges, query=q, key=k, value=v, seg_ptr=ptr, size=(n, n))
            alpha, self._alpha = self._alpha, None
        out = out.reshape(n, self.channels)
        if self.lin_out is not None:
            out = self.lin_out(out)
        if need:
            return out, with_weights(adj, edges, alpha)
        return out

    def _scores(self, query_i: Tensor, key_j: Tensor) -> Tensor:
        s = (query_i * key_j).sum(dim=-1)
        return s if self.parameter_free else s / math.sqrt(query_i.size(-1))

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, index: Tensor,
                seg_ptr: Optional[Tensor], size_i: Optional[int]) -> Tensor:
        s = self._scores(query_i, key_j)
        if self.parameter_free:
            alpha = minmax_weights(s, index, size_i)
        else:
            alpha = softmax(s, index, seg_ptr, size_i)
        self._alpha = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        return value_j * alpha.unsqueeze(-1)

    def _dense(self, q: Tensor, k: Tensor, v: Tensor, edges: Tensor,
               need_alpha: bool) -> tuple[Tensor, Optional[Tensor]]:
        """The dense kernel: (N, H, d) inputs → (N, H, d) output and the (E, H) weights if asked."""
        n = q.size(0)
        src, dst = edges
        flat_index = dst * n + src
        count = torch.bincount(flat_index, minlength=n * n).to(q.dtype)  # multiplicity of j -> i at i·n + j
        mult = count[flat_index]
        count = count.view(n, n)
        has_in = (torch.bincount(dst, minlength=n) > 0).view(n, 1)
        qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (H, N, d)
        p = self.dropout if self.training else 0.0
        if self.parameter_free:
            s = qh @ kh.transpose(1, 2)
            on = count > 0
            lo = s.masked_fill(~on, math.inf).amin(-1, keepdim=True)
            hi = s.masked_fill(~on, -math.inf).amax(-1, keepdim=True)
            lo, hi = lo.masked_fill(~has_in, 0.0), hi.masked_fill(~has_in, 0.0)
            span = hi - lo
            flat = span <= 0
            w = torch.where(flat, torch.ones_like(s), (s - lo) / span.masked_fill(flat, 1.0)) * count
            a = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        else:
            # log-multiplicity mask: 0 on single edges, -inf off the graph; finite on rows without in-edges
            bias = count.clamp_min(1).log() if bool((mult > 1).any()) else torch.zeros_like(count)
            bias.masked_fill_((count == 0) & has_in, -math.inf)
            if not need_alpha:
                out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, dropout_p=p).transpose(0, 1)
                return (out if bool(has_in.all()) else out * has_in.unsqueeze(-1)), None
            s = torch.baddbmm(bias.expand(self.heads, n, n), qh, kh.transpose(1, 2), alpha=1 / math.sqrt(q.size(-1)))
            a = s.softmax(-1) * has_in
        alpha = (a[:, dst, src] / mult).t() if need_alpha else None
        out = F.dropout(a, p=p, training=self.training) @ vh
        return out.transpose(0, 1), alpha

    def __repr__(self) -> str:
        variant = ", parameter_free=True" if self.parameter_free else ""
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}{variant}, kernel={self.kernel!r})"


class SemanticPropagation(MessagePassing):
    r"""BGFormer's semantic branch: propagation over the label graph, then a projection.

    .. math:: X' = \hat A\, (X W_s)\, W_o + b, \qquad \hat A = D^{-1/2} A D^{-1/2}, \quad A = Y + I

    with :math:`Y_{ij} = [y_i = y_j]`. Our reading of the paper: Y is the label-similarity matrix,
    which includes its diagonal (:math:`y_i = y_i`), so A carries 2 on the diagonal (PyG's
    ``gcn_norm(improved=True)``); ``y_includes_self=False`` takes Y without its diagonal, so
    :math:`A = Y_{\ne} + I` and :math:`\hat A X` is exactly each class's mean. The normalisation is
    PyG's ``gcn_norm``. The input graph holds the off-diagonal label edges ``j → i``
    (``pygml.graph.batch_graph``'s ``LABEL`` relation); self loops in it are dropped, the diagonal
    comes from ``y_includes_self``.

    Args:
        channels: input and output size C.
        y_includes_self: the diagonal of A is 2 (True) or 1 (False).

    Shapes: x (N, C); edge_index (2, E) or a sparse (N, N) ``adj_t``; output (N, C).
    """

    def __init__(self, channels: int, y_includes_self: bool = True) -> None:
        super().__init__(aggr="add", node_dim=0)
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.y_includes_self = y_includes_self
        self.lin = nn.Linear(channels, channels, bias=False)
        self.lin_out = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.lin_out.weight)
        nn.init.zeros_(self.lin_out.bias)

    def normalized_edges(self, edge_index: Union[Tensor, SparseTensor], num_nodes: int,
                         dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The edges of :math:`\\hat A` (self loops included) and their weights (E',)."""
        edges, _, _ = read_adjacency(edge_index, num_nodes)
        edges, _ = remove_self_loops(edges)
        # explicit unit weights: with edge_weight=None, gcn_norm gives the self loops weight 1 even when
        # improved=True
        ones = torch.ones(edges.size(1), dtype=dtype, device=edges.device)
        return gcn_norm(edges, ones, num_nodes, improved=self.y_includes_self, add_self_loops=True, dtype=dtype)

    def forward(self, x: Tensor, edge_index: Union[Tensor, SparseTensor]) -> Tensor:
        _check_x(x, self.channels)
        edges, weight = self.normalized_edges(edge_index, x.size(0), x.dtype)
        h = self.propagate(edges, x=self.lin(x), edge_weight=weight, size=(x.size(0), x.size(0)))
        return self.lin_out(h)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, y_includes_self={self.y_includes_self})"


class BGFormerBlock(nn.Module):
    r"""One BGFormer block (pre-LayerNorm, dual structure-constrained self-attention, FFN):

    .. math::
        \tilde x = \mathrm{LN}_1(x), \qquad
        x \leftarrow x + \lambda\, \mathrm{SSA}_v(\tilde x, G_v) + (1 - \lambda)\, \mathrm{SSA}_s(\tilde x, G_s),
        \qquad x \leftarrow x + W_2\, \mathrm{GELU}(W_1\, \mathrm{LN}_2(x))

    with :math:`\mathrm{SSA}_v` an :class:`SSAConv` over the visual graph and :math:`\mathrm{SSA}_s` a
    :class:`SemanticPropagation` over the label graph; :math:`W_1: C \to rC` with r = ``mlp_ratio``.

    Called either with the batch ``Data`` of :func:`pygml.graph.batch_graph` (its ``edge_type``
    tells the ``VISUAL`` edges from the ``LABEL`` ones; whether the visual relation holds self loops
    is the graph's choice: ``batch_graph`` adds them by default, so each node attends over itself and
    its K nearest neighbours) or with ``(x, visual_edge_index, label_edge_index)`` for any other
    graph (``label_edge_index=None``: no label edges, :math:`\hat A = I`).

    Args:
        channels: token size C.
        heads: heads of the visual attention (ignored when ``parameter_free``).
        mix: λ in [0, 1]; a branch whose weight is 0 is not computed.
        mlp_ratio: hidden size of the FFN over C.
        dropout: on the attention weights and on each residual branch.
        parameter_free: the projection-free visual attention.
        y_includes_self: see :class:`SemanticPropagation`.
        kernel: see :class:`SSAConv`.

    Shapes: x (N, C) → (N, C).
    """

    def __init__(self, channels: int, heads: int = 1, mix: float = 0.5, mlp_ratio: int = 4, dropout: float = 0.0,
                 parameter_free: bool = False, y_includes_self: bool = True, kernel: str = "auto") -> None:
        super().__init__()
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix (λ) must lie in [0, 1], got {mix}")
        if mlp_ratio < 1:
            raise ValueError(f"mlp_ratio must be a positive int, got {mlp_ratio}")
        self.channels = channels
        self.mix = mix
        self.norm1 = nn.LayerNorm(channels)
        self.ssa_v = SSAConv(channels, 1 if parameter_free else heads, dropout, parameter_free, kernel)
        self.ssa_s = SemanticPropagation(channels, y_includes_self)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * channels, channels))
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()
        self.ssa_v.reset_parameters()
        self.ssa_s.reset_parameters()
        for m in self.ffn:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, data_or_x: Union[Data, Tensor], visual_edge_index: Optional[Union[Tensor, SparseTensor]] = None,
                label_edge_index: Optional[Union[Tensor, SparseTensor]] = None) -> Tensor:
        if isinstance(data_or_x, Data):
            if visual_edge_index is not None or label_edge_index is not None:
                raise ValueError("pass either a batch Data or (x, visual_edge_index, label_edge_index), not both")
            x, visual_edge_index, label_edge_index = self.split_relations(data_or_x)
        else:
            x = data_or_x
            if visual_edge_index is None:
                raise ValueError("visual_edge_index is required when x is a tensor")
        _check_x(x, self.channels)
        if label_edge_index is None:
            label_edge_index = torch.empty(2, 0, dtype=torch.long, device=x.device)
        h = self.norm1(x)
        if self.mix > 0:
            x = x + self.mix * self.drop(self.ssa_v(h, visual_edge_index))
        if self.mix < 1:
            x = x + (1.0 - self.mix) * self.drop(self.ssa_s(h, label_edge_index))
        return x + self.drop(self.ffn(self.norm2(x)))

    @staticmethod
    def split_relations(data: Data) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, visual edges, label edges)`` of a :func:`pygml.graph.batch_graph` ``Data``."""
        if data.x is None:
            raise ValueError("the graph needs node features x; build it with pygml.graph.batch_graph")
        return data.x, edges_of_type(data, VISUAL), edges_of_type(data, LABEL)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, ssa_v={self.ssa_v!r}, ssa_s={self.ssa_s!r}, "
                f"mix={self.mix}, mlp_ratio={self.ffn[0].out_features // self.channels})")


__all__ = ["BGFormerBlock", "SSAConv", "SemanticPropagation", "minmax_weights"]
