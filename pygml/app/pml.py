"""pytorch-metric-learning's losses and miners by name (``loss.name=pml:MultiSimilarityLoss``), an optional extra.

A PML loss is called as ``loss(embeddings, labels, indices_tuple)``; :class:`PMLLoss` puts it, with an
optional miner, behind pygml's ``loss(embeddings, labels)``. Its parameters (e.g. ProxyAnchor's proxies)
are the module's, so they train and are checkpointed like any loss's.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Optional

from torch import Tensor, nn

from pygml.app.config import ConfigError


def _pml(kind: str) -> Any:
    try:
        if kind == "losses":
            from pytorch_metric_learning import losses as module
        else:
            from pytorch_metric_learning import miners as module
    except ImportError:
        raise ConfigError("pml: losses and miners need pytorch-metric-learning: pip install 'pygml[pml]'") from None
    return module


def _resolve(kind: str, key: str, name: str) -> type:
    if not name.startswith("pml:"):
        raise ConfigError(f"config key '{key}' is {name!r}; a pytorch-metric-learning {kind[:-1]} is named pml:<Class>")
    module = _pml(kind)
    cls = getattr(module, name[len("pml:"):], None)
    if not isinstance(cls, type):
        known = sorted(n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("Base"))
        close = difflib.get_close_matches(name[len("pml:"):], known, n=3)
        hint = f"did you mean {' or '.join(f'pml:{c}' for c in close)}? " if close else ""
        raise ConfigError(f"config key '{key}' is {name!r}: pytorch_metric_learning.{kind} has no such class; "
                          f"{hint}it has {', '.join(known)}")
    return cls


def _instantiate(cls: type, key: str, options: dict[str, Any]) -> Any:
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key '{key}': {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"
                          f" failed: {err}") from None


class PMLLoss(nn.Module):
    """A pytorch-metric-learning loss (and miner) called as ``loss(embeddings, labels)``."""

    def __init__(self, loss: nn.Module, miner: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def pml_loss(name: str, num_classes: int, embedding_dim: int, options: dict[str, Any],
             miner: Optional[str] = None, miner_options: Optional[dict[str, Any]] = None) -> PMLLoss:
    """``pytorch_metric_learning.losses.<name>(**options)`` (``name`` = ``pml:<Class>``), given
    ``num_classes`` and ``embedding_size`` when it takes them and the options do not set them, with the
    miner ``pml:<Class>`` of ``miner``."""
    cls = _resolve("losses", "loss.name", name)
    params = inspect.signature(cls).parameters
    options = dict(options)
    if "num_classes" in params:
        options.setdefault("num_classes", num_classes)
    if "embedding_size" in params:
        options.setdefault("embedding_size", embedding_dim)
    loss = _instantiate(cls, "loss.options", options)
    mined = None
    if miner is not None:
        mined = _instantiate(_resolve("miners", "miner.name", miner), "miner.options", dict(miner_options or {}))
    return PMLLoss(loss, mined)


__all__ = ["PMLLoss", "pml_loss"]
