"""Methods: each composes a backbone, graph layers and a loss behind the :class:`Method` interface."""

from pygml.methods.base import METHODS, Method, build_method, register_method
from pygml.methods import baseline  # noqa: F401  (registers "baseline")

__all__ = ["METHODS", "Method", "build_method", "register_method"]
