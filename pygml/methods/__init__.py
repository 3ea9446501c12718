"""Methods: each composes a backbone, graph layers and a loss behind the :class:`Method` interface."""

from pygml.methods.base import METHODS, Method, build_method, register_method
from pygml.methods import baseline  # noqa: F401  (registers "baseline")
from pygml.methods import intra_batch  # noqa: F401  (registers "intra_batch")
from pygml.methods import bgformer  # noqa: F401  (registers "bgformer")
from pygml.methods import proxygml  # noqa: F401  (registers "proxygml")

__all__ = ["METHODS", "Method", "build_method", "register_method"]
