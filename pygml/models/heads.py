"""Embedding heads: backbone features → the embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

#: initialisations of :class:`EmbeddingHead`
INITS = ("kaiming", "default", "orthogonal")


class EmbeddingHead(nn.Module):
    """``Linear(in_dim, dim)``; the L2-normalised output is the embedding.

    ``init``: ``"kaiming"`` (Kaiming-normal, fan-out, zero bias), ``"default"`` (torch's ``Linear``
    initialisation, what the Intra-Batch and ProxyGML official codes keep) or ``"orthogonal"``
    (orthogonal weight, zero bias: the BGFormer release's head).

    Shapes: (B, in_dim) → (B, dim).
    """

    def __init__(self, in_dim: int, dim: int, init: str = "kaiming") -> None:
        super().__init__()
        if in_dim < 1 or dim < 1:
            raise ValueError(f"in_dim and dim must be positive, got in_dim={in_dim}, dim={dim}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.fc = nn.Linear(in_dim, dim)  # torch's initialisation: the "default"
        self._init()

    def reset_parameters(self) -> None:
        self.fc.reset_parameters()
        self._init()

    def _init(self) -> None:
        if self.init == "kaiming":
            nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
            nn.init.zeros_(self.fc.bias)
        elif self.init == "orthogonal":
            nn.init.orthogonal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)

    def extra_repr(self) -> str:
        return f"init={self.init!r}"


def l2n(x: Tensor) -> Tensor:
    """Rows divided by their L2 norm."""
    return F.normalize(x, dim=-1)


__all__ = ["EmbeddingHead", "INITS", "l2n"]
