import json

import pandas as pd
import pytest
import torch

from pygml.app.checkpoint import CheckpointError, load_checkpoint
from pygml.app.cli import eval_main, train_main
from pygml.app.config import load_config
from pygml.app.engine import NonFiniteLossError, train
from pygml.app.optim import StepSchedule, build_optimizer, build_scheduler
from pygml.methods.baseline import Baseline

pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn (a dev dependency)")

TINY = ["data.name=digits", "data.image_size=16", "model.width=8", "model.embedding_dim=16",
        "train.classes_per_batch=4", "train.samples_per_class=4", "train.max_steps_per_epoch=5",
        "train.progress=false", "eval.recall_at=[1,2]", "eval.nmi=false"]


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", *extra])


def test_schedule_cumulative_and_reset():
    cum = StepSchedule([3, 5], 0.1, True)
    assert [round(cum(e), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    once = StepSchedule([31, 51], 0.1, False)
    assert once(29) == 1 and once(30) == pytest.approx(0.1) and once(60) == pytest.approx(0.1)


def test_param_groups_keep_their_names_and_lr():
    cfg = load_config(None, ["optim.lr=0.5"])
    groups = [{"name": "a", "params": [torch.nn.Parameter(torch.ones(1))]},
              {"name": "b", "params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.01},
              {"name": "empty", "params": []}]
    opt = build_optimizer(cfg.optim, groups)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("a", 0.5), ("b", 0.01)]
    sched = build_scheduler(opt, load_config(None, ["optim.milestones=[1]"]).optim)
    assert sched.get_last_lr() == pytest.approx([0.05, 0.001])


def test_train_writes_log_checkpoint_and_metrics(tmp_path):
    result = train(tiny(tmp_path, "train.epochs=2"))
    assert result["finished"] and result["epochs_done"] == 2 and result["global_step"] == 10
    assert set(result["test"]) >= {"recall@1", "recall@2", "precision_at_1", "mean_average_precision_at_r"}
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"loss", "lr_backbone", "lr_classifier", "test_recall@1", "train_time_s"} <= set(log.columns)
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == result["test"]
    assert (tmp_path / "config.yaml").exists() and json.loads((tmp_path / "env.json").read_text())["torch"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", method="baseline")
    assert ckpt["run"]["epoch"] == 2


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, stop):
    full = tmp_path / "full"
    train(tiny(full, "train.epochs=2"))
    part = tmp_path / "part"
    first = train(tiny(part, "train.epochs=2", f"train.stop_after_steps={stop}"))
    assert not first["finished"] and first["global_step"] == stop
    second = train(tiny(part, "train.epochs=2"), resume=True)
    assert second["finished"] and second["global_step"] == 10
    a = load_checkpoint(full / "checkpoint.pt")["model"]
    b = load_checkpoint(part / "checkpoint.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert second["test"] == pytest.approx(json.loads((full / "metrics.json").read_text())["test"])
    la, lb = pd.read_csv(full / "log.csv"), pd.read_csv(part / "log.csv")
    assert la["loss"].tolist() == pytest.approx(lb["loss"].tolist())


def test_resume_refuses_another_method(tmp_path):
    train(tiny(tmp_path, "train.epochs=1", "train.stop_after_steps=2"))
    with pytest.raises(CheckpointError, match="written by method 'baseline'"):
        train(tiny(tmp_path, "method=proxygml"), resume=True)


def _nan_at(step):
    calls = {"n": 0}
    original = Baseline.forward

    def forward(self, images, labels):
        loss, logs = original(self, images, labels)
        calls["n"] += 1
        if calls["n"] == step:
            loss = loss * float("nan")
        return loss, logs

    return forward


def test_nonfinite_loss_stops_with_the_step_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Baseline, "forward", _nan_at(3))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 .*loss=nan"):
        train(tiny(tmp_path, "train.epochs=1"))


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(Baseline, "forward", _nan_at(3))
    result = train(tiny(tmp_path, "train.epochs=1", "train.nonfinite=skip"))
    assert result["finished"]
    assert pd.read_csv(tmp_path / "log.csv")["skipped_steps"].tolist() == [1]


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*TINY, "train.epochs=1", f"train.out_dir={out}"]) == 0
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed
    stored = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())["test"]
    trained = json.loads((out / "metrics.json").read_text())["test"]
    assert stored == pytest.approx(trained, abs=1e-6)
    assert pd.read_csv(tmp_path / "ev" / "eval_metrics.csv").shape[0] == 1


def test_cli_errors_are_clear(tmp_path, capsys):
    assert train_main(["train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert train_main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    assert eval_main(["--checkpoint", str(tmp_path / "foreign.pt")]) == 2
    assert "not a pygml checkpoint" in capsys.readouterr().err
    assert train_main([*TINY, f"train.out_dir={tmp_path / 'nothing'}", "--resume"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_eval_plots_and_intra_batch_refinement(tmp_path, capsys):
    out = tmp_path / "ib"
    assert train_main([*TINY, "method=intra_batch", "intra_batch.heads=2", "train.epochs=1",
                       f"train.out_dir={out}"]) == 0
    plots = tmp_path / "plots"
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--plots", str(plots)]) == 0
    for name in ("recall_at_k.png", "retrieval_grid.png", "batch_graph.png"):
        assert (plots / name).stat().st_size > 1000, name
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--refine", "3", "--out", str(tmp_path / "r")]) == 0
    refined = json.loads((tmp_path / "r" / "eval_metrics.json").read_text())["test"]
    assert 0.0 <= refined["recall@1"] <= 1.0 and "mean_average_precision_at_r" in refined


def test_refine_is_refused_for_other_methods(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(out, "train.epochs=1", "train.max_steps_per_epoch=1"))
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--refine", "3"]) == 2
    assert "intra_batch method only" in capsys.readouterr().err


def test_evaluation_schedule_does_not_change_training(tmp_path):
    every = train(tiny(tmp_path / "every", "train.epochs=2", "train.eval_every=1"))
    last = train(tiny(tmp_path / "last", "train.epochs=2", "train.eval_every=2"))
    assert every["test"] == pytest.approx(last["test"])
    a = load_checkpoint(tmp_path / "every" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "last" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_backbone_trains_as_the_eager_one(tmp_path):
    """train.compile: same weights as eager (to float tolerance), same state-dict keys, and a checkpoint
    that loads into an eager model."""
    pytest.importorskip("torch._inductor")
    eager = train(tiny(tmp_path / "eager", "train.epochs=1", "train.max_steps_per_epoch=2"))
    compiled = train(tiny(tmp_path / "compiled", "train.epochs=1", "train.max_steps_per_epoch=2",
                          "train.compile=true"))
    a = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4, rtol=1e-3), key
    assert compiled["test"]["recall@1"] == pytest.approx(eager["test"]["recall@1"], abs=0.02)
