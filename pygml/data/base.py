"""The dataset interface every pygml loader follows and the train / query / gallery / validation bundle.

A retrieval dataset yields ``(image, label)`` pairs; its ``labels`` array is available without loading any
image, so samplers and evaluators can read it directly. Labels are contiguous ``0 .. C-1`` *within a split*:
the train split's label 0 and the test split's label 0 are different classes (zero-shot retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


Transform = Optional[Callable[[Image.Image], Any]]


class RetrievalDataset(Dataset):
    """Images with integer class labels, for metric learning and retrieval.

    Subclasses set ``labels`` (``np.ndarray[int64]`` of shape ``(N,)``, values ``0 .. C-1``),
    ``class_names`` (``C`` strings, ``class_names[c]`` names label ``c``), ``name`` and ``split``, and
    implement :meth:`load_image`. ``dataset[i]`` is ``(transform(load_image(i)), labels[i])``.
    """

    name: str = ""
    split: str = ""

    def __init__(self, labels: Sequence[int] | np.ndarray, class_names: Sequence[str], transform: Transform = None):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"labels must lie in 0..{len(class_names) - 1} (one per class name); "
                             f"got values {labels.min()}..{labels.max()}")
        self.labels = labels
        self.class_names = list(class_names)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, index: int) -> Image.Image:
        """The ``index``-th image as an RGB PIL image, before any transform."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes})")


class GrayImages(RetrievalDataset):
    """A retrieval dataset held in memory as grey images: ``images`` is ``uint8 (N, H, W)``; items are
    RGB PIL images (the grey value in all three channels), so every backbone gets three channels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 transform: Transform = None):
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N, H, W) with one label each; got {images.dtype} "
                             f"{images.shape} for {len(labels)} labels")
        super().__init__(labels, class_names, transform)
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


class ClassSubset(RetrievalDataset):
    """The images of some classes of ``base``, relabelled ``0 .. len(classes)-1`` in the given order, with
    their own transform (``base``'s own transform is not applied)."""

    def __init__(self, base: RetrievalDataset, classes: Sequence[int], split: str, transform: Transform = None):
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes of a subset must be distinct, got {classes}")
        bad = [c for c in classes if not 0 <= c < base.num_classes]
        if bad:
            raise ValueError(f"classes {bad} are not labels of {base!r}")
        remap = np.full(base.num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        self.indices = np.flatnonzero(remap[base.labels] >= 0)
        super().__init__(remap[base.labels[self.indices]], [base.class_names[c] for c in classes], transform)
        self.base = base
        self.name = base.name
        self.split = split

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.indices[index]))


@dataclass
class DatasetSplits:
    """What a run needs. ``gallery is None`` means leave-one-out retrieval within ``query`` (the query
    itself excluded); ``val`` is carved from the training classes (never the test classes). ``query is
    None``: a run that leaves the test split out (a tuning trial)."""

    train: RetrievalDataset
    query: Optional[RetrievalDataset]
    gallery: Optional[RetrievalDataset] = None
    val: Optional[RetrievalDataset] = None


def hold_out_classes(n_classes: int, fraction: float, seed: int = 0, *, what: str = "validation",
                     pool: str = "training classes") -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)``: sorted indices of ``n_classes`` classes, ``round(fraction * n_classes)`` of
    them (at least one) held out.

    The held-out classes are the first of a permutation of ``0 .. C-1`` drawn with
    ``numpy.random.default_rng(seed)``, so the split depends only on ``C``, ``fraction`` and ``seed``.
    Both sides must keep at least 2 classes; ``what`` and ``pool`` name the split and the classes in errors.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1) to carve a {what} split, got {fraction}")
    n_held = max(1, int(round(fraction * n_classes)))
    if n_classes - n_held < 2 or n_held < 2:
        raise ValueError(f"a {what} fraction of {fraction} of {n_classes} {pool} leaves {n_classes - n_held} "
                         f"for training and {n_held} for {what}; both need at least 2")
    perm = np.random.default_rng(seed).permutation(n_classes)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def carve_validation(train: RetrievalDataset, fraction: float, seed: int = 0,
                     val_transform: Transform = None) -> tuple[RetrievalDataset, RetrievalDataset]:
    """Hold out ``round(fraction * C)`` of the ``C`` training *classes* (at least one) as a validation split,
    chosen by :func:`hold_out_classes` with ``seed``.

    Returns ``(train_rest, val)``: both relabelled contiguously (in increasing order of the original
    labels); ``train_rest`` keeps ``train.transform``, ``val`` gets ``val_transform``.
    """
    train_classes, val_classes = hold_out_classes(train.num_classes, fraction, seed)
    return (ClassSubset(train, train_classes, train.split, train.transform),
            ClassSubset(train, val_classes, "val", val_transform))


__all__ = ["ClassSubset", "DatasetSplits", "GrayImages", "RetrievalDataset", "Transform", "carve_validation",
           "hold_out_classes"]
