"""The four deep-metric-learning benchmarks, read from a data root in their official layouts.

CUB-200-2011, Cars196, Stanford Online Products and In-Shop, with the zero-shot splits every paper of
the field uses (methods.md, "Shared evaluation protocol"). Nothing is downloaded: ``datasets/README.md``
says where each dataset comes from and how it must be laid out. Each split's image count is checked
against the published one when it is built (``check_counts``). Labels are contiguous ``0 .. C-1`` over
the classes a split's list file names; In-Shop's query and gallery share one label space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np
from PIL import Image

from pygml.data.base import DatasetSplits, RetrievalDataset, Transform
from pygml.data.images import CorruptImageError, decode_image, find_unreadable, skip_unreadable

README = "datasets/README.md"


def _read_rows(path: Path, columns: int, skip: int = 0) -> list[list[str]]:
    """The whitespace-separated rows of a list file after ``skip`` header lines; each must have
    ``columns`` fields (blank lines are ignored)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != columns:
                raise ValueError(f"{path}, line {number}: expected {columns} fields, got {len(fields)}: {line.strip()!r}")
            rows.append(fields)
    return rows


def _contiguous(keys: Sequence) -> tuple[np.ndarray, list]:
    """Labels ``0 .. C-1`` for class keys, numbered in sorted key order, and the sorted keys."""
    classes, labels = np.unique(np.asarray(keys), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), classes.tolist()


class BenchmarkDataset(RetrievalDataset):
    """Images listed by a benchmark's annotation files, decoded from disk on access.

    Subclasses name the dataset (``name``, ``title``, ``source``), the published counts
    (``expected``: split → (images, classes)) and read their list files in :meth:`_read`.

    Args:
        root: the data root (its accepted forms are in each subclass and in ``datasets/README.md``).
        split: one of the subclass's ``splits``.
        transform: applied to the RGB PIL image.
        check_counts: compare the split's image and class counts with the published ones; turn off
            for a subset of the dataset.
        skip_corrupt: decode every image once now (a progress bar), drop the missing or corrupt ones
            and report them in a warning (kept in ``skipped``); labels are not renumbered. Otherwise a
            bad image is an error naming its path when it is read.
        progress: show the progress bar of ``skip_corrupt``.

    Attributes: ``paths`` (N file paths), ``labels`` (``int64 (N,)``), ``class_names``, ``root``
    (the resolved dataset directory), ``list_file``, ``skipped`` (paths dropped by ``skip_corrupt``).
    """

    title: ClassVar[str] = ""
    source: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    expected: ClassVar[dict[str, tuple[int, int]]] = {}

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform = None, *,
                 check_counts: bool = True, skip_corrupt: bool = False, progress: bool = True):
        if split not in self.splits:
            raise ValueError(f"{self.title} split must be one of {', '.join(self.splits)}; got {split!r}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"{self.title} not found: the data root {root} does not exist. pygml does not download "
                f"datasets: obtain {self.title} from {self.source}, unpack it as {README} shows and "
                f"point data.root at it (data.root=/path/to/{self.name})")
        paths, labels, class_names, self.list_file = self._read(root, split)
        if check_counts:
            want_images, want_classes = self.expected[split]
            found_classes = len(np.unique(labels))
            if (len(paths), found_classes) != (want_images, want_classes):
                raise ValueError(
                    f"{self.title} {split} split: expected {want_images:,} images of {want_classes:,} classes, "
                    f"found {len(paths):,} images of {found_classes:,} classes in {self.list_file}. "
                    "Re-extract the dataset, or pass check_counts=False (data.check_counts=false) to use a subset")
        self.skipped: list[str] = []
        if skip_corrupt:
            paths, labels, self.skipped = skip_unreadable(paths, labels, class_names, f"{self.title} {split}",
                                                          desc=f"verify {self.name} {split}", progress=progress)
        super().__init__(labels, class_names, transform)
        self.paths = paths
        self.split = split

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray, list[str], Path]:
        """``(paths, labels, class_names, list_file)`` of ``split`` from the annotation files under ``root``."""
        raise NotImplementedError

    def _find(self, root: Path, candidates: Sequence[str]) -> Path:
        """The first of ``root / c`` that is a file, else a FileNotFoundError naming every place looked at."""
        for c in candidates:
            if (root / c).is_file():
                return root / c
        looked = ", ".join(str(root / c) for c in candidates)
        raise FileNotFoundError(f"{self.title} list file not found; looked for {looked}. Unpack the dataset "
                                f"as {README} shows and point data.root at it")

    def load_image(self, index: int) -> Image.Image:
        return decode_image(self.paths[index])


