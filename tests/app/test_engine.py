"""pygml.app.engine: a run writes its log, checkpoint and metrics; resuming gives the weights of an
uninterrupted run; a non-finite loss is stopped or skipped; the loop's parts drive a run by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pygml.app.checkpoint import CheckpointError, load_checkpoint
from pygml.app.engine import (NonFiniteLossError, RunState, end_of_epoch, evaluate_epoch, finish, setup, train,
                              train_one_epoch)
from pygml.methods import Baseline


def test_train_writes_log_checkpoint_and_metrics(tmp_path, tiny_config, capsys):
    result = train(tiny_config("train.epochs=2"))
    assert result["finished"] and result["epochs_done"] == 2 and result["global_step"] == 10
    assert set(result["test"]) >= {"recall@1", "recall@2", "precision_at_1", "mean_average_precision_at_r"}
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["epoch"]) == [1, 2] and list(log["step"]) == [5, 10]
    assert {"loss", "loss_backbone", "lr_backbone", "lr_head", "lr_loss", "test_recall@1", "train_time_s"} <= \
        set(log.columns)
    assert (log["lr_backbone"] == 1e-3).all()
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == result["test"]
    assert (tmp_path / "config.yaml").exists() and json.loads((tmp_path / "env.json").read_text())["torch"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", method="baseline")
    assert ckpt["run"]["epoch"] == 2 and ckpt["num_classes"] == 5
    assert capsys.readouterr().out == "", "train() prints nothing: pygml-train prints the table"


def test_a_run_without_out_dir_gets_a_directory_of_its_own(tmp_path, tiny_overrides, monkeypatch):
    from pygml.app.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1", "train.max_steps_per_epoch=1"])
    assert cfg.train.out_dir is None
    result = train(cfg)
    out = Path(result["out_dir"])
    assert out.parent == Path("runs") and out.name.startswith("baseline-digits-")
    assert len(out.name) == len("baseline-digits-YYYYmmdd-HHMMSS")
    assert (tmp_path / out / "checkpoint.pt").exists() and (tmp_path / out / "metrics.json").exists()
    assert cfg.train.out_dir == str(out)


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_config, stop):
    full = tmp_path / "full"
    train(tiny_config("train.epochs=2", out_dir=full))
    part = tmp_path / "part"
    first = train(tiny_config("train.epochs=2", f"train.stop_after_steps={stop}", out_dir=part))
    assert not first["finished"] and first["global_step"] == stop
    second = train(tiny_config("train.epochs=2", out_dir=part), resume=True)
    assert second["finished"] and second["global_step"] == 10
    a = load_checkpoint(full / "checkpoint.pt")["model"]
    b = load_checkpoint(part / "checkpoint.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert second["test"] == pytest.approx(json.loads((full / "metrics.json").read_text())["test"])
    la, lb = pd.read_csv(full / "log.csv"), pd.read_csv(part / "log.csv")
    assert la["loss"].tolist() == pytest.approx(lb["loss"].tolist())


def test_resume_refuses_another_method(tiny_config):
    train(tiny_config("train.epochs=1", "train.stop_after_steps=2"))
    with pytest.raises(CheckpointError, match="written by method 'baseline'"):
        train(tiny_config("method=proxygml"), resume=True)


def test_nonfinite_loss_stops_with_the_step_named(tiny_config, step_fault):
    step_fault(3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 .*loss=nan"):
        train(tiny_config("train.epochs=1"))


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path, tiny_config, step_fault):
    step_fault(3)
    result = train(tiny_config("train.epochs=1", "train.nonfinite=skip"))
    assert result["finished"]
    assert pd.read_csv(tmp_path / "log.csv")["skipped_steps"].tolist() == [1]


def test_evaluation_schedule_does_not_change_training(tmp_path, tiny_config):
    every = train(tiny_config("train.epochs=2", "train.eval_every=1", out_dir=tmp_path / "every"))
    last = train(tiny_config("train.epochs=2", "train.eval_every=2", out_dir=tmp_path / "last"))
    assert every["test"] == pytest.approx(last["test"])
    a = load_checkpoint(tmp_path / "every" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "last" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "test_recall@1" in pd.read_csv(tmp_path / "every" / "log.csv").columns
    assert pd.read_csv(tmp_path / "last" / "log.csv")["test_recall@1"].isna().tolist() == [True, False]


def test_the_loop_s_parts_drive_a_run_as_train_does(tmp_path, tiny_config):
    """setup, train_one_epoch, evaluate_epoch, end_of_epoch and finish, called by hand, give train()'s run."""
    reference = train(tiny_config("train.epochs=2", "data.val_fraction=0.4", "train.classes_per_batch=3",
                                  out_dir=tmp_path / "train"))
    cfg = tiny_config("train.epochs=2", "data.val_fraction=0.4", "train.classes_per_batch=3", out_dir=tmp_path / "hand")
    run = setup(cfg)
    run.out.mkdir(parents=True)
    assert run.num_classes == 3 and run.splits.val.num_classes == 2 and run.steps_per_epoch == 5
    assert [g["name"] for g in run.optimizer.param_groups] == ["backbone", "head", "loss"]
    state = RunState()
    while state.epoch < cfg.train.epochs:
        assert train_one_epoch(run, state)
        metrics = evaluate_epoch(run, state.epoch)
        assert set(metrics) == {"val", "test"}
        end_of_epoch(run, state, metrics)
    result = finish(run, state)
    assert result["finished"] and result["global_step"] == reference["global_step"] == 10
    assert result["test"] == pytest.approx(reference["test"]) and result["val"] == pytest.approx(reference["val"])
    a = load_checkpoint(tmp_path / "train" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "hand" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, steps", [
    (("train.sampler=class_pass",), [2, 4]),  # 5 training classes, 4 a batch: one pass is 2 batches
    (("train.sampler=intra_batch", "train.redraw_pk=true"), None),  # an epoch's length changes with its P×K
])
def test_a_run_trains_each_epoch_of_its_sampler(tiny_config, tmp_path, overrides, steps):
    cfg = tiny_config("train.epochs=3", "train.max_steps_per_epoch=0", "train.eval_every=3", *overrides)
    run = setup(cfg)
    expected = []
    for epoch in range(3):
        run.sampler.set_epoch(epoch)
        expected.append(run.sampler.num_batches)
    result = train(cfg)
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["step"]) == list(np.cumsum(expected)) and result["global_step"] == sum(expected)
    if steps is not None:
        assert list(log["step"])[:2] == steps
