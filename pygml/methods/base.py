"""The method interface: the only thing the engine knows about a method.

A method is a :class:`torch.nn.Module` with

* ``embed(images) -> (B, d)``: the L2-normalised test embedding (no batch graph at test time);
* ``forward(images, labels) -> (loss, logs)``: the training loss and a dict of scalars to log;
* ``param_groups()``: optimiser parameter groups (``name`` and optional ``lr`` keys), so proxies or
  graph blocks get their own learning rate;
* ``set_epoch(epoch)``: called by the engine before each epoch (0-based), e.g. for warm-up.

Methods register themselves with :func:`register_method` and are built with :func:`build_method`.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from pygml.config import Config

Gather = Callable[[Tensor], Tensor]


class Method(nn.Module):
    """Base class of every pygml method."""

    #: registry name (``method`` key of the config); set by :func:`register_method`
    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: optional autograd-aware all-gather across ranks, set by the engine under DDP with
        #: ``train.cross_rank_graph``; a method that builds a batch graph calls it on its rows
        self.gather: Optional[Gather] = None

    def embed(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimiser; the default is one group with every parameter."""
        return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad]}]

    def set_epoch(self, epoch: int) -> None:
        """Hook called by the engine before each epoch (0-based)."""

    def gather_rows(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """All-gather ``x`` and ``labels`` across ranks when a cross-rank graph is asked for."""
        if self.gather is None:
            return x, labels
        return self.gather(x), self.gather(labels)


METHODS: dict[str, Callable[[Config, int], Method]] = {}


def register_method(name: str):
    """Class decorator: ``@register_method("baseline")``; the class is built as ``cls(cfg, num_classes)``."""

    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def build_method(cfg: Config, num_classes: int) -> Method:
    """Build the method named by ``cfg.method`` for ``num_classes`` training classes."""
    import pygml.methods  # noqa: F401  (registers the built-in methods)

    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; registered: {', '.join(sorted(METHODS))}")
    if num_classes < 2:
        raise ValueError(f"a method needs at least 2 training classes, got {num_classes}")
    return METHODS[cfg.method](cfg, num_classes)
