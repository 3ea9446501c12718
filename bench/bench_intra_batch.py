"""Intra-batch attention (pygml.nn.IntraBatchAttention) against torch's nn.MultiheadAttention, same maths.

Forward + backward in training mode (dropout 0.1) on a batch of B = 90 rows (SOP's 15 classes × 6),
512 channels, 8 heads. The reference is ``nn.MultiheadAttention(add_zero_attn=True)``: appending a zero
key and a zero value is exactly the implicit zero logit. It is called with ``need_weights=False`` (its
fastest path) and, on the kNN graph, with the graph's boolean mask. Graphs come from
``pygml.graph.batch_graph`` (visual edges only): fully connected with self loops (the paper), and the
visual kNN graph with k = 10 plus self loops.

Rows: the layer with its automatic kernel choice (target ≤ 1.5× the reference on the full graph), and
the edge-wise MessagePassing kernel forced, to show what the dense kernel buys. Both sides of a row are
timed alternately in the same process, so machine load affects both alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.common import format_table, row, timeit
from pygml.graph import VISUAL, batch_graph, edges_of_type
from pygml.nn import IntraBatchAttention

REFERENCE = "nn.MultiheadAttention(add_zero_attn), dense"


def _alternating_medians(fns: list, repeat: int) -> list[float]:
    """Median time of each function, calling them in turn ``repeat`` times after one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for t, fn in zip(times, fns):
            t.append(timeit(fn, repeat=1, warmup=0))
    return [sorted(t)[len(t) // 2] for t in times]


def _step(module, x: Tensor, *args, **kwargs):
    def fn():
        out = module(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
        x.grad = None

    return fn


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    """The rows at full (or ``quick``) size on ``device`` (by default CUDA where available, else the CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classes, per_class, channels, heads, k = (4, 3, 64, 4, 3) if quick else (15, 6, 512, 8, 10)
    repeat = 1 if quick else 40
    n = classes * per_class
    torch.manual_seed(0)
    x = torch.randn(n, channels, device=device, requires_grad=True)
    labels = torch.arange(classes, device=device).repeat_interleave(per_class)
    graphs = {
        "full graph": edges_of_type(batch_graph(x, labels, k=None, label_edges=False), VISUAL),
        f"kNN graph k={k}": edges_of_type(batch_graph(x, labels, k=k, label_edges=False), VISUAL),
    }
    ours = IntraBatchAttention(channels, heads, dropout=0.1).to(device).train()
    edgewise = IntraBatchAttention(channels, heads, dropout=0.1, kernel="sparse").to(device).train()
    reference = nn.MultiheadAttention(channels, heads, dropout=0.1, add_zero_attn=True,
                                      batch_first=True).to(device).train()
    xb = x.unsqueeze(0)
    rows = []
    for graph_name, edge_index in graphs.items():
        allowed = torch.zeros(n, n, dtype=torch.bool, device=device)
        allowed[edge_index[1], edge_index[0]] = True
        mask = None if bool(allowed.all()) else ~allowed
        ref_fn = _step(reference, x, xb, xb, xb, attn_mask=mask, need_weights=False)
        t_ours, t_edge, t_ref = _alternating_medians(
            [_step(ours, x, x, edge_index), _step(edgewise, x, x, edge_index), ref_fn], repeat)
        kernel = "dense" if ours.use_dense(n, edge_index.size(1)) else "edge-wise"
        size = f"B={n}, {channels} ch, {heads} heads, {graph_name}, fwd+bwd" + ("" if device.type == "cpu" else
                                                                              f", {device.type}")
        target = 1.5 if graph_name == "full graph" else None
        rows.append(row(f"IntraBatchAttention auto ({kernel}), {size}", t_ours, t_ref, target,
                        reference_name=REFERENCE))
        rows.append(row(f"IntraBatchAttention edge-wise kernel, {size}", t_edge, t_ref, None,
                        reference_name=REFERENCE))
    return rows


if __name__ == "__main__":
    print(format_table(run()))
