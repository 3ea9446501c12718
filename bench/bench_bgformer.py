"""BGFormer's layers against dense attention and PyG's ``TransformerConv``, and their share of a step.

Full size: B = 405 rows (45 classes × 9), visual kNN graph with K = 30 (+ self loops, as the method
builds it), 384 channels (ViT-S), 6 heads; every time is forward + backward (``out.sum().backward()``),
the median of several runs, all contenders measured in this process on the same rows and edges, taking
turns run by run so that a load from elsewhere on the machine falls on all of them alike:

* ``SSAConv`` (``kernel="auto"``: the dense kernel at this size) against (a) dense masked attention,
  ``torch.nn.MultiheadAttention`` with a boolean mask of the same graph, and (b) PyG's
  ``TransformerConv`` (6 heads × 64, no root weight) on the same ``edge_index``;
* ``SSAConv`` with the edge-wise kernel against ``TransformerConv`` (for the record, no target);
* ``SSAConv(top_k=K)``, the authors' attention graph (each head keeps the K highest logits among all B
  tokens: the full batch graph as candidates), against the same computed densely as the authors' block
  does it: qkv projection, q·kᵀ, ``topk``, softmax over the kept logits, product with v, projection;
* the whole ``BGFormerBlock`` against a dense pre-norm ``nn.TransformerEncoderLayer`` of the same size
  and mask (no target);
* the share of a training step: the graph part (``batch_graph`` + one block + the head on both row
  sets + both losses) at B = 405 on ResNet-50 features (2048-d, 8 heads), against the whole step,
  i.e. the graph part plus ResNet-50 forward + backward on 405 images of 227². That backbone step is
  far too slow for a 2-core CPU, so it is *estimated*: ResNet-50 forward + backward is measured on a
  batch of ``RESNET_BATCH`` images of 227² and scaled linearly to 405 images. A larger batch runs at
  least as efficiently per sample, so the estimate may overstate the backbone's time (and understate
  the graph share) by that difference, which is small on a CPU. Target: the graph part ≤ 5 %.

``run(device="cuda")`` runs the same contenders on the GPU, and measures the ResNet-50 step on all 405
images instead of estimating it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch_geometric.nn import TransformerConv

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table, row, timeit  # noqa: E402
from pygml.graph import VISUAL, batch_graph, edges_of_type  # noqa: E402
from pygml.losses import ContrastiveCELoss  # noqa: E402
from pygml.nn import BGFormerBlock, SSAConv  # noqa: E402

RESNET_BATCH = 4


def _fwd_bwd(fn, *leaves: torch.Tensor):
    def step() -> None:
        for t in leaves:
            t.grad = None
        fn().sum().backward()

    return step


def _interleaved(fns: dict, repeat: int) -> dict:
    """Median time of each ``fns[name]()``, the contenders taking turns so that they share the load."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(timeit(fn, repeat=1, warmup=0))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


