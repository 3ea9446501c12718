"""The user's own images as retrieval datasets: an ImageFolder-style tree (:func:`folder_splits`) or a CSV /
parquet manifest (:func:`csv_splits`), each returning :class:`~pygml.data.DatasetSplits` of
:class:`~pygml.data.images.ImageFiles`.

Layouts of a folder ``root`` (images: :data:`~pygml.data.images.IMAGE_EXTENSIONS`, at any depth below their
class folder; hidden files and folders are ignored)::

    root/<class>/<image>                                  one tree: its classes are split into train and test
    root/train/<class>/<image>, root/test/<class>/...     the splits given; test is searched leave-one-out
    root/train/..., root/query/..., root/gallery/...      In-Shop protocol: the queries search the gallery

A manifest has the columns ``path,label`` and optionally ``split`` (``train``, ``test``, ``query`` or
``gallery``, the same three layouts); relative paths are relative to the manifest's folder.

**One tree is split by class**, as every zero-shot benchmark is: ``round(test_fraction · C)`` of the ``C``
classes (after the checks below) are test classes, the first of a permutation drawn with
``numpy.random.default_rng(seed)`` (:func:`~pygml.data.base.hold_out_classes`), so the split depends only
on the class names, ``test_fraction`` and ``seed``.

**What is checked** when a split is built:

* a listed image that does not exist is an error naming it (and its manifest line); with
  ``skip_corrupt=True`` every image is decoded once, and the missing or corrupt ones are dropped and
  counted in a warning (as the benchmark loaders do). Without it, a corrupt image is an error naming
  its path when it is read;
* a class that is both in train and in test (or query / gallery) is an error naming it: retrieval is
  scored on classes never seen in training;
* a class with a single image in train or test is **dropped, with a warning naming it**: it gives no
  positive pair to train on and no relevant neighbour to find. A query whose class has no gallery
  image is dropped the same way (a gallery keeps every image: distractors are part of a gallery);
* class labels are numbered ``0 .. C-1`` in the natural order of their names (``2`` before ``10``),
  within each split (query and gallery share one numbering).

The image and class counts of each split are logged (logger ``pygml.data.files``, at INFO).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pygml.data.base import DatasetSplits, Transform, hold_out_classes
from pygml.data.images import ImageFiles, is_image_file, skip_unreadable

log = logging.getLogger(__name__)

#: the split names of a folder layout or of a manifest's ``split`` column
SPLITS = ("train", "test", "query", "gallery")
#: the columns a manifest must have
MANIFEST_COLUMNS = ("path", "label")
#: file endings read as parquet manifests (anything else is read as CSV)
PARQUET_SUFFIXES = (".parquet", ".pq")


def _natural(name: str) -> list:
    """Sort key: digit runs compare as numbers (``class2`` before ``class10``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def list_image_tree(root: str | os.PathLike, *, loose: bool = False) -> tuple[list[str], list[str]]:
    """``(paths, classes)`` of the images under an ImageFolder-style tree, in path order: every image file
    below ``root/<class>/`` (at any depth), its class the name of that first-level folder. An image lying
    directly in ``root`` is a ``ValueError`` (with ``loose=True``, listed with the class ``""``); a tree
    without images, a ``FileNotFoundError``."""
    root = Path(root)
    paths: list[str] = []
    classes: list[str] = []
    outside: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = Path(folder).relative_to(root)
        for name in sorted(f for f in files if is_image_file(f)):
            if not relative.parts and not loose:
                outside.append(name)
                continue
            paths.append(os.path.join(folder, name))
            classes.append(relative.parts[0] if relative.parts else "")
    if outside:
        raise ValueError(f"{len(outside)} images lie directly in {root} (e.g. {outside[0]}), outside any class folder; "
                         f"an image folder holds one folder of images per class: {root}/<class>/<image>")
    if not paths:
        raise FileNotFoundError(f"no images found under {root}: expected {root}/<class>/<image> with images ending "
                                "in .jpg, .png, .webp, ...")
    return paths, classes


class _Listing:
    """One split as read: image paths, their class names and, for messages, where each was listed."""

    def __init__(self, paths: Sequence[str], classes: Sequence[str], where: Optional[Sequence[str]] = None):
        self.paths = list(paths)
        self.classes = [str(c) for c in classes]
        self.where = list(where) if where is not None else [""] * len(self.paths)

    def keep(self, mask: np.ndarray) -> "_Listing":
        return _Listing([p for p, k in zip(self.paths, mask) if k], [c for c, k in zip(self.classes, mask) if k],
                        [w for w, k in zip(self.where, mask) if k])

    def __len__(self) -> int:
        return len(self.paths)


def _check_files(listing: _Listing, what: str, skip_corrupt: bool, progress: bool) -> tuple[_Listing, list[str]]:
    """The listing without missing files (an error, or dropped with ``skip_corrupt``) and, with
    ``skip_corrupt``, without the images that cannot be decoded; and the paths dropped."""
    if not skip_corrupt:
        missing = [i for i, p in enumerate(listing.paths) if not os.path.isfile(p)]
        if missing:
            first = missing[0]
            where = f" ({listing.where[first]})" if listing.where[first] else ""
            raise FileNotFoundError(f"{what}: {len(missing)} listed images do not exist, e.g. {listing.paths[first]}"
                                    f"{where}; fix the list, or set data.skip_corrupt=true (skip_corrupt=True) to "
                                    "drop missing and corrupt images")
        return listing, []
    names = sorted(set(listing.classes), key=_natural)
    code = {c: i for i, c in enumerate(names)}
    labels = np.asarray([code[c] for c in listing.classes], dtype=np.int64)
    kept, _, skipped = skip_unreadable(listing.paths, labels, names, what, desc=f"verify {what}", progress=progress,
                                       stacklevel=5)
    dropped = set(skipped)
    return listing.keep(np.asarray([p not in dropped for p in listing.paths], dtype=bool)), skipped


def _drop_classes(listing: _Listing, drop: set[str], what: str, why: str) -> _Listing:
    if not drop:
        return listing
    names = sorted(drop, key=_natural)
    shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    kept = listing.keep(np.asarray([c not in drop for c in listing.classes], dtype=bool))
    warnings.warn(f"{what}: dropped {len(listing) - len(kept)} images of {len(names)} classes {why} ({shown})",
                  stacklevel=5)
    return kept


def _drop_singletons(listing: _Listing, what: str) -> _Listing:
    counts = Counter(listing.classes)
    return _drop_classes(listing, {c for c, n in counts.items() if n < 2}, what,
                         "with a single image (no pair to learn from or to find)")


def _dataset(listing: _Listing, names: Sequence[str], transform: Transform, name: str, split: str,
             skipped: list[str]) -> ImageFiles:
    code = {c: i for i, c in enumerate(names)}
    ds = ImageFiles(listing.paths, [code[c] for c in listing.classes], names, transform, name=name, split=split)
    ds.skipped = skipped
    return ds


def _sorted(classes: Sequence[str]) -> list[str]:
    return sorted(set(classes), key=_natural)


def _build_splits(listings: dict[str, _Listing], source: str, train_transform: Transform = None,
                 test_transform: Transform = None, *, test_fraction: float = 0.5, seed: int = 0,
                 skip_corrupt: bool = False, progress: bool = True, name: str = "files") -> DatasetSplits:
    """:class:`DatasetSplits` of the images listed per split (``listings``: ``{"all": ...}`` for one set to
    split by class, else ``train`` with ``test`` or with ``query`` and ``gallery``), checked as the
    module docstring says; ``source`` names the folder or manifest in messages."""
    given = set(listings)
    if given == {"all"}:
        pass
    elif "train" not in given or not ({"test"} <= given or {"query", "gallery"} <= given) \
            or ("test" in given and given & {"query", "gallery"}) or given - set(SPLITS):
        raise ValueError(f"{source}: found the splits {sorted(given)}; expected train with test, or train with query "
                         "and gallery (or no split at all, to split the classes by data.test_fraction)")
    for split, listing in listings.items():
        if not len(listing):
            raise ValueError(f"{source}: the {split} split has no images")
    checked: dict[str, _Listing] = {}
    skipped: dict[str, list[str]] = {}
    for split, listing in listings.items():
        what = f"{source}" if split == "all" else f"{source} {split}"
        checked[split], skipped[split] = _check_files(listing, what, skip_corrupt, progress)
    if "all" in checked:
        every = _drop_singletons(checked["all"], source)
        names = _sorted(every.classes)
        kept, held = hold_out_classes(len(names), test_fraction, seed, what="test", pool=f"classes in {source}")
        train_classes = {names[i] for i in kept}
        train = every.keep(np.asarray([c in train_classes for c in every.classes], dtype=bool))
        test = every.keep(np.asarray([c not in train_classes for c in every.classes], dtype=bool))
        checked = {"train": train, "test": test}
        class_of = dict(zip(listings["all"].paths, listings["all"].classes))
        skipped = {"train": [p for p in skipped["all"] if class_of[p] in train_classes],
                   "test": [p for p in skipped["all"] if class_of[p] not in train_classes]}
    else:
        tested = set().union(*(checked[s].classes for s in ("test", "query", "gallery") if s in checked))
        both = sorted(set(checked["train"].classes) & tested, key=_natural)
        if both:
            shown = ", ".join(repr(c) for c in both[:5]) + (", ..." if len(both) > 5 else "")
            raise ValueError(f"{source}: {len(both)} classes are both in train and in the test images ({shown}); "
                             "pygml scores retrieval on classes never seen in training: keep each class on one side")
        for split in ("train", "test"):
            if split in checked:
                checked[split] = _drop_singletons(checked[split], f"{source} {split}")
        if "query" in checked:
            checked["query"] = _drop_classes(checked["query"], set(checked["query"].classes) - set(checked["gallery"].classes),
                                             f"{source} query", "that have no gallery image (nothing to find)")
    for split, listing in checked.items():
        if split != "train" and len(listing) < 2:
            raise ValueError(f"{source}: the {split} split has {len(listing)} usable images; retrieval needs at least 2")
    train_names = _sorted(checked["train"].classes)
    if len(train_names) < 2:
        raise ValueError(f"{source}: training needs at least 2 classes of 2 or more images; found {len(train_names)}")
    train = _dataset(checked["train"], train_names, train_transform, name, "train", skipped["train"])
    if "query" in checked:
        shared = _sorted(checked["query"].classes + checked["gallery"].classes)
        splits = DatasetSplits(train=train,
                               query=_dataset(checked["query"], shared, test_transform, name, "query", skipped["query"]),
                               gallery=_dataset(checked["gallery"], shared, test_transform, name, "gallery",
                                                skipped["gallery"]))
    else:
        splits = DatasetSplits(train=train, query=_dataset(checked["test"], _sorted(checked["test"].classes),
                                                           test_transform, name, "test", skipped["test"]))
    parts = [f"{s.split} {len(s):,} images / {s.num_classes:,} classes"
             for s in (splits.train, splits.query, splits.gallery) if s is not None]
    dropped = sum(len(v) for v in skipped.values())
    log.info("%s: %s%s", source, ", ".join(parts), f" ({dropped} unreadable images skipped)" if dropped else "")
    return splits


def folder_splits(root: str | os.PathLike, train_transform: Transform = None, test_transform: Transform = None, *,
                  test_fraction: float = 0.5, seed: int = 0, skip_corrupt: bool = False,
                  progress: bool = True) -> DatasetSplits:
    """The splits of an image folder (layouts and checks in the module docstring).

    Args:
        root: the folder: ``root/<class>/...``, or ``root/train`` with ``root/test`` or with
            ``root/query`` and ``root/gallery``.
        train_transform, test_transform: applied to the RGB PIL images of the train split / the others.
        test_fraction: share of the classes held out as test classes when the folder has no split.
        seed: seed of that split.
        skip_corrupt: decode every image once now and drop (and count) the unreadable ones.
        progress: show the progress bar of ``skip_corrupt``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (data.root); it holds one folder of images per "
                                "class, or train/ and test/ (or query/ and gallery/) folders of them")
    given = [s for s in SPLITS if (root / s).is_dir()]
    listings = {s: _Listing(*list_image_tree(root / s)) for s in given} if given else \
        {"all": _Listing(*list_image_tree(root))}
    return _build_splits(listings, f"image folder {root}", train_transform, test_transform,
                        test_fraction=test_fraction, seed=seed, skip_corrupt=skip_corrupt, progress=progress,
                        name="folder")


def read_manifest(manifest: str | os.PathLike) -> tuple[list[str], list[str], Optional[list[str]], list[str]]:
    """``(paths, labels, splits or None, where)`` of a CSV or parquet manifest with columns ``path``, ``label``
    and optionally ``split``: paths resolved against the manifest's folder, labels and splits as text,
    ``where`` the line (CSV) or row (parquet) of each for messages. Bad files, missing columns and empty
    or unknown values are ``ValueError`` naming the file and the line."""
    import pandas as pd

    path = Path(manifest).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (data.root): a CSV or parquet file with the columns "
                                "path,label[,split]")
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    try:
        if parquet:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except ImportError as err:
        raise ImportError(f"reading the parquet manifest {path} needs pyarrow: pip install 'pygml[parquet]' "
                          f"({err})") from None
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' ParserError and EmptyDataError included
        raise ValueError(f"manifest {path} cannot be read as {'parquet' if parquet else 'CSV'}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"manifest {path} has no column {missing[0]!r}; its columns are {list(frame.columns)}, "
                         "expected path,label and optionally split")
    where = [f"{path} {'row' if parquet else 'line'} {i + (1 if parquet else 2)}" for i in range(len(frame))]

    def column(name: str) -> list[str]:
        values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
                  for v in frame[name].tolist()]
        empty = [i for i, v in enumerate(values) if not v]
        if empty:
            raise ValueError(f"{where[empty[0]]}: empty {name}; every row needs a path and a label")
        return values

    base = path.parent
    paths = [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for p in column("path")]
    labels = column("label")
    splits = None
    if "split" in frame.columns:
        splits = [s.lower() for s in column("split")]
        bad = [i for i, s in enumerate(splits) if s not in SPLITS]
        if bad:
            raise ValueError(f"{where[bad[0]]}: split {splits[bad[0]]!r}; expected one of {', '.join(SPLITS)}")
    if not paths:
        raise ValueError(f"manifest {path} lists no images")
    return paths, labels, splits, where


def csv_splits(manifest: str | os.PathLike, train_transform: Transform = None, test_transform: Transform = None, *,
               test_fraction: float = 0.5, seed: int = 0, skip_corrupt: bool = False,
               progress: bool = True) -> DatasetSplits:
    """The splits of a CSV or parquet manifest ``path,label[,split]`` (:func:`read_manifest`; layouts and
    checks in the module docstring; the other arguments as in :func:`folder_splits`)."""
    paths, labels, splits, where = read_manifest(manifest)
    if splits is None:
        listings = {"all": _Listing(paths, labels, where)}
    else:
        listings = {}
        for split in SPLITS:
            rows = [i for i, s in enumerate(splits) if s == split]
            if rows:
                listings[split] = _Listing([paths[i] for i in rows], [labels[i] for i in rows], [where[i] for i in rows])
    return _build_splits(listings, f"manifest {Path(manifest).expanduser()}", train_transform, test_transform,
                        test_fraction=test_fraction, seed=seed, skip_corrupt=skip_corrupt, progress=progress,
                        name="csv")


__all__ = ["MANIFEST_COLUMNS", "SPLITS", "csv_splits", "folder_splits", "list_image_tree",
           "read_manifest"]
