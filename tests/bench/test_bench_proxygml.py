"""bench/bench_proxygml.py: its dense reference computes the loss ProxyGMLLoss computes."""

import torch
import torch.nn.functional as F

from pygml.losses import ProxyGMLLoss


def make_case(C, N, B, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    return x, labels


def test_benchmark_reference_computes_the_same_loss(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))  # the repository root holds bench/
    from bench.bench_proxygml import dense_reference as bench_reference

    for C, N, lam in ((20, 3, 0.3), (30, 1, 0.0)):
        x, labels = make_case(C, N, B=8, d=16, seed=C)
        loss = ProxyGMLLoss(C, 16, N, 0.1, lam).double()
        label_matrix = F.one_hot(loss.proxy_labels, C).double()
        expected = bench_reference(x, loss.proxies, labels, label_matrix, loss.k, lam)
        torch.testing.assert_close(loss(x, labels), expected)
