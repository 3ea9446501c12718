r"""The exact ranking: every query against every gallery row, in blocks of bounded memory.

Recall@K only needs the rank of a query's *first* relevant neighbour, so the gallery is never sorted
K = 1000 deep. Similarities are computed in blocks of ``chunk_size`` query rows (about 512 MiB by
default, so memory stays bounded at any set size) and feed, in one pass, a running list of each
query's top :math:`\max(\max_i R_i, \min(\max K, 32))` neighbours (faiss heaps on CPU, ``torch.topk``
on CUDA, where faiss' 2048-neighbour GPU limit never applies): it gives precision@1, R-precision and
MAP@R exactly. For the few queries whose first relevant neighbour lies deeper, its rank is counted:
the number of gallery rows more similar than the best relevant one. In leave-one-out the
similarity matrix is symmetric, so each block on or above the diagonal is computed once and also
feeds, transposed, the lists of its columns (when every query's list fits in the same budget): half
the matrix products, the dominant cost. Queries vs a gallery are taken a block of rows at a time
against the whole gallery. The result is that of an exhaustive exact kNN search, including the
order of ties (PML agrees up to float32 rounding: two rows within ~1e-7 in similarity may be
ordered differently by its L2 distances). All arithmetic is float32.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import faiss
import numpy as np
import torch

from pygml.evaluation.inputs import CHUNK_BYTES

#: the sorted neighbour list is at least this deep (when a K asks for it), so that most first hits
#: are read from it instead of being counted
MIN_DEPTH = 32


def rank_queries(
    q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray, n_classes: int,
    leave_one_out: bool, ks: tuple[int, ...], metric: str, chunk_size: Optional[int], *, torch_kernels: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: 0-based rank of the first relevant neighbour, AP@R, R-precision and R (shape (N,)).

    ``q`` (N, d) and ``r`` (M, d) are contiguous float32 rows on one device, L2-normalised for cosine
    (``r`` is ``q`` in leave-one-out); ``q_codes`` (N,) and ``r_codes`` (M,) are class codes in
    ``[0, n_classes)``. ``torch_kernels`` selects and counts with torch (any device) instead of faiss
    and numpy (CPU).
    """
    ranking = _Ranking(q, r, q_codes, r_codes, n_classes, leave_one_out, ks, metric, chunk_size, torch_kernels)
    # the symmetric schedule keeps every query's list at once (12 bytes an entry: float32 value, int64
    # column) and recomputes the rows whose first relevant neighbour is deeper: worth it below one half
    if (leave_one_out and q.shape[0] * ranking.fetch * 12 <= CHUNK_BYTES
            and ranking.deep_fraction() < 0.5):
        ranking.run_symmetric()
    else:
        ranking.run_by_rows()
    return ranking.rank, ranking.ap, ranking.rp, ranking.relevant


