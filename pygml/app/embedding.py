"""Embedding image files with a trained checkpoint, in shards that survive an interruption, and the files
that hold embeddings.

**Inputs** (:func:`list_inputs`): a folder (every image below it; the label of an image is its class
folder: the first folder below the root, or below ``train/``, ``test/``, ``query/``, ``gallery/``), a CSV
/ parquet manifest (``path,label[,split]``, :func:`pygml.data.read_manifest`), a text file of paths (one a
line, relative to the file's folder; ``#`` starts a comment), or paths given one by one.

**Embeddings on disk**: ``<name>.npy`` (float32, N × d) with the ordered file list beside it in
``<name>.files.csv`` (``path,label``), or one ``<name>.parquet`` (columns ``path``, ``label``,
``embedding``). Row ``i`` of the embeddings is the image ``path[i]``.

**Shards** (:func:`embed_in_shards`): the images are embedded ``shard_size`` at a time; each shard is
written to ``<out>.parts/shard-NNNNN.npz`` atomically (complete or absent), after a ``plan.json`` that
records what is being embedded (the file list, the checkpoint's SHA-256, the shard size). Run again
after an interruption, the same command skips the finished shards; a plan that does not match is an
error. The final files are written from the shards, then the shards are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pygml.atomic import sha256_file
from pygml.atomic import atomic_path, check_folder
from pygml.data import CorruptImageError, decode_image, find_unreadable, list_image_tree, read_manifest
from pygml.data.files import SPLITS
from pygml.data.images import is_image_file
from pygml.inference import embed_dataset

#: the endings of embedding files
EMBEDDING_SUFFIXES = (".npy", ".parquet")
PLAN_FORMAT = "pygml-embedding-shards"


@dataclass
class Items:
    """Images to embed: their paths and labels (``None`` when unknown), in order."""

    paths: list[str]
    labels: list[Optional[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def folder_items(root: str | os.PathLike) -> Items:
    """Every image below ``root``, labelled with its class folder (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    given = [s for s in SPLITS if (root / s).is_dir()]
    paths: list[str] = []
    labels: list[Optional[str]] = []
    for base in [root / s for s in given] or [root]:
        found, classes = list_image_tree(base, loose=True)
        paths += [os.path.abspath(p) for p in found]
        labels += [c or None for c in classes]
    return Items(paths, labels)


def list_items(list_file: str | os.PathLike) -> Items:
    """The paths of a text file, one a line, relative to its folder; blank lines and ``#`` comments skipped."""
    list_file = Path(list_file).expanduser()
    if not list_file.is_file():
        raise FileNotFoundError(f"list of images {list_file} not found")
    lines = [line.split("#", 1)[0].strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
    return Items([os.path.normpath(os.path.join(list_file.parent.resolve(), line)) for line in lines if line])


def list_inputs(*, folder: Optional[str] = None, manifest: Optional[str] = None, list_file: Optional[str] = None,
                files: Sequence[str] = ()) -> Items:
    """The images named by exactly one of ``folder``, ``manifest``, ``list_file`` or ``files``."""
    given = [name for name, value in (("--folder", folder), ("--csv", manifest), ("--list", list_file),
                                      ("image files", list(files))) if value]
    if len(given) != 1:
        raise ValueError(f"give the images one way: --folder DIR, --csv MANIFEST, --list FILE or image files "
                         f"(got {' and '.join(given) if given else 'none'})")
    if folder:
        items = folder_items(folder)
    elif manifest:
        paths, labels, _, _ = read_manifest(manifest)
        items = Items(paths, list(labels))
    elif list_file:
        items = list_items(list_file)
    else:
        items = Items([os.path.abspath(os.path.expanduser(f)) for f in files])
    if not len(items):
        raise ValueError("no images to embed")
    return items


def check_exist(items: Items) -> None:
    """A ``FileNotFoundError`` naming the first missing image (and counting them), or nothing."""
    missing = [p for p in items.paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images do not exist, e.g. {missing[0]}; fix the list or pass "
                                "--skip-corrupt to skip missing and unreadable images")


class _IndexedImages(Dataset):
    """``(transform(image), row)`` of the listed files, decoded on access; an unreadable image is an error
    that names it and the tools' ``--skip-corrupt``."""

    def __init__(self, paths: Sequence[str], rows: Sequence[int], transform: Callable) -> None:
        self.paths, self.rows, self.transform = list(paths), list(rows), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            image = decode_image(self.paths[i])
        except CorruptImageError as err:
            raise ValueError(f"cannot read image {err.path}: {err.reason}; replace or delete it, or pass --skip-corrupt "
                             "to skip unreadable images") from None
        return self.transform(image), int(self.rows[i])


def embed_items(fn: Callable[[Tensor], Tensor], items: Items, transform: Callable, *, batch_size: int = 256,
                device: torch.device | str = "cpu", skip_corrupt: bool = False, progress: bool = False,
                eval_module: Optional[torch.nn.Module] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (M, d), rows (M,))`` of a few ``items`` at once, in memory (queries); with
    ``skip_corrupt`` the images that do not decode are left out, else they are an error naming them."""
    rows = np.arange(len(items))
    if skip_corrupt:
        rows = np.setdiff1d(rows, find_unreadable(items.paths, progress=False))
        if not len(rows):
            raise ValueError("none of the query images can be read")
    else:
        check_exist(items)
    emb, got = embed_dataset(fn, _IndexedImages([items.paths[i] for i in rows], rows, transform),
                             batch_size=batch_size, device=device, progress=progress, model=eval_module)
    return emb.numpy().astype(np.float32), got.numpy()


def shards_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _plan(items: Items, shard_size: int, model: str) -> dict:
    """What a shard folder holds: the images, the model and the shard size (not ``skip_corrupt``: a shard
    written without it holds every row, as it would with it)."""
    listing = hashlib.sha256("\n".join(items.paths).encode()).hexdigest()
    return {"format": PLAN_FORMAT, "images": len(items), "files_sha256": listing, "model": model,
            "shard_size": shard_size}


def embed_in_shards(fn: Callable[[Tensor], Tensor], items: Items, transform: Callable, out: str | os.PathLike, *,
                    model: str, shard_size: int = 10_000, batch_size: int = 256,
                    device: torch.device | str = "cpu", num_workers: int = 0, skip_corrupt: bool = False,
                    progress: bool = True, eval_module: Optional[torch.nn.Module] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (M, d), rows (M,))`` of the ``items`` (M of N: all, or those that decode with
    ``skip_corrupt``), embedded by ``fn`` a shard at a time under ``<out>.parts/`` (module docstring).

    ``model`` identifies the model (the checkpoint's SHA-256): shards of another model, file list or
    shard size are refused. The shards stay until :func:`remove_shards`.
    """
    if shard_size < 1:
        raise ValueError(f"the shard size must be positive, got {shard_size}")
    parts = shards_folder(out)
    plan = _plan(items, shard_size, model)
    plan_file = parts / "plan.json"
    if parts.is_dir() and plan_file.is_file():
        found = json.loads(plan_file.read_text())
        if found != plan:
            differ = sorted(k for k in plan if found.get(k) != plan[k])
            raise ValueError(f"{parts} holds shards of another embedding run ({', '.join(differ)} differ); delete it "
                             "to start over, or choose another output")
    else:
        parts.mkdir(exist_ok=True)
        with atomic_path(plan_file) as tmp:
            tmp.write_text(json.dumps(plan))
    n_shards = -(-len(items) // shard_size)
    done = [k for k in range(n_shards) if (parts / f"shard-{k:05d}.npz").is_file()]
    bar = tqdm(total=len(items), initial=sum(min(shard_size, len(items) - k * shard_size) for k in done),
               disable=not progress, desc="embed", unit="img", dynamic_ncols=True)
    try:
        _embed_shards(fn, items, transform, parts, n_shards, shard_size, bar, batch_size=batch_size, device=device,
                      num_workers=num_workers, skip_corrupt=skip_corrupt, progress=progress, eval_module=eval_module)
    except BaseException:
        if not any(parts.glob("shard-*.npz")):  # nothing to resume from: leave nothing behind
            remove_shards(out)
        raise
    finally:
        bar.close()
    return _read_shards(parts, n_shards)


def _embed_shards(fn: Callable[[Tensor], Tensor], items: Items, transform: Callable, parts: Path, n_shards: int,
                  shard_size: int, bar: tqdm, *, batch_size: int, device: torch.device | str, num_workers: int,
                  skip_corrupt: bool, progress: bool, eval_module: Optional[torch.nn.Module]) -> None:
    for k in range(n_shards):
        shard = parts / f"shard-{k:05d}.npz"
        if shard.is_file():
            continue
        rows = np.arange(k * shard_size, min((k + 1) * shard_size, len(items)))
        paths = [items.paths[i] for i in rows]
        if skip_corrupt:
            bad = find_unreadable(paths, desc=f"verify shard {k + 1}/{n_shards}", progress=False)
            keep = np.setdiff1d(np.arange(len(rows)), bad)
            rows, paths = rows[keep], [paths[i] for i in keep]
        if len(rows):
            emb, got = embed_dataset(fn, _IndexedImages(paths, rows, transform), batch_size=batch_size,
                                     device=device, num_workers=num_workers, progress=progress,
                                     desc=f"shard {k + 1}/{n_shards}", model=eval_module)
            emb, got = emb.numpy().astype(np.float32), got.numpy()
        else:
            emb, got = np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
        with atomic_path(shard) as tmp, open(tmp, "wb") as f:
            np.savez(f, embeddings=emb, rows=got)
        bar.update(min(shard_size, len(items) - k * shard_size))


def _read_shards(parts: Path, n_shards: int) -> tuple[np.ndarray, np.ndarray]:
    chunks, rows = [], []
    for k in range(n_shards):
        shard = parts / f"shard-{k:05d}.npz"
        try:
            with np.load(shard) as z:
                chunks.append(z["embeddings"])
                rows.append(z["rows"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"shard {shard} cannot be read ({err}); delete it to embed its images again") from None
    dims = {c.shape[1] for c in chunks if len(c)}
    if len(dims) > 1:
        raise ValueError(f"the shards in {parts} hold embeddings of different sizes {sorted(dims)}; delete the folder")
    if not dims:
        raise ValueError("none of the images could be read: nothing to embed")
    return np.concatenate([c for c in chunks if len(c)]), np.concatenate(rows)


def remove_shards(out: str | os.PathLike) -> None:
    shutil.rmtree(shards_folder(out), ignore_errors=True)


def files_path(out: str | os.PathLike) -> Path:
    """The file list beside ``<name>.npy``: ``<name>.files.csv``."""
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".files.csv")


def embedding_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"embeddings are written to and read from .npy (with a .files.csv beside) or .parquet "
                         f"files; got {path}")
    return suffix[1:]


def write_embeddings(out: str | os.PathLike, embeddings: np.ndarray, paths: Sequence[str],
                     labels: Sequence[Optional[str]]) -> list[Path]:
    """Write embeddings and their file list (module docstring), each file atomically; returns the files."""
    fmt = embedding_format(out)
    out = check_folder(out, "embeddings")
    frame = pd.DataFrame({"path": list(paths), "label": ["" if lab is None else lab for lab in labels]})
    if fmt == "npy":
        with atomic_path(files_path(out)) as tmp:
            frame.to_csv(tmp, index=False)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32))
        return [out, files_path(out)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("parquet embeddings need pyarrow: pip install 'pygml[parquet]'") from exc
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    table = pa.table({"path": frame["path"].tolist(), "label": frame["label"].tolist(),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
    return [out]


def read_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[Optional[str]]]:
    """``(embeddings (N, d) float32, paths, labels)`` of a file written by :func:`write_embeddings`."""
    fmt = embedding_format(path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"embeddings {path} not found; write them with pygml-embed")
    if fmt == "npy":
        listing = files_path(path)
        if not listing.is_file():
            raise FileNotFoundError(f"embeddings {path} have no file list beside them ({listing}); write them with "
                                    "pygml-embed")
        try:
            x = np.load(path, allow_pickle=False)
            frame = pd.read_csv(listing, dtype=str, keep_default_na=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"embeddings {path} cannot be read: {err}") from None
        if "path" not in frame.columns:
            raise ValueError(f"{listing} has no 'path' column; write the embeddings with pygml-embed")
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("parquet embeddings need pyarrow: pip install 'pygml[parquet]'") from exc
        try:
            table = pq.read_table(str(path))
        except Exception as err:  # noqa: BLE001 - pyarrow's errors vary; re-raised naming the file
            raise ValueError(f"embeddings {path} cannot be read as parquet: {err}") from None
        missing = [c for c in ("path", "embedding") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; write the embeddings with pygml-embed")
        column = table.column("embedding").combine_chunks()
        x = np.asarray(column.flatten()).reshape(len(table), -1) if len(table) else np.zeros((0, 0))
        frame = table.select([c for c in ("path", "label") if c in table.column_names]).to_pandas()
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or len(x) == 0:
        raise ValueError(f"embeddings {path} hold {x.dtype} {x.shape}; expected a non-empty (N, d) float array")
    if len(frame) != len(x):
        raise ValueError(f"embeddings {path} have {len(x)} rows but their file list has {len(frame)}; the files do not "
                         "belong together (write them again with pygml-embed)")
    labels = frame["label"].tolist() if "label" in frame.columns else [""] * len(frame)
    return x.astype(np.float32, copy=False), frame["path"].tolist(), [lab if lab else None for lab in labels]


__all__ = ["EMBEDDING_SUFFIXES", "Items", "check_exist", "embed_in_shards", "embed_items", "embedding_format", "files_path",
           "folder_items", "list_inputs", "list_items", "read_embeddings", "remove_shards", "sha256_file",
           "shards_folder", "write_embeddings"]
