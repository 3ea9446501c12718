"""Value checks: the checks that read tensor values (finiteness, index ranges, label ranges).

Shape, dtype and argument checks always run: they read only metadata and cost nothing. Checks that read
the *values* of a tensor copy it, or a reduction of it, from the device to the host, which on a GPU
waits for every queued kernel: run on every call of a layer or a loss they would stall each training
step. They are off by default and on when

* the environment variable ``PYGML_VALUE_CHECKS`` is ``1`` (read at import), or
* ``pygml.checks.set_value_checks(True)`` was called, or inside ``with pygml.checks.value_checks():``.

Turn them on to find where a NaN or an out-of-range index first appears. The training engine's guard
against a non-finite loss does not depend on them: it always runs (one value per step).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

_enabled = os.environ.get("PYGML_VALUE_CHECKS", "") not in ("", "0", "false", "False")


def value_checks_enabled() -> bool:
    """Whether the value-reading checks run."""
    return _enabled


def set_value_checks(enabled: bool) -> None:
    """Turn the value-reading checks on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Turn the value-reading checks on (or off) inside a ``with`` block."""
    before = _enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(before)


__all__ = ["set_value_checks", "value_checks", "value_checks_enabled"]