class CUB200(BenchmarkDataset):
    """CUB-200-2011 (Wah et al., 2011): 200 bird species; classes 1–100 train (5,864 images), 101–200 test
    (5,924 images).

    ``root`` is the directory that contains ``CUB_200_2011/`` or that directory itself; read are
    ``images.txt`` (``<id> <class dir>/<file>.jpg``), ``image_class_labels.txt`` (``<id> <class 1..200>``)
    and ``images/``. Class names are the class directories (``001.Black_footed_Albatross``).
    """

    name = "cub"
    title = "CUB-200-2011"
    source = "the Caltech Vision Lab's CUB-200-2011 page (CUB_200_2011.tgz)"
    splits = ("train", "test")
    expected = {"train": (5864, 100), "test": (5924, 100)}

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray, list[str], Path]:
        images_txt = self._find(root, ["images.txt", "CUB_200_2011/images.txt"])
        base = images_txt.parent
        labels_txt = self._find(base, ["image_class_labels.txt"])
        image_of = dict(_read_rows(images_txt, 2))
        class_of = {i: int(c) for i, c in _read_rows(labels_txt, 2)}
        if image_of.keys() != class_of.keys():
            differ = sorted(image_of.keys() ^ class_of.keys())[:5]
            raise ValueError(f"{images_txt} and {labels_txt} list different image ids (e.g. {differ})")
        low, high = (1, 100) if split == "train" else (101, 200)
        ids = [i for i in image_of if low <= class_of[i] <= high]
        labels, classes = _contiguous([class_of[i] for i in ids])
        name_of = {class_of[i]: image_of[i].split("/")[0] for i in ids}
        paths = [os.path.join(base, "images", image_of[i]) for i in ids]
        return paths, labels, [name_of[c] for c in classes], images_txt


def read_cars_annotations(root: str | os.PathLike) -> tuple[list[str], list[int], Optional[list[str]], Path]:
    """``(relative paths, classes 1..196, class names or None, file read)`` of Cars196 under ``root``.

    Reads ``cars_annos.mat`` (struct array ``annotations`` with fields ``relative_im_path``, ``bbox_x1``,
    ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class``, ``test``; cell array ``class_names``) with SciPy
    when it is installed; otherwise the plain-text ``cars_annos.txt`` (``<relative_im_path> <class>`` per
    line), which :func:`write_cars_text_list` makes from the ``.mat``.
    """
    root = Path(root)
    mat, txt = root / "cars_annos.mat", root / "cars_annos.txt"
    try:
        from scipy.io import loadmat
    except ImportError:
        loadmat = None
    if mat.is_file() and (loadmat is not None or not txt.is_file()):
        if loadmat is None:
            raise ImportError(f"reading {mat} needs SciPy: pip install scipy, or put the plain-text list "
                              f"{txt} beside it ({README} says how to make it)")
        content = loadmat(str(mat))
        if "annotations" not in content:
            raise ValueError(f"{mat} has no 'annotations' variable (found {sorted(k for k in content if k[0] != '_')})")
        ann = content["annotations"].ravel()
        fields = set(ann.dtype.names or ())
        if not {"relative_im_path", "class"} <= fields:
            raise ValueError(f"{mat}: 'annotations' needs fields relative_im_path and class, has {sorted(fields)}")
        rel = [str(np.asarray(a["relative_im_path"]).ravel()[0]) for a in ann]
        cls = [int(np.asarray(a["class"]).ravel()[0]) for a in ann]
        names = None
        if "class_names" in content:
            names = [str(np.asarray(n).ravel()[0]) for n in content["class_names"].ravel()]
        return rel, cls, names, mat
    if txt.is_file():
        rows = _read_rows(txt, 2)
        return [r for r, _ in rows], [int(c) for _, c in rows], None, txt
    raise FileNotFoundError(f"Cars196 list file not found; looked for {mat} and {txt}. Unpack the dataset "
                            f"as {README} shows and point data.root at it")


def write_cars_text_list(root: str | os.PathLike) -> Path:
    """Write ``cars_annos.txt`` beside ``cars_annos.mat`` (needs SciPy once) so that loading needs none."""
    root = Path(root)
    rel, cls, _, source = read_cars_annotations(root)
    if source.suffix != ".mat":
        raise FileNotFoundError(f"{root / 'cars_annos.mat'} not found (or SciPy missing): nothing to convert")
    out = root / "cars_annos.txt"
    out.write_text("".join(f"{r} {c}\n" for r, c in zip(rel, cls)), encoding="utf-8")
    return out


class Cars196(BenchmarkDataset):
    """Stanford Cars (Krause et al., 2013): 196 car models; classes 1–98 train (8,054 images), 99–196
    test (8,131 images), both taken from all 16,185 images of ``car_ims/``.

    ``root`` holds ``cars_annos.mat`` (or ``cars_annos.txt``, see :func:`read_cars_annotations`) and
    ``car_ims/``. Class names come from the ``.mat`` (``"AM General Hummer SUV 2000"``), else ``"class_<id>"``.
    """

    name = "cars"
    title = "Cars196"
    source = "the Stanford AI Lab's Cars Dataset page (car_ims.tgz and cars_annos.mat)"
    splits = ("train", "test")
    expected = {"train": (8054, 98), "test": (8131, 98)}

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray, list[str], Path]:
        rel, cls, names, list_file = read_cars_annotations(root)
        low, high = (1, 98) if split == "train" else (99, 196)
        keep = [i for i, c in enumerate(cls) if low <= c <= high]
        labels, classes = _contiguous([cls[i] for i in keep])
        if names is not None and len(names) < max(cls, default=0):
            raise ValueError(f"{list_file} names {len(names)} classes but uses class {max(cls)}")
        class_names = [names[c - 1] if names is not None else f"class_{c}" for c in classes]
        return [os.path.join(root, rel[i]) for i in keep], labels, class_names, list_file


