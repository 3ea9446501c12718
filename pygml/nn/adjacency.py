"""Graph inputs of the attention layers: an ``edge_index``, a ``torch.sparse`` adjacency or a ``SparseTensor``.

PyG's convention holds throughout: ``edge_index[0]`` are sources j, ``edge_index[1]`` targets i, and a
sparse adjacency is ``adj_t[i, j]`` (row = target), as ``torch_geometric.utils.to_torch_sparse_tensor``
and ``SparseTensor`` give it for message passing.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.index import index2ptr
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index
from torch_geometric.utils.sparse import set_sparse_value


def read_adjacency(adj: Any, num_nodes: int, name: str = "edge_index") -> tuple[Tensor, Optional[Tensor], Any]:
    """Read a graph given as ``edge_index``, ``torch.sparse`` ``adj_t`` or ``SparseTensor`` ``adj_t``.

    Returns ``(edge_index (2, E), ptr or None, adj)``: ``ptr`` (N + 1,) is given when the edges are
    sorted by target; ``adj`` is the input itself, coalesced if it was a COO tensor, for writing the
    attention weights back in the input's format.
    """
    if isinstance(adj, SparseTensor):
        if adj.sparse_size(0) != num_nodes or adj.sparse_size(1) != num_nodes:
            raise ValueError(f"{name} is a SparseTensor of size {tuple(adj.sizes())}; "
                             f"expected ({num_nodes}, {num_nodes}) for {num_nodes} nodes")
        row, col, _ = adj.coo()
        return torch.stack([col, row]), adj.storage.rowptr(), adj
    if is_torch_sparse_tensor(adj):
        if tuple(adj.shape[:2]) != (num_nodes, num_nodes):
            raise ValueError(f"{name} is a sparse adjacency of shape {tuple(adj.shape)}; "
                             f"expected ({num_nodes}, {num_nodes}) for {num_nodes} nodes")
        if adj.layout == torch.sparse_coo:
            adj = adj.coalesce()
        indices, _ = to_edge_index(adj)
        if adj.layout == torch.sparse_csr:
            ptr = adj.crow_indices().long()
        elif adj.layout == torch.sparse_coo:  # coalesced: sorted by row, the target
            ptr = index2ptr(indices[0], num_nodes)
        else:
            ptr = None
        return indices.flip(0), ptr, adj
    if not isinstance(adj, Tensor):
        raise ValueError(f"{name} must be a (2, E) edge_index, a torch.sparse adjacency or a SparseTensor, "
                        f"got {type(adj).__name__}")
    if adj.dim() != 2 or adj.size(0) != 2:
        raise ValueError(f"{name} must have shape (2, E) (PyG convention: row 0 sources, row 1 targets), "
                         f"got {tuple(adj.shape)}")
    if adj.is_floating_point() or adj.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer node indices, got {adj.dtype}")
    adj = adj.long()
    if adj.numel() and (int(adj.min()) < 0 or int(adj.max()) >= num_nodes):
        raise ValueError(f"{name} has node indices in [{int(adj.min())}, {int(adj.max())}], outside "
                         f"[0, {num_nodes}) for {num_nodes} nodes")
    dst = adj[1]
    ptr = index2ptr(dst, num_nodes) if bool((dst[1:] >= dst[:-1]).all()) else None
    return adj, ptr, adj


def with_weights(adj: Any, edge_index: Tensor, alpha: Tensor) -> Any:
    """The graph in the input's format, carrying ``alpha`` (E, H) on its edges."""
    if isinstance(adj, SparseTensor):
        return adj.set_value(alpha, layout="coo")
    if is_torch_sparse_tensor(adj):
        return set_sparse_value(adj, alpha)
    return edge_index, alpha
