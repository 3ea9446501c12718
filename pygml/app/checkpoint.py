"""Checkpoints: written atomically, read with ``weights_only=True``, checked before use.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so it loads with
``torch.load(weights_only=True)``. Writing goes to a temporary file in the same folder, flushed to
disk, then renamed over the old checkpoint (:func:`pygml.atomic.atomic_path`, through
:mod:`pygml.app.storage`): a crash or a full disk while writing leaves the previous file intact, and a
half-written file is never at the checkpoint's path.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pygml.app.storage import atomic_write
from pygml.models.weights import fit_state_dict

FORMAT = "pygml-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign, or does not fit the model asked for."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (:func:`pygml.app.storage.atomic_write`) in an existing folder;
    a failed write raises a :class:`~pygml.app.storage.StorageError` naming the path and leaves the previous
    checkpoint whole."""
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Read a pygml checkpoint; with ``method`` given, refuse one written by another method."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file cannot be trusted
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pygml checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this pygml reads {VERSION}")
    if method is not None and state.get("method") != method:
        raise CheckpointError(f"{path} was written by method {state.get('method')!r}, not {method!r}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict`` after checking every key and shape; a mismatch is a :class:`CheckpointError`
    naming the checkpoint and the keys."""
    fit_state_dict(model, state, f"checkpoint {path}", optional=(), error=CheckpointError)


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    internal, version, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
