"""pygml.app.pml: pytorch-metric-learning's losses and miners by name behind ``loss(embeddings, labels)``."""

import sys

import pytest
import torch

from pygml.app.builders import build_loss, build_method
from pygml.app.config import ConfigError, load_config
from pygml.app.engine import train
from pygml.app.pml import PMLLoss, pml_loss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")


def _batch(seed=0, noise=0.5):
    """16 rows of 4 classes around class centres: close enough that a miner keeps some pairs and drops others."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=g)
    y = torch.arange(16) % 4
    return centres[y] + noise * torch.randn(16, 8, generator=g), y


def test_a_loss_and_its_miner_by_name_compute_pml_s_value():
    cfg = load_config(None, ["loss.name=pml:MultiSimilarityLoss", "loss.options={alpha: 3, beta: 40}",
                             "miner.name=pml:MultiSimilarityMiner", "miner.options.epsilon=0.2"])
    loss = build_loss(cfg.loss, cfg.miner, 4, 8)
    assert isinstance(loss, PMLLoss)
    assert isinstance(loss.loss, pml_losses.MultiSimilarityLoss) and (loss.loss.alpha, loss.loss.beta) == (3, 40)
    assert isinstance(loss.miner, pml_miners.MultiSimilarityMiner) and loss.miner.epsilon == 0.2
    x, y = _batch()
    reference_miner = pml_miners.MultiSimilarityMiner(epsilon=0.2)
    assert 0 < len(reference_miner(x, y)[0]) < 48  # some of the 48 positive pairs are mined, not all
    expected = pml_losses.MultiSimilarityLoss(alpha=3, beta=40)(x, y, reference_miner(x, y))
    torch.testing.assert_close(loss(x, y), expected)
    unmined = pml_losses.MultiSimilarityLoss(alpha=3, beta=40)(x, y)
    assert loss(x, y).item() != pytest.approx(unmined.item()), "the miner changes which pairs count"
    no_miner = pml_loss("pml:MultiSimilarityLoss", 4, 8, {"alpha": 3, "beta": 40})
    assert no_miner.miner is None
    torch.testing.assert_close(no_miner(x, y), unmined)


def test_a_loss_with_parameters_gets_the_sizes_and_trains_them():
    method = build_method(load_config(None, ["model.width=4", "model.embedding_dim=8", "loss.name=pml:ProxyAnchorLoss",
                                             "loss.lr=0.05"]), num_classes=4)
    assert isinstance(method.loss, PMLLoss) and isinstance(method.loss.loss, pml_losses.ProxyAnchorLoss)
    assert method.loss.loss.proxies.shape == (4, 8)  # num_classes and embedding_size filled in
    groups = {g["name"]: g for g in method.param_groups()}
    assert groups["loss"]["lr"] == 0.05 and groups["loss"]["params"] == [method.loss.loss.proxies]
    loss, logs = method(torch.rand(8, 3, 32, 32), torch.arange(8) % 4)
    loss.backward()
    assert torch.isfinite(loss) and method.loss.loss.proxies.grad.abs().sum() > 0
    assert "loss.loss.proxies" in method.state_dict()
    chosen = pml_loss("pml:ProxyAnchorLoss", 4, 8, {"num_classes": 6, "embedding_size": 8})
    assert chosen.loss.proxies.shape == (6, 8), "options the config sets are kept"


@pytest.mark.parametrize("overrides, key", [
    (["loss.name=pml:NoSuchLoss"], "loss.name"),
    (["loss.name=pml:ContrastiveLoss", "loss.options.no_such_option=1"], "loss.options"),
    (["loss.name=pml:ContrastiveLoss", "miner.name=pml:NoSuchMiner"], "miner.name"),
    (["loss.name=pml:ContrastiveLoss", "miner.name=pml:MultiSimilarityMiner", "miner.options.bogus=1"],
     "miner.options"),
])
def test_errors_name_the_key(overrides, key):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        build_loss(cfg.loss, cfg.miner, 4, 8)


def test_a_missing_class_lists_what_pml_has():
    with pytest.raises(ConfigError, match=r"'pml:NoSuchLoss': pytorch_metric_learning\.losses has no such class; .*"
                                          r"it has .*ContrastiveLoss"):
        pml_loss("pml:NoSuchLoss", 4, 8, {})


def test_a_run_trains_with_a_pml_loss(tiny_config):
    result = train(tiny_config("loss.name=pml:ContrastiveLoss", "miner.name=pml:PairMarginMiner", "train.epochs=1",
                               "train.max_steps_per_epoch=2"))
    assert result["finished"] and result["global_step"] == 2 and 0 <= result["test"]["recall@1"] <= 1


def test_a_misspelt_class_names_its_close_matches():
    with pytest.raises(ConfigError, match=r"'pml:MultiSimilarityLos'.*did you mean pml:MultiSimilarityLoss\?"):
        pml_loss("pml:MultiSimilarityLos", 4, 8, {})


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)
    with pytest.raises(ConfigError, match=r"pip install 'pygml\[pml\]'"):
        pml_loss("pml:ContrastiveLoss", 4, 8, {})


@pytest.mark.parametrize("method", ["intra_batch", "bgformer"])
def test_a_graph_on_a_pml_loss_is_one_config_line(tiny_config, method):
    overrides = [f"method={method}", "loss.name=pml:MultiSimilarityLoss", "miner.name=pml:MultiSimilarityMiner"]
    if method == "bgformer":
        overrides += ["bgformer.heads=2", "bgformer.k=4"]
    cfg = tiny_config(*overrides)
    method_ = build_method(cfg, num_classes=5)
    assert isinstance(method_.loss, PMLLoss) and method_.graph is not None
    loss, logs = method_(torch.rand(16, 3, 16, 16), torch.arange(16) % 4)
    loss.backward()
    assert "loss_graph" in logs and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method_.graph.parameters())
