"""scripts/results.py: the results table (mean ± std over seeds), its runs, and the report of a small run."""

import pandas as pd
import pytest
from PIL import Image

from pygml.app.config import load_config


@pytest.fixture(scope="module")
def results(load_script):
    return load_script("results")


def _is_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_summary_is_mean_and_std_over_seeds(results):
    rows = [{"dataset": "d", "run": "r", "seed": s, "train_time_s": 10.0, "recall@1": v, "recall@2": v,
             "recall@4": v, "recall@8": v, "mean_average_precision_at_r": v, "r_precision": v, "NMI": v}
            for s, v in enumerate([0.5, 0.6, 0.7])]
    table = results.summary(pd.DataFrame(rows))
    assert table.loc[0, "R@1"] == "60.00 ± 10.00"
    assert "| d | r | 3 | 60.00 ± 10.00" in results.markdown_table(table)


def test_every_run_points_at_a_shipped_config(results, repo_root):
    for run in results.RUNS:
        for dataset in results.DATASETS.values():
            load_config(repo_root / run.config, [*run.overrides, *dataset])


def test_results_writer_on_a_small_run(results, tmp_path, monkeypatch, repo_root):
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    monkeypatch.chdir(repo_root)
    runs = [results.Run("baseline", "configs/baseline/glyphs.yaml"),
            results.Run("baseline T=0.1", "configs/baseline/glyphs.yaml", ("baseline.temperature=0.1",), "baseline")]
    extra = ["data.name=digits", "data.image_size=16", "model.width=4", "model.embedding_dim=8",
             "train.classes_per_batch=4", "train.epochs=2", "train.max_steps_per_epoch=3"]
    frame = results.run_all(runs, ["glyphs"], [0, 1], tmp_path / "runs", jobs=2, extra=extra)
    assert len(frame) == 4 and set(frame.run) == {"baseline", "baseline T=0.1"}
    assert set(frame.seed) == {0, 1} and frame["recall@1"].between(0, 1).all()
    assert results.collect(runs, ["glyphs"], [0, 1], tmp_path / "runs").shape[0] == 4
    report = results.write_report(frame, tmp_path / "docs" / "results.md", runs=runs, extra=extra, commit="abc123")
    text = report.read_text()
    assert "| baseline | 2 |" in text and "| baseline T=0.1 | 2 |" in text and "abc123" in text
    assert "python train.py --config configs/baseline/glyphs.yaml baseline.temperature=0.1" in text
    _is_png(tmp_path / "docs" / "img" / "recall_glyphs.png")
    _is_png(tmp_path / "docs" / "img" / "training_glyphs.png")