class _Ranking:
    """The ranking of every query, computed block by block.

    Two schedules. :meth:`run_by_rows` takes ``rows`` queries at a time against the whole gallery and
    finishes them from that block. :meth:`run_symmetric` (leave-one-out) computes each block of the
    symmetric similarity matrix once, on and above the diagonal, feeds it to the rows' running top
    lists and, transposed, to the columns' ones: half the products; the rows whose first relevant
    neighbour lies below their list are recomputed to count its rank, so it is chosen only when a
    sample of queries shows that they are fewer than half (:meth:`deep_fraction`).
    """

    def __init__(self, q: torch.Tensor, r: torch.Tensor, q_codes: np.ndarray, r_codes: np.ndarray,
                 n_classes: int, leave_one_out: bool, ks: tuple[int, ...], metric: str,
                 chunk_size: Optional[int], torch_kernels: bool) -> None:
        self.q, self.r, self.q_codes, self.r_codes = q, r, q_codes, r_codes
        self.leave_one_out = leave_one_out
        self.top_list = _TorchTop if torch_kernels else _HeapTop
        self.count = _count_torch if torch_kernels else _count_numpy
        n_q, n_r = q.shape[0], r.shape[0]
        self.class_size = np.bincount(r_codes, minlength=n_classes)
        self.relevant = self.class_size[q_codes] - int(leave_one_out)
        self.max_r = int(self.relevant.max())
        self.depth = max(self.max_r, min(max(ks, default=1), MIN_DEPTH))
        self.fetch = min(self.depth + 1, n_r - int(leave_one_out))
        self.members = np.argsort(r_codes, kind="stable")
        self.first_member = np.concatenate([[0], np.cumsum(self.class_size)[:-1]])
        self.rows = min(chunk_size or max(1, CHUNK_BYTES // (4 * n_r)), n_q)
        self.buffer = torch.empty(self.rows * n_r, dtype=torch.float32, device=q.device)
        self.neg_sq_norms = -(r * r).sum(dim=1) if metric == "euclidean" else None
        self.neg_q_sq_norms = -(q * q).sum(dim=1) if metric == "euclidean" else None
        self.rank = np.full(n_q, -1, dtype=np.int64)
        self.ap = np.zeros(n_q)
        self.rp = np.zeros(n_q)

    def similarities(self, index: torch.Tensor, col0: int = 0) -> torch.Tensor:
        """Similarities of queries ``index`` (at most ``rows``) to gallery rows ``col0:``, shape
        (len(index), M - col0), in the shared buffer; a query's own column is -inf in leave-one-out."""
        width = self.r.shape[0] - col0
        sim = self.buffer[: index.numel() * width].view(index.numel(), width)
        q, r = self.q[index], self.r[col0:]
        if self.neg_sq_norms is None:
            torch.mm(q, r.T, out=sim)
        else:
            # -|q - r|^2 = 2 q.r - |r|^2 - |q|^2, symmetric as the schedule of run_symmetric needs
            torch.addmm(self.neg_sq_norms[col0:], q, r.T, alpha=2.0, out=sim)
            sim.add_(self.neg_q_sq_norms[index][:, None])
        if self.leave_one_out:
            own = index - col0
            inside = own >= 0
            sim[torch.nonzero(inside)[:, 0], own[inside]] = -math.inf
        return sim

    def recomputed(self, index: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(queries, their full similarity rows) for the queries ``index``, ``rows`` at a time."""
        for start in range(0, index.size, self.rows):
            part = index[start: start + self.rows]
            yield part, self.similarities(torch.from_numpy(part).to(self.q.device))

    def deep_fraction(self, sample: int = 256) -> float:
        """Fraction of ``sample`` evenly spaced queries whose first relevant neighbour lies below the
        top list (queries without one left out)."""
        n_q = self.q.shape[0]
        index = np.unique(np.linspace(0, n_q - 1, min(n_q, sample)).astype(np.int64))
        index = index[self.relevant[index] > 0]
        if not index.size:
            return 0.0
        deep = sum(int(np.count_nonzero(self.rank_beyond(sim, self.q_codes[part]) >= self.depth))
                   for part, sim in self.recomputed(index))
        return deep / index.size

    def run_by_rows(self) -> None:
        n_q = self.q.shape[0]
        for start in range(0, n_q, self.rows):
            index = np.arange(start, min(start + self.rows, n_q))
            sim = self.similarities(torch.from_numpy(index).to(self.q.device))
            top = self.top_list(index.size, self.fetch, sim.device)
            top.add(sim, 0, 0)

            def from_block(pos: np.ndarray, sim: torch.Tensor = sim) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
                if pos.size:
                    yield pos, sim if pos.size == sim.shape[0] else sim[torch.from_numpy(pos).to(sim.device)]

            self.finish(index, *top.result(), from_block)

    def run_symmetric(self) -> None:
        n = self.q.shape[0]
        top = self.top_list(n, self.fetch, self.q.device)
        for start in range(0, n, self.rows):
            stop = min(start + self.rows, n)
            sim = self.similarities(torch.arange(start, stop, device=self.q.device), col0=start)
            top.add(sim, start, start)
            for col in range(stop - start, n - start, self.rows):
                top.add(_transposed(sim[:, col: col + self.rows]), start + col, start)
        # every query is finished at once, so positions in the finished rows are query indices
        self.finish(np.arange(n), *top.result(), self.recomputed)

    def finish(self, index: np.ndarray, values: np.ndarray, columns: np.ndarray,
               full_rows: Callable[[np.ndarray], Iterator[tuple[np.ndarray, torch.Tensor]]]) -> None:
        """Rank, AP@R and R-precision of queries ``index`` from their top ``fetch`` (values, columns);
        ``full_rows(positions)`` gives the full similarity rows of ``index[positions]`` when needed."""
        depth = self.depth
        order = np.lexsort((columns, -values))
        values = np.take_along_axis(values, order, axis=1)
        columns = np.take_along_axis(columns, order, axis=1)
        if self.fetch > depth:
            # a tie across the cut: which tied rows make the list is decided by index, on the full row
            for pos, sim in full_rows(np.flatnonzero(values[:, depth - 1] == values[:, depth])):
                full = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :depth]
                columns[pos, :depth] = full.cpu().numpy()
        codes = self.q_codes[index]
        relevant = self.relevant[index]
        hit = self.r_codes[columns[:, :depth]] == codes[:, None]
        found = hit.any(axis=1)
        rank = np.where(found, hit.argmax(axis=1), -1)
        for pos, sim in full_rows(np.flatnonzero(~found & (relevant > 0))):
            rank[pos] = self.rank_beyond(sim, codes[pos])
        self.rank[index] = rank
        self.ap[index], self.rp[index] = precision_at_r(hit[:, : self.max_r], relevant)

    def rank_beyond(self, sim: torch.Tensor, codes: np.ndarray) -> np.ndarray:
        """0-based rank of the first relevant column in each row of ``sim`` (queries of classes ``codes``).

        The first relevant column is the most similar gallery row of the query's class (the smaller
        index among equals); its rank is the number of columns ranked before it.
        """
        size = self.class_size[codes]
        offsets = np.arange(int(size.max()))
        valid = offsets < size[:, None]
        columns = self.members[np.minimum(self.first_member[codes][:, None] + offsets, self.members.size - 1)]
        rows = torch.arange(sim.shape[0], device=sim.device)
        scores = sim[rows[:, None], torch.from_numpy(columns).to(sim.device)].cpu().numpy()
        scores[~valid] = -np.inf
        best = scores.max(axis=1)
        at_best = scores == best[:, None]
        best_column = columns[np.arange(codes.size), at_best.argmax(axis=1)]
        above, at_least = self.count(sim, best)
        rank = above
        # other rows tied with the best relevant one come first when their index is smaller
        mixed = np.flatnonzero(at_least - above > at_best.sum(axis=1))
        if mixed.size:
            sub = sim[torch.from_numpy(mixed).to(sim.device)].cpu().numpy()
            before = (sub == best[mixed, None]) & (np.arange(sub.shape[1]) < best_column[mixed, None])
            rank[mixed] += np.count_nonzero(before, axis=1)
        return rank


def _transposed(block: torch.Tensor, strip: int = 512) -> torch.Tensor:
    """A contiguous copy of ``block.T``; on CPU copied a strip of rows at a time, which is several
    times faster than one strided copy of a slice of a wide block."""
    if block.device.type != "cpu":
        return block.T.contiguous()
    source = block.numpy()
    out = np.empty(source.shape[::-1], dtype=source.dtype)
    for start in range(0, source.shape[0], strip):
        out[:, start: start + strip] = source[start: start + strip].T
    return torch.from_numpy(out)


class _HeapTop:
    """The ``k`` largest entries of each of ``n_rows`` rows seen so far, in faiss heaps (CPU blocks)."""

    def __init__(self, n_rows: int, k: int, device: torch.device) -> None:
        self.values = np.empty((n_rows, k), dtype=np.float32)
        self.columns = np.empty((n_rows, k), dtype=np.int64)
        self.heap = faiss.float_minheap_array_t()
        self.heap.nh, self.heap.k = n_rows, k
        self.heap.val, self.heap.ids = faiss.swig_ptr(self.values), faiss.swig_ptr(self.columns)
        self.heap.heapify()

    def add(self, block: torch.Tensor, row0: int, col0: int) -> None:
        """Offer ``block`` (contiguous), entry (i, j) being row ``row0 + i``, column ``col0 + j``."""
        data = block.numpy()
        self.heap.addn(data.shape[1], faiss.swig_ptr(data), col0, row0, data.shape[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, columns), each (n_rows, k), in no guaranteed order among ties."""
        self.heap.reorder()
        return self.values, self.columns


class _TorchTop:
    """:class:`_HeapTop` with ``torch.topk``, on any device."""

    def __init__(self, n_rows: int, k: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((n_rows, k), -math.inf, device=device)
        self.columns = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)

    def add(self, block: torch.Tensor, row0: int, col0: int) -> None:
        rows = slice(row0, row0 + block.shape[0])
        values, columns = torch.topk(block, min(self.k, block.shape[1]), dim=1)
        values = torch.cat([self.values[rows], values], dim=1)
        columns = torch.cat([self.columns[rows], columns + col0], dim=1)
        best = torch.topk(values, self.k, dim=1)
        self.values[rows] = best.values
        self.columns[rows] = columns.gather(1, best.indices)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values.cpu().numpy(), self.columns.cpu().numpy()


def _count_torch(sim: torch.Tensor, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sim``: entries > threshold and entries >= threshold."""
    t = torch.from_numpy(threshold).to(sim.device)[:, None]
    return (sim > t).sum(dim=1).cpu().numpy(), (sim >= t).sum(dim=1).cpu().numpy()


def _count_numpy(sim: torch.Tensor, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_count_torch` for a CPU block, with numpy: several times faster there."""
    block, t = sim.numpy(), threshold[:, None]
    return np.count_nonzero(block > t, axis=1), np.count_nonzero(block >= t, axis=1)


def precision_at_r(hit: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP@R and R-precision per row from the relevance of the first max(R) neighbours (rows with R = 0: 0)."""
    r = np.maximum(relevant, 1)
    within = np.arange(hit.shape[1]) < relevant[:, None]
    correct = np.cumsum(hit, axis=1)
    precision = correct / np.arange(1, hit.shape[1] + 1)
    ap = np.sum(precision * (hit & within), axis=1) / r
    rp = np.sum(hit & within, axis=1) / r
    return ap, rp
