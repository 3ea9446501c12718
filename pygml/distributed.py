"""Several processes with ``torch.distributed``, set up from ``torchrun``'s environment variables.

World size 1 (a plain ``python train.py``) needs no process group: every helper here is then the
identity, so single-process code never branches on it.

:func:`all_gather_with_grad` concatenates a tensor's rows from every rank in rank order. Its backward
sums the incoming gradient over ranks and returns each rank the slice of its own rows. Under DDP, which
averages gradients over the W ranks, a loss computed on the gathered global batch then gives every
parameter the gradient of that loss on one process holding the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun with more than one process."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.size(0)], device=x.device))
        sizes = [int(s) for s in sizes]
        width = max(sizes)
        padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.size(0)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order; gradients flow back to their owners.

    Identity when no process group is running. Integer tensors (labels) are gathered without autograd.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not x.is_floating_point():
        with torch.no_grad():
            return _AllGather.forward(type("Ctx", (), {})(), x)
    return _AllGather.apply(x)
