"""Two small real-image sets that install offline, as zero-shot retrieval tasks (train on classes 0–4,
test on the unseen classes 5–9, labelled 0–4 within the split).

- :class:`FashionMNIST`: Zalando's 28×28 grey photographs of clothing, from the Debian package
  ``dataset-fashion-mnist`` (IDX files under ``/usr/share/datasets/fashion-mnist``).
- :class:`Digits`: scikit-learn's bundled 8×8 hand-written digits (1,797 images; tiny, for tests).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from pygml.data.base import GrayImages, Transform

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: file name and number of items of each official set
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
_IDX_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed if the name ends with ``.gz``).

    Layout: two zero bytes, the type code ``0x08`` (unsigned byte), the number of dimensions, then each
    dimension as a big-endian uint32, then the data in C order. The magic number, ``ndim``, the ``shape``
    (when given) and the data length are checked; any mismatch is a ``ValueError`` naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path}: cannot be decompressed ({exc}); the file is truncated or corrupt") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'}, "
                         f"expected 000008{ndim:02x})")
    if raw[3] != ndim:
        raise ValueError(f"{path}: has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: header truncated ({len(raw)} bytes, expected at least {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if shape is not None and dims != tuple(shape):
        raise ValueError(f"{path}: shape {dims}, expected {tuple(shape)}")
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ValueError(f"{path}: {len(raw) - header} bytes of data for shape {dims} ({size} expected); "
                         "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _zero_shot_split(images: np.ndarray, labels: np.ndarray,
                     split: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The images of the split's classes (0-4 for train, 5-9 for test), labels shifted to start at 0."""
    classes = TRAIN_CLASSES if split == "train" else TEST_CLASSES
    keep = np.isin(labels, classes)
    return images[keep], labels[keep].astype(np.int64) - classes[0], classes


class FashionMNIST(GrayImages):
    """Fashion-MNIST (Xiao et al., 2017) as a zero-shot retrieval task.

    ``train``: the official training images of classes 0–4 (T-shirt/top, Trouser, Pullover, Dress, Coat),
    30,000 images. ``test``: the official test images of classes 5–9 (Sandal, Shirt, Sneaker, Bag, Ankle
    boot), 5,000 images, labelled 0–4. No image of a test class is seen in training, and the test set is the
    official one. Images are 28×28 grey, returned as RGB PIL images.

    Args:
        root: directory of the four ``*-ubyte.gz`` files (Debian: ``apt-get install dataset-fashion-mnist``).
        split: ``"train"`` or ``"test"``.
        transform: applied to the PIL image.
    """

    def __init__(self, root: str | Path = FASHION_MNIST_ROOT, split: str = "train", transform: Transform = None):
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f"FashionMNIST split must be 'train' or 'test', got {split!r}")
        image_file, label_file, count = FASHION_MNIST_FILES[split]
        root = Path(root)
        for name in (image_file, label_file):
            if not (root / name).is_file():
                raise FileNotFoundError(f"Fashion-MNIST file not found: {root / name}; install the Debian package "
                                        "dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist), or set "
                                        "data.root to a directory holding the four IDX .gz files")
        images = read_idx(root / image_file, 3, (count, 28, 28))
        labels = read_idx(root / label_file, 1, (count,))
        if labels.max() > 9:
            raise ValueError(f"{root / label_file}: label {labels.max()} outside 0..9")
        images, labels, classes = _zero_shot_split(images, labels, split)
        super().__init__(images, labels, [FASHION_MNIST_CLASSES[c] for c in classes], transform)
        self.name = "fashion_mnist"
        self.split = split


class Digits(GrayImages):
    """scikit-learn's bundled 8×8 hand-written digits as a zero-shot retrieval task: ``train`` holds the
    digits 0–4 (901 images), ``test`` the digits 5–9 (896 images, labelled 0–4). Grey levels 0–16 are
    scaled to 0–255; the transform resizes the 8×8 images. Needs scikit-learn (no download)."""

    def __init__(self, split: str = "train", transform: Transform = None):
        if split not in ("train", "test"):
            raise ValueError(f"Digits split must be 'train' or 'test', got {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        images, labels, classes = _zero_shot_split(images, bunch.target, split)
        super().__init__(images, labels, [str(c) for c in classes], transform)
        self.name = "digits"
        self.split = split
