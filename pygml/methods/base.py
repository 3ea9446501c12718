"""The method interface: the only thing a training loop needs to know about a method.

A method is a :class:`torch.nn.Module` with

* ``embed(images) -> (B, d)``: the L2-normalised test embedding (no batch graph at test time);
* ``forward(images, labels) -> (loss, logs)``: the training loss and a dict of detached scalars to log;
* ``param_groups()``: optimiser parameter groups (``name`` and optional ``lr`` keys), so proxies or
  graph blocks get their own learning rate;
* ``set_epoch(epoch)``: called before each epoch (0-based), e.g. for a warm-up.

A training loop of twenty lines (``examples/plain_training_loop.py``) needs nothing else.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

Gather = Callable[[Tensor], Tensor]


class Method(nn.Module):
    """Base class of every pygml method."""

    #: whether some trainable parameters may get no gradient in a step (e.g. a frozen warm-up), which
    #: DistributedDataParallel must then be told to look for
    skips_parameters: bool = False

    def __init__(self) -> None:
        super().__init__()
        #: optional autograd-aware all-gather across processes (e.g. ``pygml.app.distributed.all_gather_with_grad``):
        #: a method that builds a batch graph calls it on its rows, so the graph spans the global batch
        self.gather: Optional[Gather] = None

    def embed(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimiser; the default is one group with every trainable parameter."""
        return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad]}]

    def set_epoch(self, epoch: int) -> None:
        """Hook called before each epoch (0-based)."""

    def gather_rows(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` and ``labels`` of every process when :attr:`gather` is set, else as they are."""
        if self.gather is None:
            return x, labels
        return self.gather(x), self.gather(labels)


__all__ = ["Gather", "Method"]
