"""Writing a run's files so that a failed write never leaves a partial file.

Every file a run writes (``checkpoint.pt``, ``log.csv``, ``metrics.json``, ``config.yaml``, ``env.json``)
goes through :func:`atomic_write`: the content goes to a temporary file in the same folder, is flushed
and ``fsync``-ed, then renamed over the old file, and the folder is ``fsync``-ed. A write that fails
(disk full, quota, permission, the folder removed, an I/O error) removes the temporary file and raises a
:class:`StorageError` naming the path: the previous version of the file is still there, whole, and no
reader (``--resume`` included) ever sees a partial one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional, Union

Content = Union[bytes, str, Callable[[IO[bytes]], None]]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class StorageError(OSError):
    """A run file could not be written; the message names the path, the cause and what is left on disk."""


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
    atomically: temporary file in the same folder, flush, ``fsync``, rename, ``fsync`` of the folder.

    The folder must exist. On failure the temporary file is removed, ``path`` keeps its previous version
    and a :class:`StorageError` names ``path`` and the cause. Temporary files left by a writer that was
    killed (``.<name>.*.tmp``) are removed after a successful write.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _failed(path, exc) from None
    recorder: Optional[_RecordingFile] = None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # the mode of a file written in place, not mkstemp's 0600
            if callable(content):
                recorder = _RecordingFile(f)
                content(recorder)  # type: ignore[arg-type]
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else exc
        if isinstance(cause, OSError):
            raise _failed(path, cause) from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(exc.errno, f"{path} was written but its folder could not be synced to disk: "
                                      f"{_describe(exc)}") from None
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)


__all__ = ["StorageError", "atomic_write"]
