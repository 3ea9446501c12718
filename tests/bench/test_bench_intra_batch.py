"""bench/bench_intra_batch.py: the quick run measures both the layer and its reference."""


def test_bench_quick_runs(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))  # the repository root holds bench/
    from bench.bench_intra_batch import run

    rows = run(quick=True)
    assert rows and all(r["ours"] > 0 and r["reference"] > 0 for r in rows)
