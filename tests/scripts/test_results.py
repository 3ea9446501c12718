"""scripts/results.py: the grid of base losses × graphs, its table (mean ± std, paired differences), and the
report of a small run (tuning on the validation split, then seeds on the test classes)."""

import re

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


def _rows(loss, graph, values):
    return [{"loss": loss, "graph": graph, "seed": s, "train_time_s": 10.0, "recall@1": v, "recall@2": v,
             "recall@4": v, "recall@8": v, "mean_average_precision_at_r": v, "r_precision": v, "NMI": v}
            for s, v in enumerate(values)]


def test_summary_is_mean_and_std_over_seeds_with_the_paired_difference(results):
    frame = pd.DataFrame(_rows("l", "off", [0.5, 0.6, 0.7]) + _rows("l", "+ Intra-Batch MPN", [0.52, 0.63, 0.71]))
    table = results.summary(frame)
    assert table.loc[0, "R@1"] == "60.00 ± 10.00" and table.loc[0, "ΔR@1 (p)"] == "—"
    diff, p, n = results.paired(frame, "recall@1")[("l", "+ Intra-Batch MPN")]
    assert diff == pytest.approx(2.0) and n == 3
    from scipy.stats import ttest_rel

    assert p == pytest.approx(ttest_rel([0.52, 0.63, 0.71], [0.5, 0.6, 0.7]).pvalue)
    assert table.loc[1, "ΔR@1 (p)"] == f"+2.00 ({p:.3f})"
    assert "| l | off | 3 | 60.00 ± 10.00" in results.markdown_table(table)


def test_every_cell_builds_its_method_with_its_space(results, repo_root, tmp_path):
    from pygml.app.builders import build_method
    from pygml.app.tune import load_space

    assert len({(c.loss, c.graph) for c in results.CELLS}) == len(results.CELLS)
    for cell in results.CELLS:
        cfg = load_config(repo_root / cell.config, [*cell.overrides, "data.val_fraction=0.2"])
        method = build_method(cfg, num_classes=10)
        assert (method.graph is None) == (cell.graph == "off"), cell
        for key, value in cell.space.items():  # every tuned key exists and trial 0 starts inside its range
            (param,) = load_space([_space(tmp_path / "space.yaml", {key: value})], cfg)


def _space(path, space):
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space))
    return path


def test_results_on_a_small_run(results, tmp_path, monkeypatch, repo_root):
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    pytest.importorskip("optuna")
    cells = [c for c in results.CELLS if c.loss == "normalized softmax" and c.graph in ("off", "+ Intra-Batch MPN")]
    extra = ["data.name=digits", "data.image_size=16", "model.width=4", "model.embedding_dim=8",
             "train.classes_per_batch=3", "train.epochs=1", "train.max_steps_per_epoch=3", "eval.recall_at=[1,2]",
             "eval.nmi=false"]
    frame = results.run_all(cells, [0, 1], tmp_path / "runs", trials=1, jobs=2, extra=extra, val_fraction=0.4)
    assert len(frame) == 4 and set(frame.graph) == {"off", "+ Intra-Batch MPN"} and set(frame.seed) == {0, 1}
    assert frame["recall@1"].between(0, 1).all()
    for cell in cells:
        trials = pd.read_csv(tmp_path / "runs" / cell.slug / "tune" / "trials.csv")
        assert len(trials) == 1 and set(cell.space) <= set(trials.columns)
    assert results.collect(cells, [0, 1], tmp_path / "runs", extra, val_fraction=0.4).shape[0] == 4
    with pytest.raises(RuntimeError, match="made with other extra"):  # another budget is never reported as this one
        results.collect(cells, [0, 1], tmp_path / "runs", [*extra, "train.epochs=2"], val_fraction=0.4)
    report = results.write_report(frame, tmp_path / "docs" / "results.md", cells=cells, seeds=[0, 1], trials=1,
                                  extra=extra, out_root=tmp_path / "runs", commit="abc123", wall_s=60.0)
    text = report.read_text()
    assert "| normalized softmax | off | 2 |" in text and "| normalized softmax | + Intra-Batch MPN | 2 |" in text
    assert "abc123" in text and "1 minutes" in text and "python tune.py --config configs/baseline/glyphs.yaml" in text
    _is_png(tmp_path / "docs" / "img" / "graph_results.png")


def test_a_cell_is_reused_only_with_the_overrides_and_budget_it_was_made_with(results, tmp_path):
    cell, other = results.CELLS[0], results.CELLS[1]
    out = tmp_path / cell.slug
    results.check_record(cell, out, results.GLYPHS_BUDGET)
    assert (out / "cell.json").exists()
    results.check_record(cell, out, results.GLYPHS_BUDGET)  # the same cell again: reused
    with pytest.raises(RuntimeError, match=r"made with other extra: .*train.epochs=6.*delete the folder"):
        results.check_record(cell, out, ["train.epochs=8"])
    with pytest.raises(RuntimeError, match="made with other overrides"):
        results.check_record(other, out, results.GLYPHS_BUDGET)
    legacy = tmp_path / "legacy"
    (legacy / "tune").mkdir(parents=True)  # a study without a record: what it was made with is unknown
    with pytest.raises(RuntimeError, match="no cell.json"):
        results.check_record(cell, legacy, results.GLYPHS_BUDGET)


def test_glyphs_runs_get_the_documented_budget_unless_overridden(results, monkeypatch):
    seen = {}

    def fake_run_all(cells, seeds, out, *, trials, jobs, extra):
        seen["extra"] = list(extra)
        raise SystemExit(0)

    monkeypatch.setattr(results, "run_all", fake_run_all)
    with pytest.raises(SystemExit):
        results.main(["train.epochs=12", "--losses", "normalized softmax"])
    assert seen["extra"] == [*results.GLYPHS_BUDGET, "train.epochs=12"]  # later overrides win
    with pytest.raises(SystemExit):
        results.main(["--dataset", "cub", "data.root=/x", "--losses", "normalized softmax"])
    assert seen["extra"] == ["data.root=/x"]


@pytest.mark.parametrize("argv, match", [
    (["--losses", "normalized softmax", "model.backbone=mobilenet_v2"], r"no such loss 'model.backbone=mobilenet_v2' "
                                                                       r"\(overrides go before the options"),
    (["--graphs", "+ MPN"], r"no such graph '\+ MPN'; known: '\+ BGFormer blocks'"),
])
def test_a_name_that_is_no_cell_s_is_an_error_not_a_smaller_grid(results, argv, match, capsys):
    with pytest.raises(SystemExit):
        results.main(argv)
    assert re.search(match, capsys.readouterr().err)
