"""pygml.app.checkpoint: atomic writes, weights-only reads, foreign and truncated files, state that does not
fit the model, and the random generators a resumed run needs."""

import random

import numpy as np
import pytest
import torch

from pygml.app.checkpoint import (CheckpointError, load_checkpoint, load_model_state, rng_state, save_checkpoint,
                                  set_rng_state)


def test_round_trip_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"method": "baseline", "model": {"w": torch.ones(2)}, "run": {"epoch": 3}}, path)
    state = load_checkpoint(path, method="baseline")
    assert state["run"]["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp"))


def test_foreign_truncated_and_other_method(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"method": "baseline", "model": {"w": torch.randn(1000)}}, path)
    with pytest.raises(CheckpointError, match="written by method 'baseline', not 'proxygml'"):
        load_checkpoint(path, method="proxygml")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a pygml checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"method": "baseline", "v": 1}, path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"method": "baseline", "v": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["v"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_model_state_mismatch_names_keys(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"checkpoint x\.pt does not fit Linear: 0 missing keys .* 1 of another "
                                              r"shape \(e\.g\. \[\"weight: \(4, 3\) vs the model's \(2, 3\)\"\]\)"):
        load_model_state(model, {"weight": torch.zeros(4, 3), "bias": torch.zeros(2)}, "x.pt")
    with pytest.raises(CheckpointError,
                       match=r"checkpoint x\.pt does not fit Linear: 1 missing keys \(e\.g\. \['bias'\]\)"):
        load_model_state(model, {"weight": torch.zeros(2, 3)}, "x.pt")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(e\.g\. \['extra'\]\)"):
        load_model_state(model, {**model.state_dict(), "extra": torch.zeros(1)}, "x.pt")
    bn = torch.nn.BatchNorm1d(2)
    state = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    with pytest.raises(CheckpointError, match=r"\['num_batches_tracked'\]"):  # a checkpoint holds every key
        load_model_state(bn, state, "x.pt")
    weight = torch.randn(2, 3)
    load_model_state(model, {"weight": weight, "bias": torch.ones(2)}, "x.pt")
    assert torch.equal(model.weight, weight) and torch.equal(model.bias, torch.ones(2))


def test_rng_state_restores_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = rng_state()
    path = tmp_path / "r.pt"
    save_checkpoint({"rng": saved}, path)
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(path)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
