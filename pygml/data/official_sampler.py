r"""Batch samplers that reproduce the published codes' sampling, beside pygml's :class:`~pygml.data.PKSampler`.

* :class:`IntraBatchSampler`: the Intra-Batch Connections code's ``CombineSampler`` (and, with
  ``redraw_pk=True``, its ``NumberSampler``, which its CUB config uses): each class is padded up to the
  next multiple of K by repetition, the chunks of K of all classes are shuffled together and cut into
  batches of P chunks, so a class may fill several places of a batch, and an epoch holds about
  :math:`\sum_c (\lfloor n_c/K \rfloor + 1) / P` batches: 1.17× as many as :class:`~pygml.data.PKSampler`
  on CUB, 1.9× on Stanford Online Products.
* :class:`ClassPassSampler`: the BGFormer authors' release (``UniqueClassSempler``): one pass over the
  classes per epoch, each class once, with m images.

Both have :class:`~pygml.data.PKSampler`'s interface: batch samplers (pass them to a ``DataLoader`` as
``batch_sampler=``), deterministic given ``(seed, epoch)``, ``set_epoch``, ``set_position`` and
``state_dict`` for an exact resume in the middle of an epoch, sharded across processes by
``rank`` / ``world_size`` (process r takes batches r, r + W, ... of the global list, cut to a multiple
of W), ``num_batches`` per process. Only numpy draws the samples, from generators seeded with
``(seed, epoch, round)``; nothing global is touched.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

Labels = Union[np.ndarray, torch.Tensor, Sequence[int]]


def _labels(labels: Labels) -> np.ndarray:
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


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _rng(seed: int, epoch: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=key))


class _EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Epoch, position, sharding and state of a batch sampler whose epoch is a global list of batches.

    A subclass gives ``batches_per_round(epoch)`` and ``_round(epoch, r)`` (the r-th independent round
    of the epoch's batches, a list of index arrays)."""

    def __init__(self, labels: Labels, seed: int, rank: int, world_size: int, num_batches: Optional[int]) -> None:
        labels = _labels(labels)
        self.seed = _int("seed", seed, 0)
        self.world_size = _int("world_size", world_size, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        self._fixed_batches = None if num_batches is None else _int("num_batches", num_batches, 1)
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.num_samples = labels.size
        self.num_classes = classes.size
        order = np.argsort(inverse, kind="stable")
        #: the dataset indices of each class, in index order
        self._members = np.split(order, np.cumsum(counts)[:-1])
        self._counts = counts
        self.epoch = 0
        self.start = 0

    def batches_per_round(self, epoch: Optional[int] = None) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def _round(self, epoch: int, r: int) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def _check_length(self, batches: int, what: str) -> None:
        if self._fixed_batches is None and batches < self.world_size:
            raise ValueError(f"an epoch has {batches} batches {what}, fewer than world_size={self.world_size}: "
                             "lower the batch size or set num_batches")

    @property
    def num_batches(self) -> int:
        """Batches of the current epoch for this process (fixed when ``num_batches`` was given)."""
        if self._fixed_batches is not None:
            return self._fixed_batches
        return self.batches_per_round() // self.world_size

    def __len__(self) -> int:
        """Batches the next iteration yields: ``num_batches - start``."""
        return self.num_batches - self.start

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields; a new epoch starts at batch 0."""
        epoch = _int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def set_position(self, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of this process's share of the current epoch."""
        batches_done = _int("batches_done", batches_done, 0)
        if batches_done > self.num_batches:
            raise ValueError(f"batches_done={batches_done} exceeds the epoch's {self.num_batches} batches")
        self.start = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"epoch", "seed", "start"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}; expected keys epoch, seed, start")
        self.seed = _int("seed", state["seed"], 0)
        self.epoch = _int("epoch", state["epoch"], 0)
        self.set_position(state["start"])

    def epoch_batches(self, epoch: Optional[int] = None) -> list[np.ndarray]:
        """The global list of batches of an epoch, shared by all processes (num_batches · W of them)."""
        epoch = self.epoch if epoch is None else _int("epoch", epoch, 0)
        per_round = self.batches_per_round(epoch)
        if self._fixed_batches is None:
            total = per_round // self.world_size * self.world_size
        else:
            total = self._fixed_batches * self.world_size
        batches: list[np.ndarray] = []
        for r in range(math.ceil(total / per_round)):
            batches.extend(self._round(epoch, r))
        return batches[:total]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_batches()[self.rank::self.world_size]
        for batch in mine[self.start:]:
            yield batch.tolist()


