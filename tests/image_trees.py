"""Small image trees and manifests for the tests of the user-data path, drawn with PIL: classes of
distinct colours and stripes, images of varied sizes in PNG, JPEG and WebP, one corrupt file and one
class with a single image."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))
CORRUPT = "broken.jpg"
SINGLETON = "lonely"


def draw(class_index: int, image_index: int, size: tuple[int, int]) -> Image.Image:
    """An RGB image of class ``class_index``: its own colour and stripe period, with per-image noise."""
    rng = np.random.default_rng(1000 * class_index + image_index)
    w, h = size
    colour = np.array([(class_index * 97) % 256, (class_index * 53 + 80) % 256, (class_index * 151 + 40) % 256])
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((xx + yy * (class_index % 3)) // (2 + class_index % 5)) % 2
    pixels = colour[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_class(folder: Path, class_index: int, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ext, fmt = FORMATS[(i + class_index) % len(FORMATS)]
        size = (20 + 7 * ((i + offset) % 5), 18 + 5 * ((i + 2 * offset) % 4))
        path = folder / f"img{i + offset:03d}.{ext}"
        draw(class_index, i + offset, size).save(path, fmt)
        paths.append(path)
    return paths


def make_tree(root: Path, classes: int = 6, per_class: int = 5, *, splits: Optional[dict[str, range]] = None,
              corrupt: bool = True, singleton: bool = True) -> Path:
    """An image folder under ``root``: ``classes`` classes ``c0, c1, ...`` of ``per_class`` images
    (``root/<class>/``, or ``root/<split>/<class>/`` with ``splits`` mapping split → class indices), a
    corrupt ``broken.jpg`` in the first class, and a class ``lonely`` with one image."""
    root.mkdir(parents=True, exist_ok=True)
    layout = splits or {"": range(classes)}
    for split, indices in layout.items():
        for c in indices:
            write_class(root / split / f"c{c}", c, per_class)
    first_split, first_classes = next(iter(layout.items()))
    if corrupt:
        (root / first_split / f"c{first_classes[0]}" / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if singleton:
        write_class(root / first_split / SINGLETON, 40, 1)
    return root


def make_manifest(root: Path, name: str = "manifest.csv", classes: int = 6, per_class: int = 5, *,
                  split: bool = False, corrupt: bool = True, singleton: bool = True) -> Path:
    """A manifest ``path,label[,split]`` (CSV, or parquet when ``name`` ends with ``.parquet``) listing images
    in ``root/images/`` by relative path; with ``split``, the first half of the classes are train and the
    rest test."""
    import pandas as pd

    rows = []
    for c in range(classes):
        for p in write_class(root / "images" / f"c{c}", c, per_class):
            rows.append({"path": p.relative_to(root).as_posix(), "label": c,
                         "split": "train" if c < classes // 2 else "test"})
    if corrupt:
        bad = root / "images" / CORRUPT
        bad.write_bytes(b"GIF89a truncated")
        rows.append({"path": bad.relative_to(root).as_posix(), "label": 0, "split": "train"})
    if singleton:
        p = write_class(root / "images" / SINGLETON, 40, 1)[0]
        rows.append({"path": p.relative_to(root).as_posix(), "label": 99, "split": "train"})
    frame = pd.DataFrame(rows)
    if not split:
        frame = frame.drop(columns="split")
    path = root / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path