class DenseTopK(nn.Module):
    """Dense per-head top-K attention: the reference for ``SSAConv(top_k=K)`` on the full batch graph."""

    def __init__(self, c: int, heads: int, k: int) -> None:
        super().__init__()
        self.heads, self.k = heads, k
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape
        q, k, v = self.qkv(x).view(b, 3, self.heads, c // self.heads).permute(1, 2, 0, 3)
        logits = q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5  # (H, B, B)
        top, idx = logits.topk(min(self.k, b), dim=-1)
        attn = torch.full_like(logits, float("-inf")).scatter(-1, idx, top).softmax(dim=-1)
        return self.proj((attn @ v).transpose(0, 1).reshape(b, c))


def _rows(b: int, k: int, c: int, heads: int, repeat: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(b, c, device=device, requires_grad=True)
    y = torch.arange(b, device=device) // 9
    graph = batch_graph(x.detach(), y, k=k)
    edges = edges_of_type(graph, VISUAL)
    full = edges_of_type(batch_graph(x.detach(), y, k=None, label_edges=False), VISUAL)
    blocked = torch.ones(b, b, dtype=torch.bool, device=device)
    blocked[edges[1], edges[0]] = False  # mask[i, j] = True: i may not attend to j

    ssa = SSAConv(c, heads).to(device)
    ssa_sparse = SSAConv(c, heads, kernel="sparse").to(device)
    ssa_topk = SSAConv(c, heads, top_k=k).to(device)
    mha = nn.MultiheadAttention(c, heads).to(device)
    tconv = TransformerConv(c, c // heads, heads=heads, root_weight=False).to(device)
    dense_topk = DenseTopK(c, heads, k).to(device)
    block = BGFormerBlock(c, heads).to(device)
    layer = nn.TransformerEncoderLayer(c, heads, 4 * c, dropout=0.0, activation="gelu", norm_first=True).to(device)
    t = _interleaved({
        "ours": _fwd_bwd(lambda: ssa(x, edges), x),
        "dense": _fwd_bwd(lambda: mha(x, x, x, attn_mask=blocked, need_weights=False)[0], x),
        "tconv": _fwd_bwd(lambda: tconv(x, edges), x),
        "sparse": _fwd_bwd(lambda: ssa_sparse(x, edges), x),
        "topk": _fwd_bwd(lambda: ssa_topk(x, full), x),
        "dense_topk": _fwd_bwd(lambda: dense_topk(x), x),
        "block": _fwd_bwd(lambda: block(graph), x),
        "layer": _fwd_bwd(lambda: layer(x, src_mask=blocked), x),
    }, repeat)
    t_ours, t_dense, t_tconv, t_sparse, t_block, t_layer, t_topk, t_dense_topk = (
        t[n] for n in ("ours", "dense", "tconv", "sparse", "block", "layer", "topk", "dense_topk"))

    size = f"B={b} K={k} C={c} H={heads}" + ("" if device.type == "cpu" else f", {device.type}")
    return [
        row(f"SSAConv fwd+bwd, {size}", t_ours, t_dense, 1.0, reference_name="dense masked nn.MultiheadAttention"),
        row(f"SSAConv fwd+bwd, {size}", t_ours, t_tconv, 1.2, reference_name="PyG TransformerConv"),
        row(f"SSAConv kernel=sparse fwd+bwd, {size}", t_sparse, t_tconv, None, reference_name="PyG TransformerConv"),
        row(f"SSAConv top_k={k} fwd+bwd, full batch graph, {size}", t_topk, t_dense_topk, 1.2,
            reference_name="dense top-K attention (qkv, q·kᵀ, topk, softmax)"),
        row(f"BGFormerBlock fwd+bwd, {size}", t_block, t_layer, None,
            reference_name="dense pre-norm nn.TransformerEncoderLayer"),
    ]


def _share_row(b: int, k: int, dim: int, heads: int, resnet_batch: int, side: int, repeat: int,
               device: torch.device) -> dict:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    f = torch.randn(b, dim, device=device, requires_grad=True)
    y = torch.arange(b, device=device) // 9
    block = BGFormerBlock(dim, heads).to(device)
    head = nn.Linear(dim, 128).to(device)
    loss = ContrastiveCELoss(0.2)

    def graph_part() -> torch.Tensor:
        h = block(batch_graph(f, y, k=k))
        return 0.5 * loss(head(f), y) + 0.5 * loss(head(h), y)

    t_graph = timeit(_fwd_bwd(graph_part, f), repeat=repeat)
    net = resnet50(weights=None).to(device)
    images = torch.rand(resnet_batch, 3, side, side, device=device)
    t_net = timeit(_fwd_bwd(lambda: net(images), images), repeat=max(1, repeat // 2)) * b / resnet_batch
    measured = "measured" if resnet_batch == b else f"measured on {resnet_batch} images ×{b / resnet_batch:g}"
    name = f"graph part of a ResNet-50 step, B={b} at {side}²" + (
        "" if resnet_batch == b else " (est.)") + ("" if device.type == "cpu" else f", {device.type}")
    return row(name, t_graph, t_graph + t_net, 0.05, reference_name=f"whole step: graph + ResNet-50 {measured}")


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """The rows at full (or ``quick``) size on ``device``; on CUDA the backbone step is measured on the
    whole batch."""
    dev = torch.device(device)
    if quick:
        return _rows(64, 8, 64, 4, repeat=2, device=dev) + [_share_row(36, 8, 2048, 8, 1, 64, repeat=1, device=dev)]
    resnet_batch = 405 if dev.type == "cuda" else RESNET_BATCH
    return _rows(405, 30, 384, 6, repeat=15, device=dev) + [
        _share_row(405, 30, 2048, 8, resnet_batch, 227, repeat=4, device=dev)]


if __name__ == "__main__":
    print(format_table(run()))
