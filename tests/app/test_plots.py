"""pygml.app.plots: every figure is a PNG a person can open; evaluation_plots draws a trained method's."""

import pandas as pd
import torch
from PIL import Image

from pygml.app.plots import (batch_graph_drawing, evaluation_plots, recall_curves, retrieval_grid,
                             training_curves)
from pygml.graph import batch_graph
from pygml.methods import Baseline
from pygml.models import SmallCNN


def _is_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_plot_files(tmp_path):
    metrics = {"a": {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.8}, "b": {"recall@1": 0.4, "recall@2": 0.7}}
    assert recall_curves(metrics, tmp_path / "r.png") == tmp_path / "r.png"
    _is_png(tmp_path / "r.png")
    log = pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "test_recall@1": [0.3, 0.5, 0.6]})
    _is_png(training_curves({"a": log}, tmp_path / "t.png"))
    log.to_csv(tmp_path / "log.csv", index=False)
    _is_png(training_curves({"a": tmp_path / "log.csv", "b": log}, tmp_path / "t2.png"))
    imgs = [torch.rand(3, 16, 16) for _ in range(3)]
    _is_png(retrieval_grid(imgs[:2], [0, 1], [imgs, imgs], [[0, 1, 0], [1, 1, 0]], tmp_path / "g.png"))
    g = batch_graph(torch.randn(12, 4), torch.arange(12) % 3, k=3)
    _is_png(batch_graph_drawing(g, tmp_path / "sub" / "b.png"))


def test_evaluation_plots_of_a_method(tmp_path, digits_splits):
    torch.manual_seed(0)
    method = Baseline(SmallCNN(width=4), num_classes=5, embedding_dim=8).train()
    metrics = {"test": {"recall@1": 0.5, "recall@2": 0.7}}
    paths = evaluation_plots(method, digits_splits, metrics, tmp_path / "plots", name="baseline", queries=4, top=5)
    assert [p.name for p in paths] == ["recall_at_k.png", "retrieval_grid.png", "batch_graph.png"]
    for path in paths:
        _is_png(path)
    assert method.training, "the method's mode is restored after embedding"
    without = evaluation_plots(method, digits_splits, metrics, tmp_path / "nograph", graph=False, queries=2)
    assert [p.name for p in without] == ["recall_at_k.png", "retrieval_grid.png"]
    assert not (tmp_path / "nograph" / "batch_graph.png").exists()
