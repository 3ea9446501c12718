"""ProxyGML loss, forward + backward at B = 32, d = 512.

* The paper's settings, SOP (11,318 classes × 1 proxy, k = 566, λ = 0) and CUB (100 × 12, k = 60,
  λ = 0.3), against the dense reference: the equations as written, with dense matrices: the B × CN mask
  and W = mask ⊙ S, Z = W Y_p with the dense CN × C label matrix, the masked softmax, and
  L_p = CE((P Pᵀ) Y_p). Target: at most 1.2× its time.
* Beyond: 11,318 × 12 proxies (k = 6,791) with the chunked exact regulariser, where (P Pᵀ) alone would be
  74 GB, and 1,000,000 × 1 proxies (k = 50,000) with the batch regulariser. No reference fits in memory:
  time and the peak resident memory of a fresh process per case are reported.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import format_table, row, timeit
from pygml.losses import ProxyGMLLoss

BATCH, DIM = 32, 512


def dense_reference(x: Tensor, proxies: Tensor, labels: Tensor, label_matrix: Tensor, k: int, lam: float) -> Tensor:
    """ProxyGML straight from the equations with dense matrices (label_matrix = Y_p, CN × C)."""
    xn, pn = F.normalize(x, dim=1), F.normalize(proxies, dim=1)
    sim = xn @ pn.t()
    s_pos = label_matrix[:, labels].t()
    keys = sim.detach() + 3 * s_pos  # cosines lie in [-1, 1]: a shift of 3 ranks own proxies first
    mask = torch.zeros_like(sim).scatter_(1, keys.topk(k, dim=1).indices, 1.0)
    z = (mask * sim) @ label_matrix
    logits = z.masked_fill(mask @ label_matrix == 0, -math.inf)
    loss = F.cross_entropy(logits, labels)
    if lam > 0:
        proxy_labels = label_matrix.argmax(dim=1)
        loss = loss + lam * F.cross_entropy((pn @ pn.t()) @ label_matrix, proxy_labels)
    return loss


def _inputs(num_classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, DIM, generator=g).requires_grad_(True)
    labels = torch.randint(0, num_classes, (BATCH,), generator=g)
    return x, labels


def _step(fn, x: Tensor, params: list[Tensor]):
    def run() -> None:
        for t in (x, *params):
            t.grad = None
        fn().backward()
    return run


def paired_medians(first, second, repeat: int) -> tuple[float, float]:
    """Median wall times of two functions timed in alternation (after one warm-up call each), so that a
    change in the machine's load during the run affects both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return tuple(sorted(t)[len(t) // 2] for t in times)


def compare(name: str, num_classes: int, per_class: int, lam: float, repeat: int) -> dict:
    """Our loss against the dense reference, same inputs, same process."""
    torch.manual_seed(0)
    loss = ProxyGMLLoss(num_classes, DIM, per_class, 0.05, lam)
    x, labels = _inputs(num_classes)
    label_matrix = F.one_hot(loss.proxy_labels, num_classes).float()
    proxies = loss.proxies
    ours, ref = paired_medians(
        _step(lambda: loss(x, labels), x, [proxies]),
        _step(lambda: dense_reference(x, proxies, labels, label_matrix, loss.k, lam), x, [proxies]), repeat)
    return row(f"proxygml {name} {num_classes}x{per_class} k={loss.k} fwd+bwd", ours, ref, 1.2,
               reference_name="dense equations (mask, W, Y_p, P Pᵀ)")


SCALE_CASES = {
    "11318x12 chunked L_p": dict(num_classes=11318, per_class=12, regularizer="chunked"),
    "1000000x1 batch L_p": dict(num_classes=1_000_000, per_class=1, regularizer="batch"),
    "11318x12 batch L_p": dict(num_classes=11318, per_class=12, regularizer="batch"),
}


def child(case: str, repeat: int) -> None:
    """Run one scale case in this (fresh) process; print its time and peak resident memory as JSON."""
    spec = SCALE_CASES[case]
    torch.manual_seed(0)
    loss = ProxyGMLLoss(spec["num_classes"], DIM, spec["per_class"], 0.05, 0.3, regularizer=spec["regularizer"])
    x, labels = _inputs(spec["num_classes"])
    seconds = timeit(_step(lambda: loss(x, labels), x, [loss.proxies]), repeat=repeat, warmup=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "k": loss.k}))


def scale(case: str, repeat: int) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "bench.bench_proxygml", "--child", case, str(repeat)],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    name = f"proxygml {case} k={res['k']} fwd+bwd"
    return [row(name, res["seconds"], None, None, reference_name="dense form does not fit in memory"),
            row(f"{name}: peak RSS", res["peak_bytes"], None, None, unit="B",
                reference_name="whole fresh process, torch included")]


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [compare("CUB", 100, 12, 0.3, repeat=3)]
    rows = [compare("SOP", 11318, 1, 0.0, repeat=5), compare("CUB", 100, 12, 0.3, repeat=10)]
    for case in SCALE_CASES:
        rows.extend(scale(case, repeat=1))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        started = time.perf_counter()
        print(format_table(run("--quick" in sys.argv)))
        print(f"({time.perf_counter() - started:.0f} s)")
