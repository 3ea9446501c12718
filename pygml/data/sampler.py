"""Class-balanced P×K batch sampling: every batch holds P distinct classes with K images each
(the P×K batches of Hermans et al., 2017, "In Defense of the Triplet Loss").

:class:`PKSampler` is a *batch* sampler: it yields lists of dataset indices and is passed to a
:class:`torch.utils.data.DataLoader` as ``batch_sampler=``. It defines an epoch exactly, is
deterministic given ``(seed, epoch)``, shards an epoch across processes (``rank`` / ``world_size``)
and can resume in the middle of an epoch.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

SMALL_CLASSES = ("replace", "drop")


def as_labels(labels: Union[np.ndarray, torch.Tensor, Sequence[int]]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (one class label per dataset index), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels is empty: the dataset has no samples")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must hold integer class labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def max_batches(chunks_per_class: np.ndarray, classes_per_batch: int) -> int:
    r"""Largest number of batches B of P distinct classes that chunk counts :math:`m_c` can fill.

    A class can appear at most once per batch, so at most :math:`\min(m_c, B)` of its chunks are used,
    and B batches are possible exactly when :math:`\sum_c \min(m_c, B) \ge P B`. The left side minus
    the right side is concave in B and 0 at B = 0, so the feasible B form an interval found by bisection.
    """
    m = np.asarray(chunks_per_class, dtype=np.int64)
    lo, hi = 0, int(m.sum()) // classes_per_batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(m, mid).sum() >= classes_per_batch * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


class EpochSampler(torch.utils.data.Sampler[list[int]]):
    """The epoch, position and state of a resumable batch sampler (the base of pygml's samplers).

    A subclass sets ``seed``, ``epoch = 0`` and ``start = 0`` and gives ``num_batches`` (the batches of the
    current epoch for this process) and ``__iter__`` (those batches from ``start`` on).
    """

    seed: int
    epoch: int
    start: int
    num_batches: int  # an attribute or a property of the subclass

    def __len__(self) -> int:
        """Batches the next iteration yields: ``num_batches - start``."""
        return self.num_batches - self.start

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields; a new epoch starts at batch 0."""
        epoch = check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def set_position(self, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of this process's share of the current epoch."""
        batches_done = check_int("batches_done", batches_done, 0)
        if batches_done > self.num_batches:
            raise ValueError(f"batches_done={batches_done} exceeds the epoch's {self.num_batches} batches")
        self.start = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"epoch", "seed", "start"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}; expected keys epoch, seed, start")
        self.seed = check_int("seed", state["seed"], 0)
        self.epoch = check_int("epoch", state["epoch"], 0)
        self.set_position(state["start"])


class PKSampler(EpochSampler):
    r"""Batch sampler of P classes × K samples per class, deterministic given ``(seed, epoch)``.

    **One epoch** (the global list of batches, the same in every process) is built from a NumPy
    generator seeded with ``(seed, epoch, round)``:

    1. *Chunks.* Each class's indices are shuffled and cut into :math:`m_c = \lfloor n_c / K \rfloor`
       chunks of K; the :math:`n_c \bmod K` left over are not used this epoch (others next epoch).
       A class with :math:`1 \le n_c < K` images gives one chunk: all of its images plus
       :math:`K - n_c` drawn again *with replacement* from them, so every class takes part
       (``small_classes="replace"``, the default); with ``small_classes="drop"`` such classes are
       never sampled.
    2. *Length.* The number of batches is the largest B with :math:`\sum_c \min(m_c, B) \ge P B`
       (:func:`max_batches`): it depends only on the class sizes, so it is the same every epoch.
       A class appears at most once per batch, hence at most B times per epoch; its other chunks wait.
    3. *Batches,* one at a time: the classes that must be in every remaining batch for the epoch to be
       filled are taken first, and the other places are drawn without replacement with probability
       proportional to each class's remaining chunks. Each chosen class gives its next chunk. A batch
       lists its P classes in random order, the K indices of each class together.

    **Processes.** With ``world_size`` W, the global list is cut to a multiple of W and process
    ``rank`` r takes batches r, r + W, r + 2W, ...: the shares are disjoint, equally long, and their
    union is the global list. ``num_batches`` (per process) fixes the epoch length instead: the
    global list then has ``num_batches · W`` batches, and when that exceeds one round, further
    independent rounds (``round`` = 1, 2, ...) are appended.

    **Resuming.** ``state_dict()`` gives ``{"epoch", "seed", "start"}``; ``start`` is the number of
    this process's batches of the epoch already consumed, which the training loop sets with
    :meth:`set_position` (the sampler cannot count it: a ``DataLoader`` reads batches ahead).
    Iterating yields the batches from ``start`` on. :meth:`set_epoch` with a *new* epoch sets ``start``
    back to 0; calling it with the current epoch keeps a position restored by :meth:`load_state_dict`.

    Args:
        labels: (N,) integer class label of each dataset index (any integers).
        classes_per_batch: P, distinct classes per batch; at most the number of sampled classes.
        samples_per_class: K, indices per class per batch; the batch size is P·K.
        seed: non-negative base seed.
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes sharing each epoch.
        num_batches: batches per epoch for this process; ``None`` = one round split across processes.
        small_classes: ``"replace"`` or ``"drop"`` for classes with fewer than K images (see above).

    Example::

        sampler = PKSampler(dataset.labels, 16, 4, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for images, labels in loader:   # images: (P*K, 3, H, W)
                ...
    """

    def __init__(
        self,
        labels: Union[np.ndarray, torch.Tensor, Sequence[int]],
        classes_per_batch: int,
        samples_per_class: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: Optional[int] = None,
        small_classes: str = "replace",
    ) -> None:
        labels = as_labels(labels)
        self.classes_per_batch = check_int("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = check_int("samples_per_class", samples_per_class, 1)
        self.seed = check_int("seed", seed, 0)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if small_classes not in SMALL_CLASSES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASSES}, got {small_classes!r}")
        self.small_classes = small_classes

        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.num_samples = labels.size
        self.num_classes = classes.size
        # indices sorted by class; class c occupies _by_class[_starts[c] : _starts[c] + counts[c]]
        self._by_class = np.argsort(inverse, kind="stable")
        self._sorted_classes = inverse[self._by_class]
        self._counts = counts
        self._starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        K, P = self.samples_per_class, self.classes_per_batch
        chunks = counts // K
        if small_classes == "replace":
            chunks = np.maximum(chunks, 1)
        self._chunks = chunks
        eligible = int((chunks > 0).sum())
        if P > eligible:
            what = f"classes with at least {K} samples" if small_classes == "drop" else "classes"
            raise ValueError(
                f"classes_per_batch={P} exceeds the number of {what} ({eligible}); "
                "lower classes_per_batch or samples_per_class"
            )
        self.batches_per_round = max_batches(chunks, P)
        if num_batches is None:
            self.num_batches = self.batches_per_round // self.world_size
            if self.num_batches == 0:
                raise ValueError(
                    f"an epoch has {self.batches_per_round} batches of {P}x{K}, fewer than "
                    f"world_size={self.world_size}: lower classes_per_batch or set num_batches"
                )
        else:
            self.num_batches = check_int("num_batches", num_batches, 1)
        self.epoch = 0
        self.start = 0

    @property
    def batch_size(self) -> int:
        """P·K, the number of indices in every batch."""
        return self.classes_per_batch * self.samples_per_class


    def _round(self, rng: np.random.Generator) -> np.ndarray:
        """One round of the epoch: (batches_per_round, P·K) indices, steps 1-3 of the class docstring."""
        K, P, B = self.samples_per_class, self.classes_per_batch, self.batches_per_round
        counts, starts, chunks = self._counts, self._starts, self._chunks

        # step 1: shuffle within classes, then lay out every chunk as a row of K indices
        shuffled = self._by_class[np.lexsort((rng.random(self.num_samples), self._sorted_classes))]
        first_chunk = np.concatenate(([0], np.cumsum(chunks)[:-1]))
        chunk_class = np.repeat(np.arange(self.num_classes), chunks)
        chunk_pos = np.arange(chunk_class.size) - first_chunk[chunk_class]
        offset = chunk_pos[:, None] * K + np.arange(K)[None, :]
        n = counts[chunk_class][:, None]
        redraw = offset >= n  # only in the single chunk of a class smaller than K
        offset = np.where(redraw, np.floor(rng.random(offset.shape) * n).astype(np.int64), offset)
        rows = shuffled[starts[chunk_class][:, None] + offset]

        # steps 2-3: choose P classes per batch, each class at most once per batch
        remaining = np.minimum(chunks, B)
        used = np.zeros(self.num_classes, dtype=np.int64)
        picked = np.empty((B, P), dtype=np.int64)
        for t in range(B):
            left = B - t
            forced = np.flatnonzero(remaining >= left)
            if forced.size >= P:
                choice = rng.choice(forced, size=P, replace=False)
            else:
                with np.errstate(divide="ignore"):
                    key = np.log(remaining) + rng.gumbel(size=self.num_classes)
                key[forced] = np.inf
                choice = np.argpartition(-key, P - 1)[:P]
            picked[t] = first_chunk[choice] + used[choice]
            used[choice] += 1
            remaining[choice] -= 1
            np.minimum(remaining, left - 1, out=remaining)
        picked = rng.permuted(picked, axis=1)
        return rows[picked].reshape(B, P * K)

    def epoch_batches(self, epoch: Optional[int] = None) -> np.ndarray:
        """The global list of batches of an epoch, shared by all processes: (num_batches · W, P·K)."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, 0)
        total = self.num_batches * self.world_size
        rounds = [
            self._round(np.random.default_rng([self.seed, epoch, r]))
            for r in range(math.ceil(total / self.batches_per_round))
        ]
        return np.concatenate(rounds)[:total]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_batches()[self.rank :: self.world_size]
        for batch in mine[self.start :]:
            yield batch.tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.classes_per_batch}, K={self.samples_per_class}, "
            f"classes={self.num_classes}, batches={self.num_batches}, rank={self.rank}/{self.world_size}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )
