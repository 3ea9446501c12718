"""Optimisers and the step learning-rate schedule of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

#: the optimisers ``optim.name`` may name, each built from (parameter groups, the optim settings)
OPTIMIZERS: dict[str, Callable[[list[dict], Any], torch.optim.Optimizer]] = {
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay),
    "radam": lambda groups, c: torch.optim.RAdam(groups, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay,
                                                 decoupled_weight_decay=c.decoupled_weight_decay),
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def build_optimizer(settings: Any, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser ``settings.name`` over named parameter groups; a group without ``lr`` gets ``settings.lr``;
    empty groups are dropped."""
    groups = [dict(g, params=list(g["params"])) for g in groups]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr", settings.lr)
    if settings.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser optim.name={settings.name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[settings.name](groups, settings)


@dataclass
class StepSchedule:
    """lr factor of 0-based epoch ``e``: milestones are 1-based epochs from which the factor applies."""

    milestones: list[int]
    gamma: float
    cumulative: bool

    def __call__(self, epoch: int) -> float:
        passed = sum(epoch + 1 >= m for m in self.milestones)
        if not self.cumulative:
            passed = min(passed, 1)
        return self.gamma**passed


def build_scheduler(optimizer: torch.optim.Optimizer, settings: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """The step schedule of ``settings`` (``milestones``, ``gamma``, ``cumulative``), stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepSchedule(list(settings.milestones), settings.gamma, settings.cumulative))


__all__ = ["OPTIMIZERS", "StepSchedule", "build_optimizer", "build_scheduler"]
