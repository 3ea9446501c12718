"""Files written whole or not at all.

:func:`atomic_path` hands out a temporary path in the destination's folder; whatever is written there is
flushed to disk and renamed over the destination only when the ``with`` block ends without an error, so
a crash, a failed check or ``Ctrl-C`` never leaves a half-written file at the destination. Every writer
of pygml's outputs (checkpoints, embeddings, indexes, exported models, reports) goes through it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_folder(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a :class:`~pathlib.Path` whose folder exists; a :class:`FileNotFoundError` names the
    missing folder (outputs are never written into folders made up on the fly from a typo)."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write the {what} {path}: the folder {path.parent} does not exist; "
                                "create it first or choose another path")
    if path.is_dir():
        raise ValueError(f"cannot write the {what} {path}: it is a folder; give a file name")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, so the final rename is atomic); on success the file
    written there is fsynced and renamed to ``path``, on any exception it is deleted. The file gets the
    mode a file written in place would get (``0o666`` less the umask). Temporary files left by a writer
    that was killed (``.<name>.*.tmp``) are removed after a successful write.

    >>> with atomic_path("out/embeddings.npy") as tmp, open(tmp, "wb") as f:  # doctest: +SKIP
    ...     np.save(f, x)  # out/embeddings.npy appears only once np.save has returned

    Write through an open file or a writer that takes the exact path: ``np.save(tmp, x)`` would add
    ``.npy`` to the temporary name.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode of a file written in place, not mkstemp's 0600
    finally:
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    _fsync(path.parent)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["atomic_path", "check_folder", "sha256_file"]
