r"""Attention along the edges of a graph: the one base of :class:`~pygml.nn.IntraBatchAttention` and
:class:`~pygml.nn.SSAConv`.

:class:`EdgeAttention` scores every edge j → i by :math:`s_{ij} = \tau \langle q_i, k_j \rangle` per head,
optionally keeps only the ``top_k`` best-scoring in-edges of each target and head, normalises the scores
over each target's (kept) in-edges and aggregates :math:`\sum_j a_{ij} v_j`. Subclasses supply the
projections (:meth:`EdgeAttention.project`, :meth:`EdgeAttention.project_out`) and name the
normalisation:

* ``"softmax"``: :func:`torch_geometric.utils.softmax`;
* ``"zero_logit_softmax"``: :func:`zero_logit_softmax`, a softmax with one implicit extra logit 0;
* ``"minmax"``: :func:`minmax_weights`, :math:`(s - \min) / (\max - \min)` over the group.

Two kernels give the same numbers (to rounding) and the same gradients:

* ``"sparse"``: the edge-wise :class:`~torch_geometric.nn.conv.MessagePassing` kernel; memory O(E·C).
  Groups are formed by segments (``ptr``) when the input says its edges are sorted by target (see
  :mod:`pygml.nn.adjacency`), else by scatter over the target index;
* ``"dense"``: all N² scores of each head at once, (H, N, N), the graph entering as the multiplicity
  ``c_ij`` of each pair (0 off the graph); memory O(H·N²), much faster on small dense graphs such as a
  batch graph.

``"auto"`` takes the dense kernel while :math:`H N^2 \le` :data:`DENSE_MAX_ENTRIES` and the graph has at
least :data:`DENSE_MIN_DENSITY` · N² edges.

Nothing on the forward path reads a tensor value on the host (no ``.item()``, no ``bool(tensor)``, no
data-dependent shapes), so a step on a GPU never waits for the device.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.index import index2ptr, ptr2index
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import scatter, segment, softmax
from torch_geometric.utils.num_nodes import maybe_num_nodes

from pygml.nn.adjacency import Graph, read_adjacency, with_weights

Adjacency = Union[Tensor, SparseTensor]

#: the kernels of :class:`EdgeAttention`
KERNELS = ("auto", "dense", "sparse")

#: the normalisations of the scores :class:`EdgeAttention` knows
NORMALIZATIONS = ("softmax", "zero_logit_softmax", "minmax")

#: the largest ``heads · N²`` for which ``kernel="auto"`` takes the dense kernel: its (H, N, N) scores,
#: weights and their gradients stay within a few hundred MiB in fp32 (N ≈ 2360 at 6 heads). Measured on
#: 2 CPU cores at 384 channels, 6 heads, top-K 30 on the full graph (forward + backward), the dense
#: kernel is still the faster one at N = 2000.
DENSE_MAX_ENTRIES = 2**25

#: the smallest density E / N² for which ``kernel="auto"`` takes the dense kernel. Measured on 2 CPU
#: cores (forward + backward, 512 channels, 8 heads, N = 90 to 1000, ``bench``-style timing), the two
#: kernels cost the same near a density of 0.03.
DENSE_MIN_DENSITY = 0.03


def _groups(src: Tensor, index: Optional[Tensor], ptr: Optional[Tensor], num_nodes: Optional[int],
            caller: str) -> tuple[Tensor, int]:
    """The group of every entry of ``src`` and the number of groups, from ``index`` or ``ptr``."""
    if index is not None:
        return index, maybe_num_nodes(index, num_nodes)
    if ptr is None:
        raise ValueError(f"{caller} needs 'index' or 'ptr' to form the groups")
    return ptr2index(ptr, output_size=src.size(0)), ptr.numel() - 1


def zero_logit_softmax(src: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                       num_nodes: Optional[int] = None) -> Tensor:
    r"""Softmax of ``src`` within groups, with one implicit extra logit of value 0 in every group.

    .. math::
        a_e = \frac{\exp(s_e)}{1 + \sum_{e' \in g(e)} \exp(s_{e'})}
            = \frac{\exp(s_e - m_g)}{\exp(-m_g) + \sum_{e' \in g(e)} \exp(s_{e'} - m_g)},
        \qquad m_g = \max\bigl(0, \max_{e' \in g(e)} s_{e'}\bigr)

    The weights of a group sum to less than 1: the missing mass goes to the zero logit, whose value
    vector is zero (a node may attend to "nothing"). Same calling convention as
    :func:`torch_geometric.utils.softmax` with ``dim=0``; an entry of score :math:`-\infty` gets weight 0.
    The denominator is at least 1, so no epsilon is needed.

    Args:
        src: scores, shape (E,) or (E, H); groups are formed along the first dimension.
        index: group of each entry, shape (E,), e.g. the target node of each edge.
        ptr: CSR pointers of the groups, shape (num_groups + 1,), when ``src`` is sorted by group;
            faster than ``index``.
        num_nodes: number of groups (``index.max() + 1`` when not given).

    Returns:
        Weights with the shape of ``src``.
    """
    if ptr is not None:
        count = ptr[1:] - ptr[:-1]
        m = segment(src.detach(), ptr, reduce="max").clamp_min(0)
        e = (src - m.repeat_interleave(count, dim=0, output_size=src.size(0))).exp()
        denom = segment(e, ptr, reduce="sum") + (-m).exp()
        return e / denom.repeat_interleave(count, dim=0, output_size=src.size(0))
    index, n = _groups(src, index, ptr, num_nodes, "zero_logit_softmax")
    m = scatter(src.detach(), index, 0, dim_size=n, reduce="max").clamp_min(0)
    e = (src - m.index_select(0, index)).exp()
    denom = scatter(e, index, 0, dim_size=n, reduce="sum") + (-m).exp()
    return e / denom.index_select(0, index)


def minmax_weights(src: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                   num_nodes: Optional[int] = None) -> Tensor:
    r"""Min-max normalised scores within groups (BGFormer's parameter-free attention, the authors' v2):

    .. math:: a_e = \frac{s_e - \min_{e' \in g(e)} s_{e'}}{\max_{e' \in g(e)} s_{e'} - \min_{e' \in g(e)} s_{e'}}

    The strongest entry of a group gets 1, the weakest 0; the weights are *not* rescaled to sum to 1.
    Entries of score :math:`-\infty` take no part and get 0. A group whose entries all score the same
    (one entry, say) gives each of them 1: the formula is 0/0 there, and each entry is the strongest.
    At ties for the minimum or the maximum, the gradient is shared equally among the tied entries (as
    :func:`torch.amax` does). Same calling convention as :func:`zero_logit_softmax`.

    Shapes: src (E,) or (E, H); index (E,) or ptr (num_groups + 1,); returns the shape of ``src``.
    """
    index, n = _groups(src, index, ptr, num_nodes, "minmax_weights")
    member = src > -math.inf
    s = src.masked_fill(~member, 0.0)
    at = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    # start from ±inf (include_self=False would count a start value equal to the result as a tie)
    lo = src.new_full((n, *src.shape[1:]), math.inf).scatter_reduce(0, at, s.masked_fill(~member, math.inf), "amin")
    hi = src.new_full((n, *src.shape[1:]), -math.inf).scatter_reduce(0, at, s.masked_fill(~member, -math.inf), "amax")
    lo, hi = lo.index_select(0, index), hi.index_select(0, index)
    return _minmax(s, lo, hi) * member


def _minmax(s: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    span = hi - lo
    flat = span <= 0
    return torch.where(flat, torch.ones_like(s), (s - lo) / span.masked_fill(flat, 1.0))


def dense_softmax(score: Tensor, count: Tensor, zero_logit: bool = False) -> Tensor:
    r"""The dense form of :func:`~torch_geometric.utils.softmax` (or, with ``zero_logit``, of
    :func:`zero_logit_softmax`) over the in-edges of each target: entry ``[h, i, j]`` stands for the
    ``count[i, j]`` edges j → i, each of weight :math:`\exp(s_{ij}) / Z_i`, so the entry holds
    :math:`c_{ij} \exp(s_{ij}) / Z_i`. A row without edges gets zeros.

    Shapes: score (H, N, N); count (N, N) or (H, N, N), 0 off the graph; returns (H, N, N).
    """
    bias = count.log()  # log-multiplicity: 0 on single edges, -inf off the graph
    if zero_logit:
        return F.pad(score + bias, (0, 1)).softmax(dim=-1)[..., :-1]
    has_in = count.sum(dim=-1, keepdim=True) > 0
    return (score + bias.masked_fill(~has_in, 0.0)).softmax(dim=-1) * has_in


def dense_minmax(score: Tensor, count: Tensor) -> Tensor:
    """The dense form of :func:`minmax_weights`: entry ``[h, i, j]`` holds ``count[i, j]`` times the weight
    of one edge j → i; a row without edges gets zeros. As in the edge-wise form, the gradient at a tie for
    the minimum or the maximum is shared equally among the tied *edges* (a repeated edge counts as often
    as it appears).

    Shapes: score (H, N, N); count (N, N) or (H, N, N), 0 off the graph; returns (H, N, N).
    """
    member = count > 0
    has_in = member.any(dim=-1, keepdim=True)
    lo = score.detach().masked_fill(~member, math.inf).amin(dim=-1, keepdim=True).masked_fill(~has_in, 0.0)
    hi = score.detach().masked_fill(~member, -math.inf).amax(dim=-1, keepdim=True).masked_fill(~has_in, 0.0)
    return _minmax(score, _tie_shared(lo, score, count), _tie_shared(hi, score, count)) * count


def _tie_shared(extreme: Tensor, score: Tensor, count: Tensor) -> Tensor:
    """``extreme`` (the detached row minimum or maximum) as a function of ``score``: its value unchanged,
    its gradient shared among the entries equal to it in proportion to their ``count``."""
    tied = (score.detach() == extreme) * count
    share = tied / tied.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return extreme + ((score - score.detach()) * share).sum(dim=-1, keepdim=True)


def topk_dense(score: Tensor, member: Tensor, k: int) -> Tensor:
    """Per row of ``score``, the ``k`` best entries among the ``member`` ones (all of them if fewer):
    higher score first, then the smaller column (source) index.

    Shapes: score (H, N, N), member (N, N) bool; returns (H, N, N) bool.
    """
    n = score.size(-1)
    if k >= n:
        return member.expand_as(score)
    s = score.masked_fill(~member, -math.inf)
    kth = s.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    above = s > kth
    tied = (s == kth) & member
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def topk_edges(score: Tensor, target: Tensor, source: Tensor, num_nodes: int, k: int) -> Tensor:
    """Per target and column of ``score``, the in-edges of its ``k`` best sources: higher score first,
    then the smaller source index. The copies of a repeated edge share one rank: they are kept or
    dropped together, so ``k`` counts distinct neighbours.

    Shapes: score (E, H), target (E,), source (E,); returns (E, H) bool.
    """
    # lexicographic order (target, -score, source) per column, by stable sorts from the last key
    order = torch.argsort(target * num_nodes + source, stable=True)
    order = order[torch.sort(score[order], dim=0, descending=True, stable=True).indices]
    order = order.gather(0, torch.sort(target[order], dim=0, stable=True).indices)
    tgt, src = target[order], source[order]
    new = torch.ones_like(order, dtype=torch.bool)
    new[1:] = (tgt[1:] != tgt[:-1]) | (src[1:] != src[:-1])  # first copy of a (target, source) pair
    rank = new.cumsum(dim=0)
    start = index2ptr(tgt[:, 0].contiguous(), num_nodes)[tgt]  # where the edges of each edge's target begin
    kept_sorted = rank - rank.gather(0, start) < k
    return torch.zeros_like(kept_sorted).scatter_(0, order, kept_sorted)


_EDGE_NORMALIZATIONS = {"softmax": softmax, "zero_logit_softmax": zero_logit_softmax, "minmax": minmax_weights}


def _dense_normalize(name: str, score: Tensor, count: Tensor) -> Tensor:
    if name == "minmax":
        return dense_minmax(score, count)
    return dense_softmax(score, count, zero_logit=name == "zero_logit_softmax")


class EdgeAttention(MessagePassing):
    r"""Multi-head attention along the edges of a graph; the base of the attention layers of pygml.

    .. math::
        s^h_{ij} = \tau \langle q^h_i, k^h_j \rangle, \qquad
        a^h_{i\cdot} = \operatorname{norm}\bigl(s^h_{ij} : j \in \mathcal{N}^h(i)\bigr), \qquad
        x'_i = \operatorname{out}\Bigl(\big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}^h(i)}
            \mathrm{Dropout}(a^h_{ij})\, v^h_j\Bigr)

    with :math:`(q, k, v)` = :meth:`project` (x), ``out`` = :meth:`project_out`, :math:`\tau` = ``scale``
    and ``norm`` the named normalisation (module docstring). :math:`\mathcal{N}^h(i)` are the sources of
    node i's in-edges (self loops are not added: give them in the graph); with ``top_k`` = K, only the
    K of them with the highest :math:`s^h_{ij}` in head h (:func:`topk_edges`).

    Rules both kernels follow:

    * **ties**: among equal scores, the smaller source index ranks first, so the kept set is
      deterministic;
    * **repeated edges**: an edge j → i given c times counts c times (c messages, c terms in the
      softmax denominator, each copy carrying the same weight); under ``top_k`` the copies share one
      rank, so K counts distinct neighbours, and they are kept or dropped together;
    * **a node without in-edges** receives the zero message (its output is ``project_out(0)``);
    * dropout acts on each edge's weight in the edge-wise kernel and on each (i, j) pair in the dense
      one (the same without repeated edges).

    Args:
        channels: C, the input and output width.
        heads: H; C must be divisible by H.
        normalization: one of :data:`NORMALIZATIONS`.
        scaled: :math:`\tau = 1/\sqrt{C/H}` (True) or 1 (False).
        dropout: dropout probability on the attention weights.
        top_k: keep the K best in-edges of each target in each head; ``None`` keeps them all.
        kernel: ``"auto"``, ``"dense"`` or ``"sparse"`` (module docstring).

    Shapes:
        - input: node features (N, C); ``edge_index`` (2, E) (a tensor or an
          :class:`~torch_geometric.EdgeIndex`), or a sparse adjacency ``adj_t`` (N, N) (torch.sparse
          COO/CSR/CSC or ``SparseTensor``) with ``adj_t[i, j]`` ≠ 0 for the edge j → i
        - output: (N, C); with ``return_attention_weights=True`` also ``(edge_index, alpha)`` with
          ``alpha`` (E, H) in the order of ``edge_index`` (for a sparse input: the adjacency with ``alpha``
          as its values, as :class:`~torch_geometric.nn.conv.GATConv` returns it). With ``top_k`` set, a
          boolean ``kept`` (E, H) in the same edge order follows: ``(edge_index, alpha, kept)``, or
          ``(adj_t, kept)``; ``alpha`` is 0 where ``kept`` is False (a kept edge may have weight 0 too:
          the weakest kept neighbour under ``"minmax"``, or an underflow).
    """

    def __init__(self, channels: int, heads: int, *, normalization: str, scaled: bool = True,
                 dropout: float = 0.0, top_k: Optional[int] = None, kernel: str = "auto") -> None:
        super().__init__(aggr="add", node_dim=0)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or channels % heads:
            raise ValueError(f"heads={heads!r} must be a positive int that divides channels={channels}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None (keep every edge), got {top_k!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.normalization = normalization
        self.scale = self.head_dim ** -0.5 if scaled else 1.0
        self.dropout = dropout
        self.top_k = top_k
        self.kernel = kernel
        self._alpha: Optional[Tensor] = None
        self._kept: Optional[Tensor] = None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of the nodes, each (N, H, C/H)."""
        raise NotImplementedError

    def project_out(self, out: Tensor) -> Tensor:
        """The layer's output from the concatenated heads (N, C); the identity unless overridden."""
        return out

    def use_dense(self, num_nodes: int, num_edges: int) -> bool:
        """Whether ``forward`` takes the dense kernel for a graph of this size (the module's rule)."""
        if self.kernel != "auto":
            return self.kernel == "dense"
        pairs = num_nodes * num_nodes
        return self.heads * pairs <= DENSE_MAX_ENTRIES and num_edges >= DENSE_MIN_DENSITY * pairs

    def forward(self, x: Tensor, edge_index: Adjacency,
                return_attention_weights: Optional[bool] = None) -> Union[Tensor, tuple[Tensor, Any]]:
        """Attend along the edges; see the class docstring for the shapes."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != self.channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.channels}), got {shape}")
        n = x.size(0)
        graph = read_adjacency(edge_index, n)
        query, key, value = self.project(x)
        need_weights = bool(return_attention_weights)
        if self.use_dense(n, graph.edge_index.size(1)):
            out, alpha, kept = self._dense(query, key, value, graph.edge_index, need_weights)
        else:
            out = self.propagate(graph.message_index(n), query=query, key=key, value=value, size=(n, n))
            alpha, kept, self._alpha, self._kept = self._alpha, self._kept, None, None
        out = self.project_out(out.reshape(n, self.channels))
        if not need_weights:
            return out
        return out, self._weights(graph, alpha, kept)

    def _weights(self, graph: Graph, alpha: Tensor, kept: Optional[Tensor]) -> Any:
        weights = with_weights(graph, alpha)
        if self.top_k is None:
            return weights
        return (*weights, kept) if isinstance(weights, tuple) else (weights, kept)

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, index: Tensor, ptr: Optional[Tensor],
                size_i: Optional[int], edge_index_j: Tensor) -> Tensor:
        score = (query_i * key_j).sum(dim=-1) * self.scale  # (E, H)
        if self.top_k is not None:
            self._kept = topk_edges(score.detach(), index, edge_index_j, size_i, self.top_k)
            score = score.masked_fill(~self._kept, -math.inf)
        alpha = _EDGE_NORMALIZATIONS[self.normalization](score, index, ptr, size_i)
        self._alpha = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        return value_j * alpha.unsqueeze(-1)

    def _dense(self, query: Tensor, key: Tensor, value: Tensor, edges: Tensor,
               need_weights: bool) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """All N² scores at once. Returns the aggregated messages (N, H, D) and, if asked, alpha (E, H)
        and, with ``top_k``, kept (E, H)."""
        n = query.size(0)
        src, dst = edges[0], edges[1]
        pair = dst * n + src
        count = query.new_zeros(n * n).index_add_(0, pair, query.new_ones(()).expand(pair.numel())).view(n, n)
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # (H, N, D)
        score = (q * self.scale) @ k.transpose(1, 2)  # (H, N, N): [h, i, j] for the edge j -> i
        weight = count
        if self.top_k is not None:
            keep = topk_dense(score.detach(), count > 0, self.top_k)
            weight = count * keep
        attn = _dense_normalize(self.normalization, score, weight)
        alpha = kept = None
        if need_weights:
            alpha = (attn[:, dst, src] / count[dst, src]).t()
            kept = keep[:, dst, src].t() if self.top_k is not None else None
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        return (attn @ v).transpose(0, 1), alpha, kept

    def __repr__(self) -> str:
        top_k = "" if self.top_k is None else f", top_k={self.top_k}"
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}{top_k}, "
                f"dropout={self.dropout}, kernel={self.kernel!r})")


__all__ = ["DENSE_MAX_ENTRIES", "DENSE_MIN_DENSITY", "EdgeAttention", "KERNELS", "NORMALIZATIONS",
           "dense_minmax", "dense_softmax", "minmax_weights", "topk_dense", "topk_edges", "zero_logit_softmax"]
