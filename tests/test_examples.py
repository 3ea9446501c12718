import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layers_in_an_ordinary_gnn_use_the_graph():
    example = load_example("reuse_layers")
    mlp = example.run("MLP (no graph)", epochs=100)["test_accuracy"]
    for layer in example.LAYERS[:-1]:
        acc = example.run(layer, epochs=100)["test_accuracy"]
        assert acc >= mlp + 0.3, f"{layer}: {acc:.2f} vs MLP {mlp:.2f}"


def test_inspect_batch_graph_reports_pyg_views():
    example = load_example("inspect_batch_graph")
    torch.manual_seed(0)
    centres = torch.randn(6, 16) * 3
    y = torch.arange(6).repeat_interleave(5)
    x = centres[y] + 0.1 * torch.randn(30, 16)
    report = example.inspect(x, y, k=4)
    assert report["visual (kNN) edges"] == 30 * 4
    assert report["label edges"] == 6 * 5 * 4
    assert report["label homophily of the kNN edges"] == pytest.approx(1.0)  # tight clusters: kNN stays in class
    assert report["connected components of the kNN graph"] == 6
    assert report["parameter-free SSA: attention mass on same-class neighbours"] == pytest.approx(1.0)


def test_a_method_trains_in_a_plain_loop_without_any_config():
    """examples/plain_training_loop.py: a method built in plain Python, trained by a hand-written loop,
    improves retrieval on unseen classes."""
    pytest.importorskip("sklearn", reason="the digits come with scikit-learn")
    result = load_example("plain_training_loop").main(epochs=4)
    assert result["after"]["MAP@R"] > result["before"]["MAP@R"] + 0.1
    assert result["after"]["R@1"] > result["before"]["R@1"] + 0.15
    source = (ROOT / "examples" / "plain_training_loop.py").read_text()
    assert "pygml.app" not in source and "config" not in source.split('"""')[2]
