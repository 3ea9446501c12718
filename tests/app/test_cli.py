"""pygml-train and pygml-eval (pygml.app.cli): train then evaluate, the table on stdout, user errors as one
line, plots, the Intra-Batch refinement, and user modules imported with --import."""

import json
import re
import textwrap

import pandas as pd
import pytest
import torch

from pygml.app.cli import eval_main, train_main
from pygml.app.engine import train

USER_MODULE = '''
from dataclasses import dataclass

from pygml.app import register_method
from pygml.losses import ContrastiveCELoss
from pygml.methods import MetricLearner


@dataclass
class MineConfig:
    temperature: float = 0.5


@register_method("mine", options=MineConfig)
class Mine(MetricLearner):
    def __init__(self, backbone, num_classes, embedding_dim=128, temperature=0.5, *, head_init="kaiming"):
        super().__init__(backbone, ContrastiveCELoss(temperature), embedding_dim, head_init=head_init)
'''


def test_cli_train_then_eval(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", f"train.out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "baseline on digits, last epoch (1), test split:" in printed
    trained = json.loads((out / "metrics.json").read_text())["test"]
    assert re.search(rf"^recall@1 +{100 * trained['recall@1']:.2f}$", printed, re.M), printed
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed and f"baseline checkpoint {out / 'checkpoint.pt'}, test split of digits" in printed
    stored = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())["test"]
    assert stored == pytest.approx(trained, abs=1e-6)
    frame = pd.read_csv(tmp_path / "ev" / "eval_metrics.csv")
    assert frame.shape[0] == 1 and frame["recall@1"].iloc[0] == pytest.approx(trained["recall@1"], abs=1e-6)


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    assert train_main(["--print-config", "method=proxygml", "proxygml.r=0.2", f"train.out_dir={tmp_path / 'x'}"]) == 0
    printed = capsys.readouterr().out
    assert "method: proxygml" in printed and "r: 0.2" in printed
    assert not (tmp_path / "x").exists()


def test_cli_errors_are_clear(tmp_path, tiny_overrides, capsys):
    assert train_main(["train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert train_main(["train.epochs=0"]) == 2
    assert "config key 'train.epochs' is 0" in capsys.readouterr().err
    assert train_main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    assert eval_main(["--checkpoint", str(tmp_path / "foreign.pt")]) == 2
    assert "not a pygml checkpoint" in capsys.readouterr().err
    assert train_main([*tiny_overrides, f"train.out_dir={tmp_path / 'nothing'}", "--resume"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert train_main(["--import", "no_such_module_of_pygml", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --import no_such_module_of_pygml:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind, code, says", [
    ("nan", 1, r"^error: .*step 3 .*loss=nan.*train\.nonfinite=skip.*"),
    ("interrupt", 130, r"^interrupted at step 2; "),
])
def test_a_stopped_run_says_in_one_line_where_its_checkpoint_is(tmp_path, tiny_overrides, step_fault, capsys,
                                                               kind, code, says):
    step_fault(3, kind)
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.checkpoint_every_steps=2", f"train.out_dir={out}"]) == code
    err = capsys.readouterr().err.strip().splitlines()  # the run's log lines, then the failure in one line
    assert not any("Traceback" in line for line in err) and re.search(says, err[-1]), err
    assert f"the last checkpoint is {out / 'checkpoint.pt'} (step 2); the same command with --resume auto" in err[-1]


def test_eval_plots_and_intra_batch_refinement(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "ib"
    assert train_main([*tiny_overrides, "method=intra_batch", "intra_batch.heads=2", "train.epochs=1",
                       f"train.out_dir={out}"]) == 0
    plots = tmp_path / "plots"
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--plots", str(plots)]) == 0
    for name in ("recall_at_k.png", "retrieval_grid.png", "batch_graph.png"):
        assert (plots / name).stat().st_size > 1000, name
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--refine", "3", "--out", str(tmp_path / "r")]) == 0
    refined = json.loads((tmp_path / "r" / "eval_metrics.json").read_text())["test"]
    assert 0.0 <= refined["recall@1"] <= 1.0 and "mean_average_precision_at_r" in refined
    plain = json.loads((out / "metrics.json").read_text())["test"]
    assert refined["mean_average_precision_at_r"] != pytest.approx(plain["mean_average_precision_at_r"], abs=1e-9)


def test_refine_is_refused_for_other_methods(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    train(tiny_config("train.epochs=1", "train.max_steps_per_epoch=1", out_dir=out))
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "--refine", "3"]) == 2
    assert "intra_batch method only" in capsys.readouterr().err


def test_import_a_user_module_that_registers_a_method(tmp_path, tiny_overrides, restore_registries, capsys):
    module = tmp_path / "my_methods.py"
    module.write_text(textwrap.dedent(USER_MODULE))
    out = tmp_path / "mine"
    assert train_main(["--import", str(module), *tiny_overrides, "method=mine", "mine.temperature=0.3",
                       "model.head_init=orthogonal", "train.epochs=1", f"train.out_dir={out}"]) == 0
    assert "mine on digits, last epoch (1), test split:" in capsys.readouterr().out
    assert "mine:\n  temperature: 0.3" in (out / "config.yaml").read_text()
    log = pd.read_csv(out / "log.csv")
    assert {"loss", "loss_backbone", "lr_backbone", "lr_head"} <= set(log.columns) and "lr_loss" not in log.columns
    assert log["loss"].notna().all() and json.loads((out / "metrics.json").read_text())["test"]["recall@1"] > 0
    # the stored config names the method: evaluating needs the module too, and says so
    assert eval_main(["--import", str(module), "--checkpoint", str(out / "checkpoint.pt"),
                      "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "eval_metrics.json").exists()


def test_import_by_module_name(tmp_path, tiny_overrides, restore_registries, monkeypatch, capsys):
    (tmp_path / "my_methods_by_name.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert train_main(["--import", "my_methods_by_name", "--print-config", "method=mine"]) == 0
    assert "mine:\n  temperature: 0.5" in capsys.readouterr().out


def test_without_the_import_the_method_is_unknown(tiny_overrides, capsys):
    assert train_main([*tiny_overrides, "method=mine"]) == 2
    err = capsys.readouterr().err
    assert "config key 'method' is 'mine'" in err and "--import" in err
