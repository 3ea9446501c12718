"""The application: reads a run config and turns it into library objects, trains, evaluates and reports.

The only part of pygml that knows the run config. ``register_method`` and its siblings add user parts to
the registries the config names them from (see :mod:`pygml.app.registry`).
"""

from pygml.app import builtins  # noqa: F401  (enters the built-in parts in the registries)
from pygml.app.config import ConfigError, load_config
from pygml.app.registry import (BACKBONES, DATASETS, LOSSES, METHODS, register_backbone, register_dataset,
                                register_loss, register_method)

__all__ = ["BACKBONES", "ConfigError", "DATASETS", "LOSSES", "METHODS", "load_config", "register_backbone",
           "register_dataset", "register_loss", "register_method"]
