"""pygml.checks: the checks that read tensor values are off by default and on with ``set_value_checks``,
``value_checks()`` or ``PYGML_VALUE_CHECKS=1``; shape checks run either way."""

import math
import os
import subprocess
import sys

import pytest
import torch

from pygml import checks
from pygml.checks import set_value_checks, value_checks, value_checks_enabled
from pygml.graph import batch_graph
from pygml.losses import ClassifierCELoss, ContrastiveCELoss, NormalizedSoftmaxLoss, ProxyGMLLoss


@pytest.fixture(autouse=True)
def checks_as_found():
    before = value_checks_enabled()
    yield
    set_value_checks(before)


def _nan_batch():
    x = torch.randn(6, 4)
    x[2, 1] = math.nan
    return x, torch.tensor([0, 0, 1, 1, 2, 2])


def test_off_by_default_in_a_fresh_process(repo_root):
    env = {k: v for k, v in os.environ.items() if k != "PYGML_VALUE_CHECKS"}
    code = "import pygml.checks as c; print(c.value_checks_enabled())"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False"]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env={**env, "PYGML_VALUE_CHECKS": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True"]


def test_set_and_context_manager_switch_and_restore():
    set_value_checks(False)
    assert not value_checks_enabled()
    with value_checks():
        assert value_checks_enabled()
        with value_checks(False):
            assert not value_checks_enabled()
        assert value_checks_enabled()
    assert not value_checks_enabled()
    set_value_checks(True)
    assert value_checks_enabled() and checks.value_checks_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with value_checks(False):
            raise RuntimeError("inside")
    assert value_checks_enabled(), "the switch is restored when the block raises"


@pytest.mark.parametrize("make", [
    lambda: NormalizedSoftmaxLoss(3, 4),
    lambda: ClassifierCELoss(3, 4),
    lambda: ContrastiveCELoss(),
    lambda: ProxyGMLLoss(3, 4, proxies_per_class=2, r=0.5),
], ids=["normalized_softmax", "classifier_ce", "contrastive_ce", "proxygml"])
def test_a_nan_embedding_is_caught_by_a_loss_only_with_checks_on(make):
    loss = make()
    x, y = _nan_batch()
    set_value_checks(False)
    assert torch.isnan(loss(x, y)), "off: no value is read, the NaN flows into the loss"
    with value_checks(), pytest.raises(ValueError, match="NaN or inf"):
        loss(x, y)


def test_a_label_out_of_range_is_caught_only_with_checks_on():
    loss = ClassifierCELoss(3, 4)
    x = torch.randn(4, 4)
    y = torch.tensor([0, 1, 2, 3])
    with value_checks(), pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got range \[0, 3\]"):
        loss(x, y)
    set_value_checks(False)
    with pytest.raises(IndexError, match="out of bounds"):  # off: torch's own error, further down
        loss(x, y)


def test_a_nan_embedding_is_caught_by_batch_graph_only_with_checks_on():
    x, y = _nan_batch()
    set_value_checks(False)
    g = batch_graph(x, y, k=2)
    assert g.num_nodes == 6 and torch.isnan(g.x).any()
    with value_checks(), pytest.raises(ValueError, match="x contains NaN or inf"):
        batch_graph(x, y, k=2)


def test_shape_checks_run_with_checks_off():
    set_value_checks(False)
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        NormalizedSoftmaxLoss(3, 4)(torch.randn(6, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        batch_graph(torch.randn(4), torch.zeros(4, dtype=torch.long))
