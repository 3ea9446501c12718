"""Images on disk: decoding with errors that name the file, finding and dropping the unreadable ones, and
a retrieval dataset of images listed by path.

Every loader of image files (the benchmarks, the user's folders and manifests) reads through
:func:`decode_image` and skips bad files through :func:`skip_unreadable`, so a missing or corrupt image
gives the same error, and ``skip_corrupt`` the same count, whatever listed it.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pygml.data.base import RetrievalDataset, Transform

#: file name endings read as images (compared in lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}. Replace or delete the file, "
                         "or set data.skip_corrupt=true (skip_corrupt=True) to drop corrupt images")
        self.path = path
        self.reason = reason


def decode_image(path: str, *, full: bool = True) -> Image.Image:
    """Open and decode the image at ``path`` as RGB; ``full=False`` decodes JPEGs at 1/8 scale, which
    still reads the whole file (a truncated one fails) at a fraction of the cost.

    Raises :class:`FileNotFoundError` when the file is missing and :class:`CorruptImageError` when it
    cannot be decoded, both naming the path.
    """
    try:
        with Image.open(path) as im:
            if not full:
                im.draft("RGB", (1, 1))
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} is listed but missing; restore it (a benchmark: re-extract the "
                                "dataset, layout in datasets/README.md) or set data.skip_corrupt=true to drop "
                                "it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(path, str(exc) or type(exc).__name__) from None


def find_unreadable(paths: Sequence[str], desc: str = "verify images", progress: bool = True) -> np.ndarray:
    """Indices of the ``paths`` that are missing or cannot be decoded (one decoding pass, with a bar)."""
    bad = []
    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress, unit="img")):
        try:
            decode_image(path, full=False)
        except (FileNotFoundError, CorruptImageError):
            bad.append(i)
    return np.asarray(bad, dtype=np.int64)


def skip_unreadable(paths: Sequence[str], labels: np.ndarray, class_names: Sequence[str], what: str, *,
                    desc: str = "verify images", progress: bool = True,
                    stacklevel: int = 3) -> tuple[list[str], np.ndarray, list[str]]:
    """``(paths, labels, skipped)``: the images that decode, their labels, and the paths dropped.

    Decodes every image once (:func:`find_unreadable`); the missing or corrupt ones are dropped and
    reported in one warning that counts them, names the first five and the classes left without an
    image (``what`` names the set, e.g. ``"CUB-200-2011 train"``). Labels are not renumbered.
    """
    paths = list(paths)
    bad = find_unreadable(paths, desc=desc, progress=progress)
    if not bad.size:
        return paths, labels, []
    skipped = [paths[i] for i in bad]
    keep = np.ones(len(paths), dtype=bool)
    keep[bad] = False
    lost = sorted(set(labels[~keep].tolist()) - set(labels[keep].tolist()))
    shown = ", ".join(skipped[:5]) + (", ..." if bad.size > 5 else "")
    emptied = f"; classes left without images: {[class_names[c] for c in lost]}" if lost else ""
    warnings.warn(f"{what}: skipped {bad.size} of {len(paths)} images that are missing or corrupt ({shown}){emptied}",
                  stacklevel=stacklevel)
    return [p for p, k in zip(paths, keep) if k], labels[keep], skipped


def is_image_file(name: str) -> bool:
    """Whether a file name ends like an image (:data:`IMAGE_EXTENSIONS`) and is not hidden."""
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class ImageFiles(RetrievalDataset):
    """Images listed by path with their labels, decoded on access (:func:`decode_image`).

    Args:
        paths: N image files.
        labels: N labels in ``0 .. C-1``.
        class_names: the C class names.
        transform: applied to the RGB PIL image.
        name, split: what the set is called in messages and reprs.

    Attributes: ``paths``, ``labels``, ``class_names``, ``skipped`` (paths a loader dropped before, empty
    by default).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 transform: Transform = None, *, name: str = "files", split: str = ""):
        if len(paths) != len(labels):
            raise ValueError(f"paths and labels differ in length: {len(paths)} paths, {len(labels)} labels")
        super().__init__(labels, class_names, transform)
        self.paths = [str(p) for p in paths]
        self.name = name
        self.split = split
        self.skipped: list[str] = []

    def load_image(self, index: int) -> Image.Image:
        return decode_image(self.paths[index])


__all__ = ["CorruptImageError", "IMAGE_EXTENSIONS", "ImageFiles", "decode_image", "find_unreadable", "is_image_file",
           "skip_unreadable"]
