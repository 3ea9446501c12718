"""The training loader's failures, reported with the step they hit instead of a worker's traceback or a hang.

- An image that cannot be read once training has started (deleted, truncated, corrupt, its disk gone):
  :class:`ReadGuard` turns the read error into an :class:`Unreadable` item, so no exception has to cross
  from a worker process, and :func:`readable_batches` raises a :class:`DataError` naming the image and
  the step, or, with ``data.skip_corrupt``, drops the image from its batch, logs it and counts it.
- A data-loader worker process that dies (the kernel's OOM killer, a crash in a decoder): torch notices
  and raises (or the connection over which the worker hands a batch over is reset); :func:`worker_guard`
  turns that into a :class:`LoaderWorkerError` naming the worker and the batch the loader was producing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

from torch.utils.data import Dataset, default_collate

from pygml.app.reports import log
from pygml.data import CorruptImageError


class DataError(ValueError):
    """A training image could not be read; the message names it and the step."""


class LoaderWorkerError(RuntimeError):
    """A data-loader worker process died; the message names it and the batch."""


@dataclass(frozen=True)
class Unreadable:
    """An item of the dataset that could not be read, and why (the reader's message names the file)."""

    index: int
    message: str


class ReadGuard(Dataset):
    """``dataset[i]``, or an :class:`Unreadable` item when reading it fails with a missing, corrupt or
    unreadable file."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (CorruptImageError, OSError) as exc:
            return Unreadable(int(index), str(exc))


def collate(items: list[Any]) -> tuple[Optional[Any], list[Unreadable]]:
    """``(default_collate of the readable items or None, the unreadable items)``: the ``collate_fn`` of a
    loader over a :class:`ReadGuard`."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    return (default_collate(good) if good else None), [item for item in items if isinstance(item, Unreadable)]


def readable_batches(loader: Iterable[tuple[Optional[Any], list[Unreadable]]], *, skip: bool,
                     where: Callable[[], str]) -> Iterator[tuple[Any, int]]:
    """The batches of a loader that :func:`collate` s a :class:`ReadGuard`, each with the number of its
    images that could not be read. An unreadable image is a :class:`DataError` naming it and
    ``where()`` (the step), or, with ``skip``, a logged warning; a batch of unreadable images only is
    always an error."""
    for batch, unreadable in loader:
        if unreadable and not skip:
            more = f" ({len(unreadable) - 1} more unreadable images in this batch)" if len(unreadable) > 1 else ""
            raise DataError(f"{where()}: {unreadable[0].message}{more}")
        for item in unreadable:
            log.warning("skipped an unreadable image at %s: %s", where(), item.message)
        if batch is None:
            raise DataError(f"{where()}: none of the {len(unreadable)} images of the batch can be read; the first: "
                            f"{unreadable[0].message}")
        yield batch, len(unreadable)


def is_worker_death(exc: BaseException) -> bool:
    """Whether ``exc`` is how a data-loader worker's death shows: torch's report of a worker that died or
    exited unexpectedly, or a connection to a worker that was reset while it handed over a batch."""
    return (isinstance(exc, RuntimeError) and "DataLoader worker (pid" in str(exc)) or isinstance(exc, ConnectionError)


def _describe_death(exc: BaseException) -> str:
    if isinstance(exc, ConnectionError):
        return f"a DataLoader worker died while handing over a batch ({type(exc).__name__}: {exc})"
    return str(exc).strip().splitlines()[0].rstrip(".")


@contextmanager
def worker_guard(where: Callable[[], str]) -> Iterator[None]:
    """Turn the death of a data-loader worker (:func:`is_worker_death`), raised anywhere in the block, into a
    :class:`LoaderWorkerError` naming the worker and ``where()`` (the batch being loaded)."""
    try:
        yield
    except (RuntimeError, ConnectionError) as exc:
        if not is_worker_death(exc):
            raise
        raise LoaderWorkerError(f"{_describe_death(exc)} while the training loader was producing the batch of "
                                f"{where()}. A worker killed by signal 9 (Killed) was usually stopped by the kernel "
                                "for lack of memory: lower data.num_workers or the batch size") from None


__all__ = ["DataError", "LoaderWorkerError", "ReadGuard", "Unreadable", "collate", "is_worker_death",
           "readable_batches", "worker_guard"]
