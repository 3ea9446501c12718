r"""The layers of BGFormer (Wang, Jiang, Wang, Luo, "Rethinking Batch Sample Relationships for Data
Representation: A Batch-Graph Transformer based Approach", IEEE TMM 2023), as the authors' released
implementation computes them.

* :class:`SSAConv`: structure-constrained self-attention, each node attending over its candidate
  in-edges; with ``top_k`` each head keeps only the K best-scoring of them (the authors' visual
  relation); with ``parameter_free=True`` the authors' v2 attention (no projections, min-max weights).
* :class:`SemanticPropagation`: :math:`\hat A (X W_s)` over the label graph, then a projection.
* :class:`BGFormerBlock`: the pre-norm block that mixes the two with weight λ, then an FFN.

Every layer takes any graph: a ``(2, E)`` ``edge_index`` (PyG convention, edge ``j → i`` has
``edge_index[0] = j`` and ``edge_index[1] = i``), a ``torch.sparse`` adjacency or a
``torch_sparse.SparseTensor``. A sparse adjacency is read as PyG's transposed adjacency
``adj_t``: a stored entry at ``(i, j)`` is the edge ``j → i``; only its pattern is used, its values
are ignored.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import scatter

from pygml.graph import LABEL, VISUAL, edges_of_type
from pygml.nn.adjacency import read_adjacency
from pygml.nn.attention import EdgeAttention

Adjacency = Union[Tensor, SparseTensor]

#: the variants of :class:`BGFormerBlock`
VARIANTS = ("v1", "v2")


class SSAConv(EdgeAttention):
    r"""Structure-constrained self-attention (BGFormer's SSA over the visual relation).

    Multi-head attention in which node :math:`i` attends over its candidate in-neighbours
    :math:`\mathcal C(i)` (PyG's ``TransformerConv`` without a root weight, with an output projection);
    with ``top_k`` = K each head h keeps the K of them with the highest scaled logits, the authors'
    visual relation:

    .. math::
        s^h_{ij} = \frac{\langle W^h_q x_i, W^h_k x_j\rangle}{\sqrt{d}}, \qquad
        \mathcal N^h(i) = \operatorname{top-K}_{j \in \mathcal C(i)} s^h_{ij}, \qquad
        \alpha^h_{ij} = \operatorname{softmax}_{j \in \mathcal N^h(i)} s^h_{ij}, \qquad
        x'_i = W_o \big\Vert_{h=1}^{H} \sum_{j \in \mathcal N^h(i)} \mathrm{Dropout}(\alpha^h_{ij}) W^h_v x_j

    with :math:`d = C / H`; :math:`W_q, W_k, W_v` are one ``Linear(C, 3C)`` (``lin_qkv``, with bias;
    Xavier init, zero bias, as ``nn.MultiheadAttention``), :math:`W_o` is ``lin_out``. ``top_k=None``
    attends over every candidate (:math:`\mathcal N = \mathcal C`), and so does a K at least the
    in-degree. Given the full graph (every pair, self loops included), ``top_k`` is the authors'
    attention: a node is its own neighbour only if it ranks in its top K.

    With ``parameter_free=True`` (the authors' v2) there is no projection and one head:
    :math:`s_{ij} = \langle x_i, x_j\rangle` (no scale), the kept scores min-max normalised,
    :math:`\alpha_{ij} = (s_{ij} - \min_{\mathcal N(i)} s) / (\max_{\mathcal N(i)} s - \min_{\mathcal N(i)} s)`
    (:func:`~pygml.nn.attention.minmax_weights`: the weakest kept neighbour gets 0 and the weights are
    not rescaled to sum to 1), and :math:`x'_i = \sum_j \alpha_{ij} x_j`.

    Ties, repeated edges, nodes without in-edges and the two kernels are as in
    :class:`~pygml.nn.attention.EdgeAttention`: among equal logits the smaller source index is kept;
    the copies of a repeated edge are one candidate for the top K (K counts distinct neighbours) and, if
    kept, count as often as they appear. Dropout acts on the kept weights.

    Args:
        channels: input and output size C.
        heads: number of heads H; must divide ``channels`` (1 when ``parameter_free``).
        top_k: neighbours each head keeps per node; ``None`` keeps every candidate.
        dropout: dropout on the attention weights during training.
        parameter_free: the authors' projection-free min-max variant (v2).
        kernel: ``"auto"``, ``"dense"`` or ``"sparse"``.

    Shapes:
        - x: (N, C); edge_index: (2, E), or a sparse (N, N) ``adj_t``
        - output: (N, C); with ``return_attention_weights=True`` also ``(edge_index, alpha (E, H))``,
          or the sparse ``adj_t`` holding ``alpha`` as values; with ``top_k``, followed by ``kept``
          (E, H) bool (:class:`~pygml.nn.attention.EdgeAttention`)
    """

    def __init__(self, channels: int, heads: int = 1, top_k: Optional[int] = None, dropout: float = 0.0,
                 parameter_free: bool = False, kernel: str = "auto") -> None:
        if parameter_free and heads != 1:
            raise ValueError(f"the parameter-free SSA has a single head; got heads={heads}")
        super().__init__(channels, heads, normalization="minmax" if parameter_free else "softmax",
                         scaled=not parameter_free, dropout=dropout, top_k=top_k, kernel=kernel)
        self.parameter_free = parameter_free
        self.lin_qkv = None if parameter_free else nn.Linear(channels, 3 * channels)
        self.lin_out = None if parameter_free else nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_qkv, self.lin_out):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.lin_qkv is None:
            same = x.view(x.size(0), 1, self.channels)
            return same, same, same
        q, k, v = self.lin_qkv(x).view(x.size(0), 3, self.heads, self.head_dim).unbind(1)
        return q, k, v

    def project_out(self, out: Tensor) -> Tensor:
        return out if self.lin_out is None else self.lin_out(out)

    def __repr__(self) -> str:
        top_k = "" if self.top_k is None else f", top_k={self.top_k}"
        variant = ", parameter_free=True" if self.parameter_free else ""
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}{top_k}{variant}, kernel={self.kernel!r})"


class SemanticPropagation(MessagePassing):
    r"""BGFormer's semantic branch: propagation over the label graph, then a projection.

    .. math:: X' = W_o\bigl(\hat A\, (X W_s + b_s)\bigr) + b_o, \qquad \hat A = D^{-1/2} A D^{-1/2},
        \quad A = Y + I

    with :math:`Y_{ij} = [y_i = y_j]` and D the row sums of A. :math:`W_s` is a ``Linear(C, C)`` with bias
    (``lin``), :math:`W_o` the projection ``lin_out`` (``project=False`` leaves it out: the v2 block
    applies one projection shared with the visual branch). Y includes its diagonal
    (:math:`y_i = y_i`), so A carries 2 on the diagonal (PyG's ``gcn_norm(improved=True)``);
    ``y_includes_self=False`` takes Y without its diagonal, so :math:`A = Y_{\ne} + I` and
    :math:`\hat A X` is exactly each class's mean. The input graph holds the off-diagonal label edges
    ``j → i`` (``pygml.graph.batch_graph``'s ``LABEL`` relation); self loops in it are ignored, the
    diagonal comes from ``y_includes_self``. A repeated edge counts as often as it appears.

    Args:
        channels: input and output size C.
        y_includes_self: the diagonal of A is 2 (True) or 1 (False).
        project: end with the projection :math:`W_o`.

    Shapes: x (N, C); edge_index (2, E) or a sparse (N, N) ``adj_t``; output (N, C).
    """

    def __init__(self, channels: int, y_includes_self: bool = True, project: bool = True) -> None:
        super().__init__(aggr="add", node_dim=0)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.y_includes_self = y_includes_self
        self.lin = nn.Linear(channels, channels)
        self.lin_out = nn.Linear(channels, channels) if project else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin, self.lin_out):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def normalized_edges(self, edge_index: Adjacency, num_nodes: int,
                         dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        r"""The edges of :math:`\hat A` (the input's, then one self loop per node) and their weights (E + N,);
        the input's self loops keep weight 0."""
        edges = read_adjacency(edge_index, num_nodes).edge_index
        src, dst = edges[0], edges[1]
        loops = torch.arange(num_nodes, device=edges.device)
        diagonal = 2.0 if self.y_includes_self else 1.0
        weight = torch.cat([(src != dst).to(dtype), torch.full((num_nodes,), diagonal, dtype=dtype,
                                                                device=edges.device)])
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
        inv_sqrt_deg = scatter(weight, dst, 0, dim_size=num_nodes, reduce="sum").rsqrt()
        return torch.stack([src, dst]), inv_sqrt_deg[src] * weight * inv_sqrt_deg[dst]

    def forward(self, x: Tensor, edge_index: Adjacency) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != self.channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.channels}), got {shape}")
        n = x.size(0)
        edges, weight = self.normalized_edges(edge_index, n, x.dtype)
        h = self.propagate(edges, x=self.lin(x), edge_weight=weight, size=(n, n))
        return h if self.lin_out is None else self.lin_out(h)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        project = "" if self.lin_out is not None else ", project=False"
        return f"{self.__class__.__name__}({self.channels}, y_includes_self={self.y_includes_self}{project})"


class BGFormerBlock(nn.Module):
    r"""One BGFormer block, as the authors' released code computes it (pre-LayerNorm, the visual and the
    semantic branches mixed with weight λ, then an FFN).

    ``variant="v1"`` (the authors' default):

    .. math::
        \tilde x = \mathrm{LN}_1(x), \qquad
        x \leftarrow x + \lambda\, \mathrm{SSA}_v(\tilde x, G_v) + (1 - \lambda)\, \mathrm{SSA}_s(\tilde x, G_s),
        \qquad x \leftarrow x + W_2\, \mathrm{GELU}(W_1\, \mathrm{LN}_2(x))

    with :math:`\mathrm{SSA}_v` an :class:`SSAConv` (``heads``, ``top_k``: every head keeps the K
    candidates with the highest scaled logits; its ``lin_out`` is the visual projection) and
    :math:`\mathrm{SSA}_s` a :class:`SemanticPropagation` (:math:`\hat A (X W_s)` then its projection);
    :math:`W_1: C \to rC` with r = ``mlp_ratio``.

    ``variant="v2"`` (the authors' parameter-free attention): :math:`\mathrm{SSA}_v` is the
    parameter-free :class:`SSAConv` (:math:`S = \tilde x \tilde x^\top`, top K per row, min-max within
    the K kept values, no heads) and the two branches share one output projection P:
    :math:`x \leftarrow x + \lambda P(\mathrm{SSA}_v) + (1-\lambda) P(\hat A \tilde x W_s)`, computed as
    :math:`P(\lambda\, \mathrm{SSA}_v + (1 - \lambda)\, \hat A \tilde x W_s)` (the same, P being affine).

    The authors' visual candidates are every row of the batch, self included: give the full graph
    (``pygml.graph.batch_graph(x, y, k=None)``, whose visual relation has self loops). With a
    precomputed visual graph and ``top_k=None`` every node attends over all its given neighbours:
    pygml's own "feature_knn" variant (e.g. the cosine kNN graph of ``batch_graph(x, y, k=K)``), not
    the authors' method.

    Called either with the batch ``Data`` of :func:`pygml.graph.batch_graph` (its ``edge_type`` tells the
    ``VISUAL`` edges from the ``LABEL`` ones) or with ``(x, visual_edge_index, label_edge_index)`` for any
    other graph (``label_edge_index=None``: no label edges, :math:`\hat A = I`).

    Args:
        channels: token size C.
        heads: heads of the visual attention (v1; v2 has none and ignores it).
        top_k: visual neighbours each head keeps per node; ``None`` keeps every given visual edge.
        mix: λ in [0, 1]; a branch whose weight is 0 is not computed.
        mlp_ratio: hidden size of the FFN over C.
        dropout: on the attention weights, on the mixed attention branch and in the FFN.
        variant: ``"v1"`` or ``"v2"``.
        y_includes_self: see :class:`SemanticPropagation`.
        kernel: see :class:`SSAConv`.

    Shapes: x (N, C) → (N, C).
    """

    def __init__(self, channels: int, heads: int = 1, top_k: Optional[int] = 30, mix: float = 0.5,
                 mlp_ratio: int = 4, dropout: float = 0.0, variant: str = "v1", y_includes_self: bool = True,
                 kernel: str = "auto") -> None:
        super().__init__()
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix (λ) must lie in [0, 1], got {mix!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int) or mlp_ratio < 1:
            raise ValueError(f"mlp_ratio must be a positive int, got {mlp_ratio!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        v2 = variant == "v2"
        self.channels = channels
        self.mix = mix
        self.variant = variant
        self.norm1 = nn.LayerNorm(channels)
        self.ssa_v = SSAConv(channels, 1 if v2 else heads, top_k=top_k, dropout=dropout, parameter_free=v2,
                             kernel=kernel)
        self.ssa_s = SemanticPropagation(channels, y_includes_self, project=not v2)
        self.proj = nn.Linear(channels, channels) if v2 else None
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * channels, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.norm1, self.ssa_v, self.ssa_s, self.norm2, self.ffn[0], self.ffn[3]):
            m.reset_parameters()
        if self.proj is not None:
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, data_or_x: Union[Data, Tensor], visual_edge_index: Optional[Adjacency] = None,
                label_edge_index: Optional[Adjacency] = None) -> Tensor:
        if isinstance(data_or_x, Data):
            if visual_edge_index is not None or label_edge_index is not None:
                raise ValueError("pass either a batch Data or (x, visual_edge_index, label_edge_index), not both")
            x, visual_edge_index, label_edge_index = self.split_relations(data_or_x)
        else:
            x = data_or_x
            if visual_edge_index is None:
                raise ValueError("visual_edge_index is required when x is a tensor")
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != self.channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.channels}), got {shape}")
        if label_edge_index is None:
            label_edge_index = torch.empty(2, 0, dtype=torch.long, device=x.device)
        h = self.norm1(x)
        branches = []
        if self.mix > 0:
            branches.append(self.mix * self.ssa_v(h, visual_edge_index))
        if self.mix < 1:
            branches.append((1.0 - self.mix) * self.ssa_s(h, label_edge_index))
        mixed = branches[0] if len(branches) == 1 else branches[0] + branches[1]
        if self.proj is not None:
            mixed = self.proj(mixed)
        x = x + self.drop(mixed)
        return x + self.drop(self.ffn(self.norm2(x)))

    @staticmethod
    def split_relations(data: Data) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, visual edges, label edges)`` of a :func:`pygml.graph.batch_graph` ``Data``."""
        if data.x is None:
            raise ValueError("the graph needs node features x; build it with pygml.graph.batch_graph")
        return data.x, edges_of_type(data, VISUAL), edges_of_type(data, LABEL)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.ssa_v.heads}, top_k={self.ssa_v.top_k}, "
                f"mix={self.mix}, mlp_ratio={self.ffn[0].out_features // self.channels}, variant={self.variant!r})")


__all__ = ["BGFormerBlock", "SSAConv", "SemanticPropagation", "VARIANTS"]
