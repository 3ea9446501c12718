"""Preemption: SIGTERM or SIGUSR1 ends a training run at the next optimiser-step boundary, with a checkpoint.

Cluster schedulers announce the end of a job with a signal: SLURM sends SIGTERM when it preempts or
cancels a job (and SIGKILL after its grace time), and the signal chosen with ``--signal`` (often SIGUSR1)
before the time limit; torchrun passes SIGTERM on to its workers. While :func:`train` runs, those
signals only set a flag (:class:`PreemptionSignals`). At the end of each optimiser step the ranks agree
on the flag (:func:`pygml.app.distributed.ranks_where`), so a signal received by one rank stops all of
them after the same step and none waits in a collective for a rank that left. The run then writes a
checkpoint, logs "preempted at step N" and raises :class:`Preempted`; the command-line tools exit with
:data:`EXIT_PREEMPTED` on every rank, and the same command with ``--resume auto`` continues the run.

Ctrl-C (SIGINT) is not a preemption: it stops the run at once, as :class:`Interrupted`, whose message says
where the last checkpoint is.

Data-loader worker processes ignore these signals (:func:`ignore_in_worker`): the main process decides
when to stop and shuts its workers down.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

from pygml.app import distributed

#: the signals that stop a run at the next step boundary
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: exit status of a preempted run: ``EX_TEMPFAIL`` of sysexits.h, "try again later"
EXIT_PREEMPTED = 75
#: exit status of a run stopped by Ctrl-C (SIGINT), the shell's 128 + 2
EXIT_INTERRUPTED = 130


class Preempted(Exception):
    """The run stopped on a preemption signal after writing a checkpoint; the same command with
    ``--resume auto`` continues it."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at once (no checkpoint is written); the message says where the last one is."""

    exit_code = EXIT_INTERRUPTED


class PreemptionSignals:
    """Records SIGTERM and SIGUSR1 while installed (``with PreemptionSignals() as signals:``), restoring
    the previous handlers on exit. Outside the main thread, where Python cannot install handlers, it
    records nothing."""

    def __init__(self) -> None:
        self.received: Optional[str] = None  # the name of the first signal received
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self) -> Optional[str]:
        """The signal that stops the run, when any rank received one, else ``None``: the same answer on
        every rank (a collective: every rank must call it at the same point)."""
        ranks = distributed.ranks_where(self.received is not None)
        if not ranks:
            return None
        return self.received or f"a signal to rank {ranks[0]}"


def ignore_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training loader: its worker processes ignore the preemption signals."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


__all__ = ["EXIT_INTERRUPTED", "EXIT_PREEMPTED", "Interrupted", "Preempted", "PreemptionSignals", "SIGNALS",
           "ignore_in_worker"]
