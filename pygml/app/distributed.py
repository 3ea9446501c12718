"""Several processes with ``torch.distributed``, set up from ``torchrun``'s environment variables.

World size 1 (a plain ``python train.py``) needs no process group: every helper here is then the
identity, so single-process code never branches on it.

:func:`all_gather_with_grad` concatenates a tensor's rows from every rank in rank order. Its backward
sums the incoming gradient over ranks and returns each rank the slice of its own rows. Under DDP, which
averages gradients over the W ranks, a loss computed on the gathered global batch then gives every
parameter the gradient of that loss on one process holding the whole batch.

Agreement: :func:`ranks_where` tells every rank which ranks raised a flag (a non-finite loss, a
preemption signal), so that all of them take the same branch and none waits in a collective for a
rank that left; :func:`broadcast_object` and :func:`gather_objects` carry rank 0's decisions and every
rank's random state.

Evaluation: :func:`shard` gives each rank a contiguous share of a dataset to embed, and
:func:`gather_rows` collects the rows on rank 0 only, which evaluates. :class:`SyncBatchNorm` (through
:func:`convert_sync_batchnorm`) computes BatchNorm statistics over the global batch, on CUDA (torch's
kernels) and on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

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
        timeout = timedelta(minutes=30)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's agent keeps its store across the restarts of an elastic run: the workers of each
        # restart meet under a prefix of their own, never at the addresses a dead worker left there
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"pygml/restart{restart}", store), rank=rank,
                                world_size=world_size, timeout=timeout)
    return info


def init_on(device: torch.device) -> tuple[DistInfo, torch.device]:
    """:func:`init`, and the device this process works on: ``cuda:LOCAL_RANK`` (made current) when
    ``device`` is CUDA and several processes run, else ``device``."""
    info = init(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def running() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if running() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if running() else 0


def is_main() -> bool:
    """Whether this process is rank 0 (or the only process)."""
    return not running() or dist.get_rank() == 0


def shard(n: int) -> range:
    """This rank's contiguous share of ``range(n)``: shares differ by at most one item, in rank order,
    so concatenating every rank's rows in rank order restores the original order."""
    if not running():
        return range(n)
    world, rank = dist.get_world_size(), dist.get_rank()
    return range(n * rank // world, n * (rank + 1) // world)


def _comm_device() -> torch.device:
    """Where a collective takes its tensors: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; ``obj`` itself without a process group."""
    if not running():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> Optional[list[Any]]:
    """Every rank's ``obj`` in rank order on rank ``dst``, ``None`` on the others; ``[obj]`` without a
    process group."""
    if not running():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def ranks_where(flag: bool) -> list[int]:
    """The ranks on which ``flag`` is true, the same list on every rank (one small all-gather): how ranks
    agree to take the same branch before a collective. ``[0]`` or ``[]`` without a process group."""
    if not running():
        return [0] if flag else []
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=_comm_device())
    flags[dist.get_rank()] = int(flag)
    dist.all_reduce(flags)
    return [int(r) for r in torch.nonzero(flags).flatten().tolist()]


def _padded(x: Tensor) -> tuple[Tensor, list[int]]:
    """``x`` padded with zero rows to the largest row count of any rank, and every rank's row count."""
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.size(0)], device=x.device))
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.size(0)] = x
    return padded, counts


def gather_rows(x: Tensor, dst: int = 0) -> Optional[Tensor]:
    """Rows of ``x`` from every rank concatenated in rank order, on rank ``dst`` (on ``x``'s device);
    ``None`` on the other ranks. Ranks may hold different row counts. ``x`` itself without a process group.

    Unlike an all-gather, only ``dst`` ever holds the whole set: used to collect embeddings for evaluation.
    """
    if not running():
        return x
    padded, counts = _padded(x.detach().to(_comm_device()))
    if dist.get_rank() != dst:
        dist.gather(padded.contiguous(), None, dst=dst)
        return None
    parts = [torch.empty_like(padded) for _ in counts]
    dist.gather(padded.contiguous(), parts, dst=dst)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(x.device)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        padded, sizes = _padded(x)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
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
    if not running():
        return x
    if not x.is_floating_point():
        with torch.no_grad():
            return _AllGather.forward(type("Ctx", (), {})(), x)
    return _AllGather.apply(x)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of every rank's rows together, on any device.

    ``torch.nn.SyncBatchNorm`` runs on CUDA only (DDP refuses it on the CPU); this one takes its
    statistics with two all-reduces, with gradients flowing across ranks, so gloo runs on the CPU
    normalise as one process holding the combined batch would, running statistics included (biased
    variance to normalise, unbiased in the running estimate). In eval mode, or in a single process,
    it is plain BatchNorm. :func:`convert_sync_batchnorm` chooses torch's layer for CUDA modules.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm takes (N, C, ...) inputs, got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and running()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor(float(input.numel() // input.size(1)), dtype=torch.float64)
        dist.all_reduce(count)
        if count.item() <= 1:
            raise ValueError(f"SyncBatchNorm needs more than 1 value per channel in training, got {int(count)} "
                             "over every rank")
        n = count.item()
        mean = _AllReduceSum.apply(input.sum(dims)) / n
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm layer synchronised across ranks, in place below the top: torch's
    ``SyncBatchNorm`` (fused CUDA kernels) when the module lives on CUDA, :class:`SyncBatchNorm` otherwise.
    The new layers share the old ones' parameters and buffers, so optimisers, checkpoints (same keys) and
    frozen layers (eval mode, no gradient: never synchronised) carry over."""
    first = next(iter(module.parameters()), None)
    if first is not None and first.is_cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        new = _convert_cpu(child)
        if new is not child:
            setattr(module, name, new)
    return module