class StanfordOnlineProducts(BenchmarkDataset):
    """Stanford Online Products (Oh Song et al., 2016): 22,634 products; ``Ebay_train.txt`` (59,551 images,
    11,318 classes) and ``Ebay_test.txt`` (60,502 images, 11,316 classes).

    ``root`` is the directory that contains ``Stanford_Online_Products/`` or that directory itself. The
    list files have a header line ``image_id class_id super_class_id path``. Class names are
    ``"<super-class folder>/<class_id>"``.
    """

    name = "sop"
    title = "Stanford Online Products"
    source = "the Stanford CVGL 'Deep Metric Learning via Lifted Structured Feature Embedding' project page"
    splits = ("train", "test")
    expected = {"train": (59551, 11318), "test": (60502, 11316)}

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray, list[str], Path]:
        file = f"Ebay_{split}.txt"
        list_file = self._find(root, [file, f"Stanford_Online_Products/{file}"])
        base = list_file.parent
        with open(list_file, encoding="utf-8") as f:
            header = f.readline().split()
        if header[:2] != ["image_id", "class_id"]:
            raise ValueError(f"{list_file}: the first line should be the header 'image_id class_id super_class_id "
                             f"path', got {' '.join(header)!r}")
        rows = _read_rows(list_file, 4, skip=1)
        labels, classes = _contiguous([int(r[1]) for r in rows])
        folder_of = {int(r[1]): r[3].split("/")[0] for r in rows}
        class_names = [f"{folder_of[c]}/{c}" for c in classes]
        return [os.path.join(base, r[3]) for r in rows], labels, class_names, list_file


class InShop(BenchmarkDataset):
    """DeepFashion In-shop Clothes Retrieval (Liu et al., 2016): ``train`` (25,882 images, 3,997 items),
    ``query`` (14,218 images) and ``gallery`` (12,612 images) of the same 3,985 items.

    ``root`` holds ``list_eval_partition.txt`` (or ``Eval/`` or ``Anno/list_eval_partition.txt``: two header
    lines, then ``<image_name> <item_id> <train|query|gallery>``) and ``img/``. ``query`` and ``gallery``
    share one label space, the items of both numbered together in sorted order, so a query's label is
    the label of its item in the gallery. Class names are the item ids (``id_00000001``).
    """

    name = "inshop"
    title = "In-Shop Clothes Retrieval"
    source = "the CUHK Multimedia Lab's DeepFashion page (In-shop Clothes Retrieval Benchmark: img.zip, list_eval_partition.txt)"
    splits = ("train", "query", "gallery")
    expected = {"train": (25882, 3997), "query": (14218, 3985), "gallery": (12612, 3985)}

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray, list[str], Path]:
        list_file = self._find(root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt",
                                      "Anno/list_eval_partition.txt"])
        rows = _read_rows(list_file, 3, skip=2)
        bad = sorted({r[2] for r in rows} - set(self.splits))
        if bad:
            raise ValueError(f"{list_file}: unknown evaluation_status {bad}; expected train, query or gallery")
        space = {"train"} if split == "train" else {"query", "gallery"}
        items = sorted({r[1] for r in rows if r[2] in space})
        label_of = {item: i for i, item in enumerate(items)}
        mine = [r for r in rows if r[2] == split]
        labels = np.asarray([label_of[r[1]] for r in mine], dtype=np.int64)
        return [os.path.join(root, r[0]) for r in mine], labels, items, list_file


BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    cls.name: cls for cls in (CUB200, Cars196, StanfordOnlineProducts, InShop)
}


def benchmark_splits(name: str, root: str | os.PathLike, train_transform: Transform, test_transform: Transform, *,
                     check_counts: bool = True, skip_corrupt: bool = False) -> DatasetSplits:
    """The train split and the test retrieval sets of benchmark ``name`` (cub, cars, sop, inshop) under ``root``.

    CUB, Cars and SOP test by leave-one-out on their test split (``gallery=None``); In-Shop's queries
    search its gallery. ``check_counts`` and ``skip_corrupt`` are passed to every split.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"{name!r} is not a benchmark; expected one of {', '.join(BENCHMARKS)}")
    cls = BENCHMARKS[name]
    kw = dict(check_counts=check_counts, skip_corrupt=skip_corrupt)
    train = cls(root, "train", train_transform, **kw)
    if cls is InShop:
        return DatasetSplits(train=train, query=cls(root, "query", test_transform, **kw),
                             gallery=cls(root, "gallery", test_transform, **kw))
    return DatasetSplits(train=train, query=cls(root, "test", test_transform, **kw))


__all__ = ["BENCHMARKS", "CUB200", "Cars196", "CorruptImageError", "InShop", "StanfordOnlineProducts",
           "benchmark_splits", "decode_image", "find_unreadable", "read_cars_annotations", "write_cars_text_list"]
