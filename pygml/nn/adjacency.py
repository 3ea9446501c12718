"""Graph inputs of the attention layers: an ``edge_index``, a ``torch.sparse`` adjacency or a ``SparseTensor``.

PyG's convention holds throughout: ``edge_index[0]`` are sources j, ``edge_index[1]`` targets i, and a
sparse adjacency is ``adj_t[i, j]`` (row = target), as ``torch_geometric.utils.to_torch_sparse_tensor``
and ``SparseTensor`` give it for message passing.

Reading a graph reads no tensor values (nothing is copied from the device): the edges are known to be
sorted by target only when the input says so (a CSR or coalesced COO tensor, a ``SparseTensor``, an
:class:`~torch_geometric.EdgeIndex` sorted by column); the range of the node indices is checked only when
:func:`pygml.checks.value_checks_enabled`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index
from torch_geometric.utils.sparse import set_sparse_value

from pygml.checks import value_checks_enabled


class Graph(NamedTuple):
    """A graph as the attention layers read it."""

    #: (2, E) plain integer tensor: sources in row 0, targets in row 1
    edge_index: Tensor
    #: whether the input says its edges are sorted by target
    sorted_by_target: bool
    #: the input itself (a COO tensor coalesced), to write attention weights back in its format
    source: Any

    def message_index(self, num_nodes: int) -> Tensor:
        """The edges for :meth:`~torch_geometric.nn.conv.MessagePassing.propagate`: an
        :class:`~torch_geometric.EdgeIndex` sorted by target (PyG then hands ``ptr`` to ``message`` and
        aggregates by segments) when the order is known, else the plain ``edge_index``."""
        if not self.sorted_by_target:
            return self.edge_index
        return EdgeIndex(self.edge_index, sparse_size=(num_nodes, num_nodes), sort_order="col")


def _check_size(shape: tuple, num_nodes: int, what: str, name: str) -> None:
    if tuple(shape) != (num_nodes, num_nodes):
        raise ValueError(f"{name} is {what} of size {tuple(shape)}; expected ({num_nodes}, {num_nodes}) "
                         f"for {num_nodes} nodes")


def _read_sparse(adj: Any, num_nodes: int, name: str) -> Graph:
    if isinstance(adj, SparseTensor):
        _check_size(adj.sizes()[:2], num_nodes, "a SparseTensor", name)
        row, col, _ = adj.coo()
        return Graph(torch.stack([col, row]), True, adj)
    _check_size(adj.shape[:2], num_nodes, "a sparse adjacency", name)
    if adj.layout == torch.sparse_coo:
        adj = adj.coalesce()  # a no-op on coalesced tensors (to_torch_sparse_tensor gives them)
    indices, _ = to_edge_index(adj)
    # CSR and coalesced COO are sorted by row, the target; CSC by column, the source
    return Graph(indices.flip(0), adj.layout != torch.sparse_csc, adj)


def read_adjacency(adj: Any, num_nodes: int, name: str = "edge_index") -> Graph:
    """Read a graph given as ``edge_index`` (a tensor or an :class:`~torch_geometric.EdgeIndex`), a
    ``torch.sparse`` ``adj_t`` (COO, CSR or CSC) or a ``SparseTensor`` ``adj_t``.

    Raises ``ValueError`` naming ``name`` on a wrong type, shape or dtype, and, when value checks are on
    (:mod:`pygml.checks`), on node indices outside ``[0, num_nodes)``.
    """
    if isinstance(adj, SparseTensor) or is_torch_sparse_tensor(adj):
        return _read_sparse(adj, num_nodes, name)
    if not isinstance(adj, Tensor):
        raise ValueError(f"{name} must be a (2, E) edge_index, a torch.sparse adjacency or a SparseTensor, "
                         f"got {type(adj).__name__}")
    if adj.dim() != 2 or adj.size(0) != 2:
        raise ValueError(f"{name} must have shape (2, E) (PyG convention: row 0 sources, row 1 targets), "
                         f"got {tuple(adj.shape)}")
    if adj.is_floating_point() or adj.is_complex() or adj.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer node indices, got {adj.dtype}")
    edges = adj
    if isinstance(adj, EdgeIndex):
        sizes = [s for s in adj.sparse_size() if s is not None]
        if any(s != num_nodes for s in sizes):
            raise ValueError(f"{name} is an EdgeIndex of sparse size {adj.sparse_size()}; expected "
                             f"({num_nodes}, {num_nodes}) for {num_nodes} nodes")
        edges = adj.as_tensor()
    edges = edges.long()
    if value_checks_enabled() and edges.numel():
        lo, hi = int(edges.min()), int(edges.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(f"{name} has node indices in [{lo}, {hi}], outside [0, {num_nodes}) for "
                             f"{num_nodes} nodes")
    return Graph(edges, isinstance(adj, EdgeIndex) and adj.is_sorted_by_col, adj)


def with_weights(graph: Graph, values: Tensor) -> Any:
    """The graph in its input's format carrying ``values`` (E, ...) on its edges: ``(edge_index, values)``
    for an ``edge_index``, the adjacency with ``values`` as its values for a sparse input."""
    if isinstance(graph.source, SparseTensor):
        return graph.source.set_value(values, layout="coo")
    if is_torch_sparse_tensor(graph.source):
        return set_sparse_value(graph.source, values)
    return graph.source, values
