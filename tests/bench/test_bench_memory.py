"""The memory benchmark's estimate: tracing a step without data counts what running it counts."""

import pytest

pytest.importorskip("torch.distributed._tools.mem_tracker")


@pytest.fixture
def bench_memory(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))  # the repository root holds bench/
    import bench.bench_memory as module

    return module


def test_fake_trace_counts_the_bytes_of_a_real_step(bench_memory):
    from pygml.app.config import load_config

    for frozen in ("false", "true"):
        cfg = load_config(None, ["model.backbone=small_cnn", "model.width=8", f"model.frozen_bn={frozen}",
                                 "train.classes_per_batch=3", "train.samples_per_class=2", "data.image_size=32"])
        fake, fake_out = bench_memory.backbone_peak(cfg, fake=True)
        real, real_out = bench_memory.backbone_peak(cfg, fake=False)
        assert fake_out == real_out == 6 * cfg.model.width * 8 * 4  # (B, channels of the last stage) float32
        assert fake == real > 0


def test_quick_run_graph_methods_cost_at_least_the_baseline(bench_memory):
    rows = bench_memory.run(quick=True, settings=bench_memory.SETTINGS[:1])
    assert len(rows) == 1
    r = rows[0]
    assert r["unit"] == "B" and r["ours"] > 0 and r["reference"] > 0
    assert r["ratio"] > 1.0  # the MPN adds parameters, their optimiser state and activations
