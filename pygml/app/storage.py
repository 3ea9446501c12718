"""Writing a run's files so that a failed write is one clear error and never a partial file.

Every file a run writes (``checkpoint.pt``, ``log.csv``, ``metrics.json``, ``config.yaml``, ``env.json``)
goes through :func:`atomic_write`, which writes with :func:`pygml.atomic.atomic_path` (temporary file in
the same folder, ``fsync``, rename) and adds what a run needs on top: a write that fails (disk full,
quota, read-only file system, permission, the folder removed, an I/O error) raises a
:class:`StorageError` naming the path, the cause and what is left on disk. The previous version of the
file is still there, whole, and no reader (``--resume`` included) ever sees a partial one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Callable, Optional, Union

from pygml.atomic import atomic_path

Content = Union[bytes, str, Callable[[IO[bytes]], None]]


class StorageError(OSError):
    """A run file could not be written; the message names the path, the cause and what is left on disk
    (``errno`` is the cause's)."""

    def __str__(self) -> str:
        return self.strerror if self.errno is not None else super().__str__()


class _RecordingFile:
    """A binary file that remembers the ``OSError`` of a failed write: ``torch.save`` turns it into a
    ``RuntimeError`` that no longer says the disk was full."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason} ({name})" if name else reason


def _failed(path: Path, exc: OSError) -> StorageError:
    if not path.parent.is_dir():
        left = f"its folder {path.parent} no longer exists"
    elif path.exists():
        left = f"{path} still holds its previous version, whole"
    else:
        left = "no partial file was left"
    return StorageError(exc.errno, f"cannot write {path}: {_describe(exc)}; {left}")


def atomic_write(path: str | os.PathLike, content: Content) -> None:
    """Write ``content`` (bytes, text in UTF-8, or a function that writes to a binary file) to ``path``
    atomically (:func:`pygml.atomic.atomic_path`), in a folder that exists.

    A failed write raises a :class:`StorageError` naming ``path`` and the cause (``ENOSPC``, ``EROFS``,
    ``EACCES``, ...); ``path`` keeps its previous version and no temporary file is left.
    """
    path = Path(path)
    recorder: Optional[_RecordingFile] = None
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            if callable(content):
                recorder = _RecordingFile(f)
                content(recorder)  # type: ignore[arg-type]
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
    except Exception as exc:
        cause = recorder.error if recorder is not None and recorder.error is not None else exc
        if isinstance(cause, OSError):
            raise _failed(path, cause) from None
        raise


__all__ = ["StorageError", "atomic_write"]
