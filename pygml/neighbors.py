r"""Exact k-nearest-neighbour search on tensors, in blocks of bounded memory.

:func:`knn` is the library's one kNN search over rows (the visual edges of a batch graph, k-reciprocal
neighbourhoods, retrieval figures). It is exhaustive and exact on any device, computes the similarities
of a block of query rows against every reference row at a time (so memory stays bounded at any set
size), and orders its answer by one rule: most similar first, **ties broken by the smaller reference
index**.

Similarities (the same numbers as :func:`pygml.graph.similarity`):

.. math::

    s_{\mathrm{cosine}}(q, r) = \Big\langle \frac{q}{\max(\lVert q\rVert, \epsilon)},
        \frac{r}{\max(\lVert r\rVert, \epsilon)} \Big\rangle, \qquad
    s_{\mathrm{euclidean}}(q, r) = -\lVert q - r\rVert^2

with :math:`\epsilon = 10^{-12}` (:func:`torch.nn.functional.normalize`: an all-zero row has similarity 0
to every row); the squared distance is :func:`torch.cdist` squared. In one block (the default while the
N × M similarities fit in :data:`CHUNK_BYTES`: a batch of up to 8,192 float32 rows searched within
itself) they are the entries of the full similarity matrix bit for bit; in
smaller blocks they can differ in the last bit (BLAS chooses the kernel of a matrix product by its
shape), so rows within float rounding of each other can swap places between block sizes.

The exact retrieval evaluator (:mod:`pygml.evaluation`) keeps its own ranking: it needs the rank of each
query's first relevant row, however deep, not a fixed k.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from pygml.checks import value_checks_enabled

#: the similarities :func:`knn` computes
METRICS = ("cosine", "euclidean")
#: default size of one block of similarities, in bytes (sets the number of query rows per block)
CHUNK_BYTES = 256 * 2**20


@torch.no_grad()
def knn(query: Tensor, k: int, reference: Optional[Tensor] = None, *, metric: str = "cosine",
        exclude_self: bool = False, exclude: Optional[Tensor] = None,
        chunk_size: Optional[int] = None) -> tuple[Tensor, Tensor]:
    r"""The ``k`` reference rows most similar to each query row, exhaustively.

    Row :math:`i` of the answer lists the reference rows :math:`j` by decreasing similarity
    :math:`s(q_i, r_j)`, equal similarities by increasing :math:`j`, and keeps the first ``k``. With
    ``exclude_self`` (``reference=None`` only) row :math:`i` itself is left out of its own list *by its
    index*, never by assuming it ranks first: duplicates of a row and numerical ties are safe.

    Args:
        query: rows (N, d), any floating dtype, any device.
        k: neighbours per row, ``1 ≤ k ≤ M`` (``M - 1`` with ``exclude_self``).
        reference: rows (M, d) searched, same dtype and device as ``query``; ``None`` = ``query`` itself.
        metric: ``"cosine"`` (inner product of L2-normalised rows) or ``"euclidean"`` (negative
            squared distance); see the module docstring.
        exclude_self: leave each row's own index out of its list; needs ``reference=None``.
        exclude: (N,) int64, the reference row to leave out of each query row's list, by index (e.g.
            the queries' own rows when they are some rows of the reference); needs a ``reference``.
        chunk_size: query rows per block of similarities; ``None`` = about :data:`CHUNK_BYTES` per block.

    Returns:
        ``(similarities, indices)``, each (N, k): ``similarities`` in the dtype of ``query``,
        ``indices`` int64 rows of the reference, most similar first. No gradient flows through them.

    NaN and inf are rejected with a ValueError when the value checks are on (:mod:`pygml.checks`);
    otherwise rows holding them get an unspecified order.
    """
    ref = query if reference is None else reference
    _check_rows(query, "query")
    if reference is not None:
        _check_rows(reference, "reference")
        if reference.dtype != query.dtype or reference.device != query.device:
            raise ValueError(f"query is {query.dtype} on {query.device} but reference is {reference.dtype} on "
                             f"{reference.device}: pass both with the same dtype and device")
        if reference.size(1) != query.size(1):
            raise ValueError(f"query has {query.size(1)} columns but reference has {reference.size(1)}")
        if exclude_self:
            raise ValueError("exclude_self=True leaves out each query row's own index, so it needs reference=None "
                             "(the query searched within itself); to leave out given rows, pass exclude")
    if exclude is not None:
        if reference is None:
            raise ValueError("exclude names rows of a reference: pass reference (or exclude_self=True without one)")
        if exclude.shape != (query.size(0),) or exclude.dtype != torch.long:
            raise ValueError(f"exclude must be int64 of shape ({query.size(0)},), one reference row per query row, "
                             f"got {exclude.dtype} {tuple(exclude.shape)}")
        exclude = exclude.to(query.device)
    elif exclude_self:
        exclude = torch.arange(query.size(0), device=query.device)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n, m = query.size(0), ref.size(0)
    candidates = m - int(exclude is not None)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= candidates:
        searched = f"{m} reference rows" if reference is not None else f"{m} rows searched within themselves"
        searched += ", each row's own index excluded" if exclude is not None else ""
        raise ValueError(f"k must be an int in [1, {candidates}] for {searched}; got {k!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of query rows or None, got {chunk_size!r}")

    q, r = query.detach(), ref.detach()
    if metric == "cosine":
        q = F.normalize(q, dim=1)
        r = q if reference is None else F.normalize(r, dim=1)
    rows = chunk_size or max(1, CHUNK_BYTES // (m * q.element_size()))
    values = torch.empty(n, k, dtype=q.dtype, device=q.device)
    indices = torch.empty(n, k, dtype=torch.long, device=q.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        if metric == "cosine":
            sim = q[start:stop] @ r.t()
        else:
            sim = torch.cdist(q[start:stop], r).pow_(2).neg_()
        excluded = None if exclude is None else exclude[start:stop]
        values[start:stop], indices[start:stop] = top_k(sim, k, exclude=excluded)
    return values, indices


def top_k(similarities: Tensor, k: int, *, exclude: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of a similarity matrix (N, M) and their columns, by :func:`knn`'s
    rule: decreasing value, equal values by increasing column (also across the k-th place). ``exclude`` (N,)
    names a column to leave out of each row's list, by index. For a similarity matrix already at hand
    (e.g. a batch's, which also gives the edges their weights)."""
    fetch = k + int(exclude is not None)  # an excluded column is dropped from a list one longer
    values, columns = _top_k(similarities, fetch)
    if exclude is not None:
        values, columns = _without(values, columns, exclude)
    return values, columns


