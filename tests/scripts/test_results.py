"""scripts/results.py: the grid of base losses × graphs, its table (mean ± std, paired differences), and the
report of a small run (tuning on the validation split, then seeds on the test classes)."""

import json
import re
from pathlib import Path

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
    # one trial each: both cells keep their starting values, so the graph's control is the off cell itself
    controls = results.run_controls(cells, [0, 1], tmp_path / "runs", jobs=2)
    off = frame[frame.graph == "off"].sort_values("seed")
    assert list(controls.graph) == ["+ Intra-Batch MPN"] * 2 and list(controls["recall@1"]) == list(off["recall@1"])
    assert results.collect_controls(cells, [0, 1], tmp_path / "runs").equals(controls)
    with pytest.raises(RuntimeError, match="made with other extra"):  # another budget is never reported as this one
        results.collect(cells, [0, 1], tmp_path / "runs", [*extra, "train.epochs=2"], val_fraction=0.4)
    report = results.write_report(frame, tmp_path / "docs" / "results.md", cells=cells, seeds=[0, 1], trials=1,
                                  extra=extra, out_root=tmp_path / "runs", wall_s=60.0)
    text = report.read_text()
    assert "| normalized softmax | off | 2 |" in text and "| normalized softmax | + Intra-Batch MPN | 2 |" in text
    commits = {json.loads((Path(d) / "env.json").read_text())["commit"] for d in frame.out_dir}
    assert results.run_commits(frame) == sorted(c[:7] for c in commits if c)  # each run's own commit, not HEAD's
    assert "1 minutes" in text and "python tune.py --config configs/baseline/glyphs.yaml" in text
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


def _study(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"number": i, "state": "COMPLETE", "time_s": 1.0, **r} for i, r in enumerate(rows)]).to_csv(
        path / "trials.csv", index=False)


def test_a_graph_cell_s_control_is_the_off_config_at_the_graph_cell_s_values(results, tmp_path, monkeypatch):
    off, bgf = (next(c for c in results.CELLS if c.loss == "normalized softmax" and c.graph == g)
                for g in ("off", "+ BGFormer blocks"))
    _study(tmp_path / off.slug / "tune", [
        {"mean_average_precision_at_r": 0.8, "optim.lr": 1e-3, "loss.options.temperature": 0.05},
        {"mean_average_precision_at_r": 0.7, "optim.lr": 3.4010955847133196e-4, "loss.options.temperature": 0.2}])
    _study(tmp_path / bgf.slug / "tune", [
        {"mean_average_precision_at_r": 0.6, "optim.lr": 1e-3, "loss.options.temperature": 0.05, "bgformer.alpha": 0.5},
        {"mean_average_precision_at_r": 0.9, "optim.lr": 3.4010955847133196e-4, "loss.options.temperature": 0.0508,
         "bgformer.alpha": 0.81}])
    overrides = results.control_overrides(bgf, off, tmp_path)
    assert overrides == ["optim.lr=0.00034010955847133196", "loss.options.temperature=0.0508"]  # exact, shared keys only
    calls = []

    def fake_call(args, threads, log):  # a "run" that scores 0.5 + 0.01·seed and records its command
        calls.append(args)
        run_dir = Path(next(a for a in args if a.startswith("train.out_dir=")).split("=", 1)[1])
        seed = int(next(a for a in args if a.startswith("train.seed=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"train_time_s": 1.0, "test": {
            "recall@1": 0.5 + 0.01 * seed, "mean_average_precision_at_r": 0.5 + 0.01 * seed}}))

    monkeypatch.setattr(results, "_call", fake_call)
    rows = pd.DataFrame([results._control(bgf, off, tmp_path, s, threads=1) for s in (0, 1, 2)])
    assert calls[0][:3] == ["train.py", "--config", str(tmp_path / off.slug / "tune" / "best.yaml")]
    assert calls[0][-2:] == overrides and all(c[-2:] == overrides for c in calls)
    assert set(rows.graph) == {"+ BGFormer blocks"} and (rows.out_dir.str.contains("control")).all()
    results._control(bgf, off, tmp_path, 0, threads=1)
    assert len(calls) == 3, "a finished control run is reused"
    frame = pd.DataFrame(_rows("normalized softmax", "+ BGFormer blocks", [0.52, 0.535, 0.54]))
    table = results.control_table(frame, rows, [off, bgf], tmp_path)
    assert table.loc[0, "values"] == "optim.lr=0.0003401, loss.options.temperature=0.0508"
    assert table.loc[0, "off MAP@R"] == "51.00 ± 1.00" and table.loc[0, "ΔMAP@R (p)"].startswith("+2.17 (")
    # another best value later (a longer study) makes the old control runs stale: an error, not a silent reuse
    _study(tmp_path / bgf.slug / "tune", [
        {"mean_average_precision_at_r": 0.9, "optim.lr": 2e-3, "loss.options.temperature": 0.1, "bgformer.alpha": 0.3}])
    with pytest.raises(RuntimeError, match="control was trained with"):
        results._control(bgf, off, tmp_path, 0, threads=1)
