"""Embedding a dataset with a model, in batches: what evaluation, search and export start from."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


@torch.no_grad()
def embed_dataset(fn: Callable[[Tensor], Tensor], dataset: Dataset, *, batch_size: int = 256,
                  device: torch.device | str = "cpu", num_workers: int = 0, progress: bool = True,
                  desc: str = "embed", model: Optional[torch.nn.Module] = None) -> tuple[Tensor, Tensor]:
    """Embeddings (N, d) and labels (N,) of every ``(image, label)`` item of ``dataset``, in order, on the CPU.

    ``fn`` maps a batch of images (on ``device``) to its rows, e.g. ``method.embed``; ``model``, when
    given, is put in eval mode for the pass and restored after. The loader draws from a generator of
    its own, so embedding never touches the global RNG (how often a run evaluates does not change its
    training).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"{desc}: the dataset is empty")
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    embs, labels = [], []
    try:
        for images, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            embs.append(fn(images.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.long))
    finally:
        if model is not None:
            model.train(was_training)
    return torch.cat(embs), torch.cat(labels)


__all__ = ["embed_dataset"]
