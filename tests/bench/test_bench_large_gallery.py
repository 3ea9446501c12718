"""bench/bench_large_gallery.py: the quick run's exhaustive IVF rows lose nothing, its compressed indexes
are small."""


def test_large_gallery_benchmark_quick_run(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))  # the repository root holds bench/
    from bench.bench_large_gallery import run

    rows = {r["name"]: r for r in run(quick=True)}
    losses = [r for name, r in rows.items() if "Flat nprobe=64" in name and "loss" in name]
    assert len(losses) == 4  # every list visited: Recall@1 and @10 of both sets
    assert all(abs(r["ours"]) < 1e-9 for r in losses)
    sizes = [r for name, r in rows.items() if "index size" in name]
    assert sizes and all(r["ratio"] < 0.2 for r in sizes)
