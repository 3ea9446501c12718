"""The run directory: one writer at a time, and no run replaced or changed without being asked.

**The lock.** A training run holds ``<out_dir>/run.lock`` from start to end (rank 0 alone under torchrun):
an exclusive ``flock`` on the file, and in it the holder's pid, host, boot and start time, refreshed every
:data:`HEARTBEAT_S` seconds. A second run on the directory is refused with an error naming the directory
and the holder. A lock left behind by a holder that is gone (killed, crashed, its machine rebooted) is
taken over with a warning: on the same host the holder is gone when it no longer holds the ``flock`` or
no longer runs (``os.kill(pid, 0)``); a lock written on another host, where neither can be checked on
file systems that do not share locks, is taken over when it has not been refreshed for
:data:`FOREIGN_LOCK_TIMEOUT_S` seconds, or with ``--overwrite``. The lock is released on every exit
path of the run; ``eval.py`` reads a run directory without taking it.

**Opening a run.** :func:`open_run` decides, on rank 0, whether a run starts afresh or continues its
checkpoint (``train.resume`` / ``--resume``: ``never``, ``auto`` or ``must``), and every rank gets the
decision, or the error, from rank 0:

- a directory that holds a run (a ``checkpoint.pt``) is refused unless the run is resumed, or
  ``--overwrite`` starts afresh (deleting the old run's files, :data:`RUN_FILES`);
- a resumed run whose config differs from the checkpoint's logs each difference (``key: old → new``);
  changes outside :data:`FREE_KEYS` alter the run (method, data, batch, model, optimiser, ...) and are
  refused unless ``--allow-config-change`` is given. The run then continues with the new config, and
  the next checkpoint and ``config.yaml`` record it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from pygml.app import distributed
from pygml.app.checkpoint import load_checkpoint
from pygml.app.config import RESUME_MODES, ConfigError, config_from_dict, config_to_dict
from pygml.app.reports import log

LOCK_FILE = "run.lock"
#: seconds between two refreshes of a held lock's time stamp
HEARTBEAT_S = 60.0
#: a lock written on another host is stale once it has not been refreshed for this long (10 minutes)
FOREIGN_LOCK_TIMEOUT_S = 600.0
#: the files of a run, deleted by ``--overwrite``
RUN_FILES = ("checkpoint.pt", "log.csv", "metrics.json", "config.yaml", "env.json")
#: config keys a resumed run may change freely (prefixes): how long it trains, when it evaluates, checkpoints
#: and stops, what it shows, how it treats a non-finite loss, where it runs and reads its data from
FREE_KEYS = ("train.epochs", "train.eval_every", "train.eval_test_every_epoch", "train.checkpoint_every_steps",
             "train.stop_after_steps", "train.nonfinite", "train.progress", "train.device", "train.compile",
             "data.num_workers", "data.root", "eval.")
#: keys about the run directory itself: never reported as differences
SILENT_KEYS = ("train.out_dir", "train.resume")


class RunDirError(ValueError):
    """A run directory cannot be used as asked: held by a live run, or holding a run not asked to be resumed."""


def resume_mode(value: bool | str | None) -> str:
    """``never``, ``auto`` or ``must`` from ``train.resume`` / ``--resume`` (``True`` and ``"true"`` mean
    ``must``, ``False`` and ``None`` mean ``never``)."""
    if value is None or value is False:
        return "never"
    if value is True or value == "true":
        return "must"
    if value not in RESUME_MODES:
        raise ConfigError(f"resume mode {value!r}: expected one of {', '.join(RESUME_MODES)} (or true for must)")
    return str(value)


@dataclass
class LockHolder:
    pid: int
    host: str
    boot: Optional[str]  # the kernel's boot id: a pid of an earlier boot is not a live process
    started: str

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} (started {self.started})"


def _boot_id() -> Optional[str]:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


class RunLock:
    """The lock of a run directory (see the module's docstring): :meth:`acquire`, :meth:`release`."""

    def __init__(self, directory: str | os.PathLike, *, take_foreign: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.take_foreign = take_foreign
        self._fd: Optional[int] = None
        self._made: list[Path] = []  # the folders acquire() created, deepest first
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def _open_locked(self) -> tuple[int, bool]:
        """A descriptor of the lock file and whether this process holds its ``flock`` (``False``: the file
        system has no locks); a :class:`RunDirError` when a live process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise RunDirError(f"{self.directory} is in use by another run: "
                                  f"{holder or 'a process that holds ' + str(self.path)}. Wait for it to end, or "
                                  "give this run another train.out_dir") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                    os.close(fd)
                    raise
                return fd, False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # released (unlinked) by its holder meanwhile
                same = False
            if same:
                return fd, True
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> Optional[LockHolder]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8")
            return LockHolder(**json.loads(text)) if text.strip() else None
        except (OSError, ValueError, TypeError):
            return None

    def _gone(self, holder: LockHolder, locked: bool, fd: int) -> str:
        """Why ``holder`` no longer holds the lock, or a :class:`RunDirError` when it may."""
        if holder.host == socket.gethostname():
            if holder.boot is not None and holder.boot != _boot_id():
                return "that host has rebooted since"
            if not _pid_alive(holder.pid):
                return "that process is no longer running"
            if locked:
                return "that process no longer holds the lock"
            raise RunDirError(f"{self.directory} is in use by another run: {holder}. Wait for it to end, or give "
                              "this run another train.out_dir")
        age = time.time() - os.fstat(fd).st_mtime
        if age > FOREIGN_LOCK_TIMEOUT_S:
            return f"its lock was last refreshed {age / 60:.0f} minutes ago"
        if self.take_foreign:
            return "--overwrite was given"
        raise RunDirError(f"{self.directory} is in use by a run on another host: {holder}, its lock refreshed "
                          f"{age:.0f} s ago. A lock from another host is taken over once it is "
                          f"{FOREIGN_LOCK_TIMEOUT_S / 60:.0f} minutes old, or with --overwrite")

    def acquire(self) -> None:
        """Take the lock (creating the directory), or raise a :class:`RunDirError` naming the holder."""
        self._made = []
        for folder in (self.directory, *self.directory.parents):
            if folder.exists():
                break
            self._made.append(folder)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, locked = self._open_locked()
        try:
            holder = self._read(fd)
            if holder is not None:
                reason = self._gone(holder, locked, fd)
                log.warning("taking over the lock of %s left by %s: %s", self.directory, holder, reason)
            me = LockHolder(os.getpid(), socket.gethostname(), _boot_id(), time.strftime("%Y-%m-%d %H:%M:%S %z"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="pygml-run-lock", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except (OSError, TypeError):
                pass  # the directory is gone or the lock released: the run's own writes report it

    def release(self) -> None:
        """Give the lock back (delete the file, unless another process took it over, and the folders
        :meth:`acquire` created if nothing else was written to them); harmless when not held."""
        if self._fd is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        holder = self._read(self._fd)
        try:
            if holder is not None and (holder.pid, holder.host) == (os.getpid(), socket.gethostname()):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the directory was removed: nothing to release
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break  # the run wrote files there (or the folder is gone): keep it
        self._made = []

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, new value)`` of every dotted key whose value differs between two plain-dict
    configs (``None`` for a key one of them lacks), in key order; :data:`SILENT_KEYS` left out."""
    a, b = _flatten(stored), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not k.startswith(SILENT_KEYS)]


def check_resumed_config(stored: dict[str, Any], cfg: Any, source: Path, *, allow_changes: bool = False) -> None:
    """Log how ``cfg`` differs from the config ``stored`` with a run's checkpoint (``source``); a
    :class:`ConfigError` when a change outside :data:`FREE_KEYS` alters the run and ``allow_changes`` is not
    set."""
    changes = config_changes(config_to_dict(config_from_dict(stored)), config_to_dict(cfg))
    if not changes:
        return
    shown = [f"{key}: {old!r} → {new!r}" for key, old, new in changes]
    log.warning("resuming %s with a config that differs from the run's:\n  %s", source, "\n  ".join(shown))
    altering = [line for line, (key, _, _) in zip(shown, changes) if not key.startswith(FREE_KEYS)]
    if altering and not allow_changes:
        raise ConfigError(f"resuming {source} with config changes that alter the run ({'; '.join(altering)}): "
                          f"keep the run's values (in {source.parent / 'config.yaml'}), or pass "
                          "--allow-config-change to continue the run with the new ones")


@dataclass
class OpenedRun:
    """:func:`open_run`'s decision: whether the run continues its checkpoint (rank 0 holds it loaded)."""

    path: Path
    resume: bool
    checkpoint: Optional[dict[str, Any]] = None


def _decide(cfg: Any, mode: str, overwrite: bool, allow_config_change: bool) -> OpenedRun:
    out = Path(cfg.train.out_dir)
    path = out / "checkpoint.pt"
    if overwrite and mode != "never":
        raise ConfigError("--overwrite starts a run afresh and --resume continues it: give one of them")
    if mode == "must" or (mode == "auto" and path.exists()):
        ckpt = load_checkpoint(path, method=cfg.method)
        check_resumed_config(ckpt["config"], cfg, path, allow_changes=allow_config_change)
        return OpenedRun(out, True, ckpt)
    if path.exists():
        if not overwrite:
            raise RunDirError(f"{out} holds a run (its checkpoint.pt): continue it with --resume (or --resume "
                              "auto), start it afresh with --overwrite (its run files are deleted), or give "
                              "train.out_dir another directory")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        log.warning("--overwrite: deleted the run files of %s (%s)", out, ", ".join(RUN_FILES))
    return OpenedRun(out, False)


@contextmanager
def open_run(cfg: Any, mode: str = "never", *, overwrite: bool = False,
             allow_config_change: bool = False) -> Iterator[OpenedRun]:
    """Open ``cfg.train.out_dir`` for training: rank 0 takes the lock (held until the ``with`` block ends)
    and decides (see the module's docstring); every rank gets the decision, or raises the error rank 0
    raised, so no rank waits for one that failed. A collective under torchrun."""
    lock = None
    decision: Any = None
    if distributed.is_main():
        try:
            lock = RunLock(cfg.train.out_dir, take_foreign=overwrite)
            lock.acquire()
            decision = _decide(cfg, mode, overwrite, allow_config_change)
        except Exception as exc:
            if lock is not None:
                lock.release()
            distributed.broadcast_object(f"{type(exc).__name__}: {exc}")
            raise
    shared = distributed.broadcast_object(None if decision is None else decision.resume)
    if isinstance(shared, str):
        raise RunDirError(f"rank 0 could not open {cfg.train.out_dir} (it reports why): {shared}")
    try:
        yield decision or OpenedRun(Path(cfg.train.out_dir), bool(shared))
    finally:
        if lock is not None:
            lock.release()


__all__ = ["FOREIGN_LOCK_TIMEOUT_S", "FREE_KEYS", "HEARTBEAT_S", "LOCK_FILE", "LockHolder", "OpenedRun",
           "RUN_FILES", "RunDirError", "RunLock", "check_resumed_config", "config_changes",
           "open_run", "resume_mode"]
