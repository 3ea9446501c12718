"""Fixtures shared by the whole suite: the tiny run config, tiny datasets, the scripts under ``scripts/``
and a guard that undoes registrations made by a test.

Test files are imported with ``--import-mode=importlib`` (pyproject.toml), so files of the same name in
different folders need no ``__init__.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# the machines the suite runs on share a few cores: OpenMP threads spinning against other processes make a
# small CNN step hundreds of times slower than one thread. OMP_NUM_THREADS, when set, is respected.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

#: the tiny run: digits at 16 px, a small CNN of width 8 and 16-d embeddings, P×K = 4×4, 5 steps an epoch,
#: no progress bar, Recall@1 and @2, no NMI (seconds per epoch on one core)
TINY_OVERRIDES = (
    "data.name=digits", "data.image_size=16", "model.width=8", "model.embedding_dim=16",
    "train.classes_per_batch=4", "train.samples_per_class=4", "train.max_steps_per_epoch=5",
    "train.progress=false", "eval.recall_at=[1,2]", "eval.nmi=false",
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (it holds ``configs/``, ``bench/``, ``scripts/``, ``train.py``)."""
    return ROOT


def _needs_digits() -> None:
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn (a dev dependency)")


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny run's overrides, for ``train.py`` / ``pygml-train`` command lines (``train.out_dir`` not set)."""
    _needs_digits()
    return list(TINY_OVERRIDES)


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(*overrides, out_dir=None)``: the tiny run's config, written to ``out_dir``
    (``tmp_path`` by default); later overrides win."""
    _needs_digits()
    from pygml.app.config import load_config

    def make(*overrides: str, out_dir: str | Path | None = None):
        return load_config(None, [*TINY_OVERRIDES, f"train.out_dir={out_dir or tmp_path}", *overrides])

    return make


class TensorImages(torch.utils.data.Dataset):
    """``n`` random RGB images (``size`` px) in memory with labels ``i % classes``: a retrieval dataset
    that needs no files."""

    def __init__(self, n: int, classes: int = 5, size: int = 16, seed: int = 7) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = np.arange(n) % classes
        self.class_names = [str(c) for c in range(classes)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


@pytest.fixture
def tensor_images():
    """``tensor_images(n, classes=5, size=16, seed=7)``: a :class:`TensorImages` dataset."""
    return TensorImages


@pytest.fixture(scope="session")
def digits_splits():
    """The digits splits (train classes 0-4, test classes 5-9) at 16 px with the ``small`` test transform."""
    _needs_digits()
    from pygml.data import DatasetSplits, Digits, build_transforms

    _, test_tf = build_transforms("small", 16)
    return DatasetSplits(train=Digits("train", test_tf), query=Digits("test", test_tf))


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: the module ``scripts/<name>.py``, imported from its path (the scripts are not
    part of the package)."""
    cache: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in cache:
            spec = importlib.util.spec_from_file_location(f"pygml_scripts_{name}", ROOT / "scripts" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
            spec.loader.exec_module(module)
            cache[name] = module
        return cache[name]

    return load


@pytest.fixture(autouse=True)
def _no_cli_log_handler():
    """The command-line tools attach a handler to the ``pygml`` logger that writes to the ``sys.stderr`` of the
    moment (a test's capture); it is taken off after each test, so a later test never writes to a closed one."""
    import logging

    yield
    logger = logging.getLogger("pygml")
    for handler in [h for h in logger.handlers if getattr(h, "_pygml", False)]:
        logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture
def restore_registries():
    """Undo what a test adds to the registries, ``sys.path`` and ``sys.modules`` (a user module imported
    with ``--import``, a method registered by hand), so later tests see the built-in parts only."""
    from pygml.app.registry import BACKBONES, DATASETS, LOSSES, METHODS

    registries = (BACKBONES, DATASETS, LOSSES, METHODS)
    saved = [dict(r._entries) for r in registries]
    path, modules = list(sys.path), set(sys.modules)
    yield
    for registry, entries in zip(registries, saved):
        if registry._entries != entries:
            registry._entries = entries
            registry.version += 1  # never reuse a version: derived tables (the config schema) are cached by it
    sys.path[:] = path
    installed = [Path(p).resolve() for p in {ROOT, sys.prefix, sys.base_prefix}]
    for name in set(sys.modules) - modules:  # user modules only: a library imported meanwhile stays
        file = getattr(sys.modules[name], "__file__", None)
        if file and not any(Path(file).resolve().is_relative_to(p) for p in installed):
            del sys.modules[name]


@pytest.fixture
def step_fault(monkeypatch):
    """``step_fault(step, kind)``: the baseline's ``step``-th forward pass (1-based, counted from the patch)
    gives a NaN loss (``kind="nan"``) or raises ``KeyboardInterrupt``, as Ctrl-C would (``"interrupt"``)."""
    from pygml.methods import Baseline

    original = Baseline.forward

    def patch(step: int, kind: str = "nan") -> None:
        calls = {"n": 0}

        def forward(self, images, labels):
            calls["n"] += 1
            if calls["n"] == step and kind == "interrupt":
                raise KeyboardInterrupt
            loss, logs = original(self, images, labels)
            return (loss * float("nan") if calls["n"] == step else loss), logs

        monkeypatch.setattr(Baseline, "forward", forward)

    return patch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device (``scripts/gpu-check.sh`` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def pygml_log_handlers_removed():
    """The command-line tools log through a handler bound to the ``sys.stderr`` of the moment (pytest's capture
    of the test); it is taken off after the test."""
    yield
    logger = logging.getLogger("pygml")
    for handler in [h for h in logger.handlers if getattr(h, "_pygml", False)]:
        logger.removeHandler(handler)