class IntraBatchSampler(_EpochBatchSampler):
    r"""The batches of the Intra-Batch Connections code (its ``CombineSampler`` and ``NumberSampler``).

    **One round** of an epoch, with P classes × K images per batch:

    1. *Chunks.* Each class's indices are shuffled. A class with :math:`n_c < K` images is first
       padded to K with images of its own drawn with replacement; then every class is padded to the
       next multiple of K *above* its size (:math:`\lfloor n_c'/K \rfloor + 1` chunks, so a class whose
       size is already a multiple of K gets one more chunk) with images drawn without replacement from
       its padded list, and cut into chunks of K. The last chunk of a class thus repeats images of its
       earlier chunks, and may hold one image twice.
    2. *Batches.* The chunks of all classes are shuffled together; when their number is not a multiple
       of P, chunks drawn without replacement are copied to the end; every P consecutive chunks are a
       batch. A class can hold several places of a batch (its K images plus K more of the same class).

    An epoch has :math:`\lceil \sum_c (\lfloor \max(n_c, K)/K \rfloor + 1) / P \rceil` batches, against
    :math:`\approx \sum_c \lfloor n_c/K \rfloor / P` for :class:`~pygml.data.PKSampler`.

    **Redrawing P × K** (``redraw_pk=True``, the code's ``NumberSampler``, used by its CUB config): each
    epoch draws P uniformly among the divisors of the batch size B = P·K in [2, B/2] and sets K = B/P,
    so the batch size stays B (CUB's 54: 2×27, 3×18, 6×9, 9×6, 18×3, 27×2) and the epoch length
    changes with K. ``pk()`` gives the epoch's pair; read ``num_batches`` after :meth:`set_epoch`.

    Args:
        labels: (N,) integer class label of each dataset index.
        classes_per_batch: P (with ``redraw_pk``: only P·K, the batch size, is kept).
        samples_per_class: K.
        redraw_pk: draw P × K anew every epoch among the factorisations of P·K.
        seed: non-negative base seed.
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes sharing each epoch.
        num_batches: batches per epoch for this process; ``None`` = one round split across processes.
            More than one round appends further independent rounds.

    Example::

        sampler = IntraBatchSampler(dataset.labels, 6, 9, redraw_pk=True, seed=0)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4)
            ...
    """

    def __init__(self, labels: Labels, classes_per_batch: int, samples_per_class: int, *, redraw_pk: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_batches: Optional[int] = None) -> None:
        super().__init__(labels, seed, rank, world_size, num_batches)
        self.classes_per_batch = _int("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = _int("samples_per_class", samples_per_class, 1)
        self.redraw_pk = bool(redraw_pk)
        size = self.batch_size
        if self.redraw_pk:
            self.factorisations = [(p, size // p) for p in range(2, size // 2 + 1) if size % p == 0]
            if not self.factorisations:
                raise ValueError(f"redraw_pk needs a batch size with a divisor in [2, B/2], got B = {size}")
        else:
            self.factorisations = [(self.classes_per_batch, self.samples_per_class)]
        for p, k in self.factorisations:
            chunks = self.chunks_per_round(k)
            if chunks % p and p - chunks % p > chunks:
                raise ValueError(f"{self.num_classes} classes give {chunks} chunks of {k}, too few to fill a "
                                 f"batch of {p} chunks; lower classes_per_batch")
            self._check_length(math.ceil(chunks / p), f"of {p}x{k}")

    @property
    def batch_size(self) -> int:
        """P·K, the number of indices in every batch (the same after a redraw)."""
        return self.classes_per_batch * self.samples_per_class

    def pk(self, epoch: Optional[int] = None) -> tuple[int, int]:
        """(P, K) of an epoch (the current one by default)."""
        if not self.redraw_pk:
            return self.classes_per_batch, self.samples_per_class
        epoch = self.epoch if epoch is None else _int("epoch", epoch, 0)
        return self.factorisations[int(_rng(self.seed, epoch, 0).integers(len(self.factorisations)))]

    def chunks_per_round(self, k: Optional[int] = None) -> int:
        r""":math:`\sum_c (\lfloor \max(n_c, K)/K \rfloor + 1)`, the chunks of K of one round (K of the epoch)."""
        k = self.pk()[1] if k is None else k
        return int((np.maximum(self._counts, k) // k + 1).sum())

    def batches_per_round(self, epoch: Optional[int] = None) -> int:
        p, k = self.pk(epoch)
        return math.ceil(self.chunks_per_round(k) / p)

    def _round(self, epoch: int, r: int) -> list[np.ndarray]:
        p, k = self.pk(epoch)
        rng = _rng(self.seed, epoch, 1, r)
        chunks = []
        for members in self._members:
            padded = rng.permutation(members)
            if padded.size < k:
                padded = np.concatenate([padded, rng.choice(padded, size=k - padded.size, replace=True)])
            extra = (padded.size // k + 1) * k - padded.size
            padded = np.concatenate([padded, padded[rng.choice(padded.size, size=extra, replace=False)]])
            chunks.extend(padded.reshape(-1, k))
        order = rng.permutation(len(chunks))
        if order.size % p:
            order = np.concatenate([order, rng.choice(order, size=p - order.size % p, replace=False)])
        stacked = np.stack(chunks)[order].reshape(-1, p * k)
        return list(stacked)

    def __repr__(self) -> str:
        p, k = self.pk()
        return (f"{type(self).__name__}(P={p}, K={k}, redraw_pk={self.redraw_pk}, classes={self.num_classes}, "
                f"batches={self.num_batches}, rank={self.rank}/{self.world_size}, seed={self.seed}, "
                f"epoch={self.epoch})")


class ClassPassSampler(_EpochBatchSampler):
    r"""One pass over the classes per epoch, each class once with m images: the BGFormer authors' release.

    **One round:** the classes are put in a random order and cut into batches of P consecutive classes;
    each class gives m of its images, drawn without replacement, or with replacement when it has fewer
    than m. With C classes an epoch has :math:`\lceil C/P \rceil` batches, the last one holding the
    :math:`C \bmod P` classes left over (``drop_last=True`` drops it: :math:`\lfloor C/P \rfloor`).
    Every batch lists its classes' m indices together, so the rows of a batch reshape to (classes, m).

    The release builds its sampler once and never moves it to the next epoch, so its class order, and
    with it which classes share a batch, is the same in every epoch (only the images change):
    ``reshuffle=False`` reproduces that; the default draws a new order each epoch.

    Args:
        labels: (N,) integer class label of each dataset index.
        classes_per_batch: P.
        samples_per_class: m, images per class (the release: 9).
        seed: non-negative base seed.
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes sharing each epoch.
        num_batches: batches per epoch for this process; ``None`` = one pass split across processes.
            More than one pass appends further passes (each with its own class order).
        drop_last: drop the last batch when it holds fewer than P classes.
        reshuffle: a new class order every epoch; ``False`` = the order of epoch 0 in every epoch.
    """

    def __init__(self, labels: Labels, classes_per_batch: int, samples_per_class: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_batches: Optional[int] = None, drop_last: bool = False,
                 reshuffle: bool = True) -> None:
        super().__init__(labels, seed, rank, world_size, num_batches)
        self.classes_per_batch = _int("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = _int("samples_per_class", samples_per_class, 1)
        self.drop_last = bool(drop_last)
        self.reshuffle = bool(reshuffle)
        if self.classes_per_batch > self.num_classes:
            raise ValueError(f"classes_per_batch={self.classes_per_batch} exceeds the number of classes "
                             f"({self.num_classes})")
        self._check_length(self.batches_per_round(), f"of {self.classes_per_batch} classes")

    @property
    def batch_size(self) -> int:
        """P·m, the number of indices in every full batch."""
        return self.classes_per_batch * self.samples_per_class

    def batches_per_round(self, epoch: Optional[int] = None) -> int:
        if self.drop_last:
            return self.num_classes // self.classes_per_batch
        return math.ceil(self.num_classes / self.classes_per_batch)

    def _round(self, epoch: int, r: int) -> list[np.ndarray]:
        p, m = self.classes_per_batch, self.samples_per_class
        classes = _rng(self.seed, epoch if self.reshuffle else 0, 2, r).permutation(self.num_classes)
        classes = classes[:self.batches_per_round(epoch) * p]
        rng = _rng(self.seed, epoch, 3, r)
        rows = [rng.choice(self._members[c], size=m, replace=bool(self._counts[c] < m)) for c in classes]
        return [np.concatenate(rows[i:i + p]) for i in range(0, len(rows), p)]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(P={self.classes_per_batch}, m={self.samples_per_class}, "
                f"classes={self.num_classes}, batches={self.num_batches}, drop_last={self.drop_last}, "
                f"reshuffle={self.reshuffle}, rank={self.rank}/{self.world_size}, seed={self.seed}, "
                f"epoch={self.epoch})")


__all__ = ["ClassPassSampler", "IntraBatchSampler"]
