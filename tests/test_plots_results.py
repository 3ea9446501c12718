import pandas as pd
import pytest
import torch
from PIL import Image

from pygml.graph import batch_graph
from pygml.plots import batch_graph_drawing, recall_curves, retrieval_grid, training_curves
from pygml.results import RUNS, Run, markdown_table, run_all, summary, write_report


def _is_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_plot_files(tmp_path):
    metrics = {"a": {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.8}, "b": {"recall@1": 0.4, "recall@2": 0.7}}
    _is_png(recall_curves(metrics, tmp_path / "r.png"))
    log = pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "test_recall@1": [0.3, 0.5, 0.6]})
    _is_png(training_curves({"a": log}, tmp_path / "t.png"))
    imgs = [torch.rand(3, 16, 16) for _ in range(3)]
    _is_png(retrieval_grid(imgs[:2], [0, 1], [imgs, imgs], [[0, 1, 0], [1, 1, 0]], tmp_path / "g.png"))
    g = batch_graph(torch.randn(12, 4), torch.arange(12) % 3, k=3)
    _is_png(batch_graph_drawing(g, tmp_path / "b.png"))


def test_summary_is_mean_and_std_over_seeds():
    rows = [{"dataset": "d", "run": "r", "seed": s, "train_time_s": 10.0, "recall@1": v, "recall@2": v,
             "recall@4": v, "recall@8": v, "mean_average_precision_at_r": v, "r_precision": v, "NMI": v}
            for s, v in enumerate([0.5, 0.6, 0.7])]
    table = summary(pd.DataFrame(rows))
    assert table.loc[0, "R@1"] == "60.00 ± 10.00"
    assert "| d | r | 3 | 60.00 ± 10.00" in markdown_table(table)


def test_every_run_points_at_a_shipped_config():
    from pathlib import Path

    from pygml.config import load_config

    root = Path(__file__).resolve().parents[1]
    for run in RUNS:
        load_config(root / run.config, list(run.overrides))


@pytest.mark.parametrize("jobs", [2])
def test_results_writer_on_a_small_run(tmp_path, monkeypatch, jobs):
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    runs = [Run("baseline", "configs/baseline/glyphs.yaml"),
            Run("baseline T=0.1", "configs/baseline/glyphs.yaml", ("baseline.temperature=0.1",), "baseline")]
    extra = ["data.name=digits", "data.image_size=16", "model.width=4", "model.embedding_dim=8",
             "train.classes_per_batch=4", "train.epochs=2", "train.max_steps_per_epoch=3"]
    frame = run_all(runs, ["glyphs"], [0, 1], tmp_path / "runs", jobs=jobs, extra=extra)
    assert len(frame) == 4 and set(frame.run) == {"baseline", "baseline T=0.1"}
    report = write_report(frame, tmp_path / "docs" / "results.md", runs=runs, extra=extra, commit="abc123")
    text = report.read_text()
    assert "| baseline | 2 |" in text and "| baseline T=0.1 | 2 |" in text and "abc123" in text
    assert "python train.py --config configs/baseline/glyphs.yaml baseline.temperature=0.1" in text
    _is_png(tmp_path / "docs" / "img" / "recall_glyphs.png")
    _is_png(tmp_path / "docs" / "img" / "training_glyphs.png")