def _check_rows(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dimensions), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if value_checks_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
        row = int(torch.nonzero(~torch.isfinite(x).all(dim=1))[0, 0])
        raise ValueError(f"{name} has NaN or inf values (first in row {row})")


def _top_k(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``sim`` (n, M) and their columns, by decreasing value,
    equal values by increasing column, also across the k-th place (which ``torch.topk`` leaves open)."""
    values, columns = sim.topk(min(k + 1, sim.size(1)), dim=1)  # one more shows a tie across the cut
    # rows whose list holds equal values, in an order torch.topk does not specify
    reorder = (values[:, 1:k] == values[:, : k - 1]).any(dim=1)
    if values.size(1) > k:
        crossed = torch.nonzero(values[:, k - 1] == values[:, k])[:, 0]
        values, columns = values[:, :k], columns[:, :k]
        if crossed.numel():
            # the tied entries that make the list are those of the smallest columns, over the whole row
            block, kth = sim[crossed], values[crossed, k - 1:]
            above = block > kth
            tied = block == kth
            keep = above | (tied & (tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
            kept = torch.nonzero(keep)[:, 1].view(-1, k)
            columns[crossed] = kept
            values[crossed] = block.gather(1, kept)
            reorder[crossed] = True
    rows = torch.nonzero(reorder)[:, 0]
    if rows.numel():
        row_values, row_columns = values[rows], columns[rows]
        order = row_columns.argsort(dim=1)
        row_values, row_columns = row_values.gather(1, order), row_columns.gather(1, order)
        order = row_values.argsort(dim=1, descending=True, stable=True)
        values[rows], columns[rows] = row_values.gather(1, order), row_columns.gather(1, order)
    return values, columns


def _without(values: Tensor, columns: Tensor, excluded: Tensor) -> tuple[Tensor, Tensor]:
    """Lists (n, k + 1) without each row's ``excluded`` column (n,), or without their last entry where it
    is not in the list: (n, k)."""
    n, width = columns.shape
    own = columns == excluded[:, None]
    at = torch.where(own.any(dim=1), own.byte().argmax(dim=1), width - 1)
    take = torch.arange(width - 1, device=columns.device).expand(n, -1)
    take = take + (take >= at[:, None])
    return values.gather(1, take), columns.gather(1, take)


__all__ = ["CHUNK_BYTES", "METRICS", "knn", "top_k"]
